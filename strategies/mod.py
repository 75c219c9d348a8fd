"""The client-side twin of ``CompressionStrategy``: a Flower mod that speaks the wire codecs.

It decodes whatever arrives into plain fp32 ``ArrayRecord``s, calls the handler, and encodes
the reply the way the message's header asks: the trained tensors or the update (trained minus
received), optionally adding last round's quantization residual first (error feedback, kept in
``context.state`` so it works the same in simulation and deployment). With a downlink delta it
adds the received change to the node's own copy of the global adapters (also in
``context.state``) first. Handlers therefore stay as
plain as Flower's quickstart and never see a codec. Messages without a header pass through.
``client_clipping_mod`` is central DP's client side (``strategies.privacy``).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies.codecs import CodecError, decode_blob, get_codec
from strategies.wire import (
    DELTA_BASE,
    ERROR_FEEDBACK,
    HEADER_KEY,
    REPLY,
    REPLY_CODEC,
    REPLY_MODES,
    blob_to_record,
    decode_content,
    make_header,
    numpy_to_record,
    read_header,
    record_to_numpy,
    state_digest,
)

RESIDUAL_KEY = "flora.residual"
HELD_KEY = "flora.held"  # this node's copy of the global adapters, for a downlink delta


def _single_arrays(content: RecordDict, what: str) -> tuple[str, ArrayRecord]:
    records = list(content.array_records.items())
    if len(records) != 1:
        raise CodecError(f"{what} must carry exactly one ArrayRecord, found {len(records)}")
    return records[0]


def _residual(context: Context, like: OrderedDict[str, np.ndarray]) -> OrderedDict | None:
    """Last round's residual when it fits the tensors of this round, else None."""
    record = context.state.get(RESIDUAL_KEY)
    if not isinstance(record, ArrayRecord):
        return None
    residual = record_to_numpy(record)
    if list(residual) != list(like) or any(residual[k].shape != like[k].shape for k in like):
        return None
    return residual


def _rebuilt(content: RecordDict, base: str, context: Context) -> None:
    """Add the received change to this node's copy (zeros when ``base`` is empty), in place
    of the change, and keep the result as the node's copy. The server named the copy it
    changed by digest; any other copy would silently train a wrong model, so it is refused."""
    key, record = _single_arrays(content, "the train message")
    change = record_to_numpy(record)
    held = context.state.get(HELD_KEY)
    if base:
        copy = record_to_numpy(held) if isinstance(held, ArrayRecord) else None
        if copy is None or list(copy) != list(change) or state_digest(copy) != base:
            raise CodecError(
                f"this node does not hold the copy (digest {base[:12]}) the server's downlink "
                "change applies to (restarted, or a message was lost); the server sends a full "
                "copy next time"
            )
    else:
        copy = OrderedDict((k, np.zeros_like(v)) for k, v in change.items())
    rebuilt = numpy_to_record(OrderedDict((k, copy[k] + change[k]) for k in change))
    content[key] = context.state[HELD_KEY] = rebuilt  # one record: its Arrays are immutable


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the payload, run the handler, encode its reply as the header asks.

    A malformed payload or an unknown codec raises ``CodecError``; Flower turns the exception
    into an error reply, so the server logs it against this node instead of aggregating junk.
    """
    header = read_header(msg.content) if msg.has_content() else None
    if header is None:
        return call_next(msg, context)
    entered = started = time.perf_counter()
    msg.content = decode_content(msg.content)
    base = header.get(DELTA_BASE)
    if isinstance(base, str):
        _rebuilt(msg.content, base, context)
    codec_seconds = time.perf_counter() - started
    reply = call_next(msg, context)
    reply_codec = header.get(REPLY_CODEC)
    if reply.has_error() or not isinstance(reply_codec, str):
        return reply

    started = time.perf_counter()
    codec = get_codec(reply_codec)
    mode = header.get(REPLY, "weights")
    if mode not in REPLY_MODES:
        raise CodecError(f"reply mode {mode!r}: expected one of {', '.join(REPLY_MODES)}")
    key, record = _single_arrays(reply.content, "the train reply")
    trained = record_to_numpy(record)
    value = trained
    if mode == "update":
        _, sent_record = _single_arrays(msg.content, "the train message")
        received = record_to_numpy(sent_record)
        if list(received) != list(trained):
            raise CodecError("reply tensors differ from the received ones; cannot form an update")
        value = OrderedDict((k, trained[k] - received[k]) for k in trained)
    use_feedback = bool(header.get(ERROR_FEEDBACK, False))
    carried = use_feedback and (residual := _residual(context, value)) is not None
    if carried:
        value = OrderedDict((k, v + residual[k]) for k, v in value.items())
    blob = codec.encode(value)
    if use_feedback:
        sent = decode_blob(blob)
        context.state[RESIDUAL_KEY] = numpy_to_record(
            OrderedDict((k, (v - sent[k]).astype(np.float32)) for k, v in value.items())
        )
    reply.content[key] = blob_to_record(blob)
    reply.content[HEADER_KEY] = make_header(reply_codec, reply=mode)
    codec_seconds += time.perf_counter() - started
    for metrics in reply.content.metric_records.values():
        metrics["codec-seconds"] = codec_seconds
        metrics["client-seconds"] = time.perf_counter() - entered
        if use_feedback:
            metrics["residual-carried"] = float(carried)
    return reply


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` for the training messages that ask for it (their config
    carries the clipping norm, ``clipping="client"``); every other message passes. Flower's mod
    answers a message without the norm with an error, so it cannot sit in the ClientApp's mod
    list as it is. Place it inside ``compression_mod``: it clips the plain update."""
    configs = msg.content.config_records.values() if msg.has_content() else []
    if msg.metadata.message_type == "train" and any(KEY_CLIPPING_NORM in c for c in configs):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
