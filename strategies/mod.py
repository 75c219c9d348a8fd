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
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies.blocks import leading_blocks, update_of
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


# What a node can rebuild before its first message: the run's initial adapters, built by the
# app from its config (this module knows no model). None: a node without a copy starts from zeros.
Origin = Callable[[Context], Mapping[str, np.ndarray]]


def _rebuilt(content: RecordDict, base: str, context: Context, origin: Origin | None) -> None:
    """Add the received change to the copy the server named by digest (this node's held copy,
    or its ``origin``; zeros when ``base`` is empty), in place of the change, and keep the result
    as the node's copy. Any other copy would silently train a wrong model, so it is refused."""
    key, record = _single_arrays(content, "the train message")
    change = record_to_numpy(record)
    if base:
        copy = _copy_named(base, context, origin, change)
        if copy is None:
            raise CodecError(
                f"this node does not hold the copy (digest {base[:12]}) the server's downlink "
                "change applies to (restarted, a message was lost, or its initial adapters "
                "differ from the server's); the server sends a full copy next time"
            )
    else:
        copy = OrderedDict((k, np.zeros_like(v)) for k, v in change.items())
    rebuilt = numpy_to_record(OrderedDict((k, copy[k] + change[k]) for k in change))
    content[key] = context.state[HELD_KEY] = rebuilt  # one record: its Arrays are immutable


def _copy_named(
    base: str, context: Context, origin: Origin | None, change: Mapping[str, np.ndarray]
) -> Mapping[str, np.ndarray] | None:
    """The node's held copy, else its origin (cut to the change's leading blocks when the
    node trains fewer LoRA components: ``strategies.blocks``), whichever has digest ``base``
    and the change's tensors."""
    held = context.state.get(HELD_KEY)
    candidates = [lambda: record_to_numpy(held)] if isinstance(held, ArrayRecord) else []
    if origin is not None:
        candidates.append(lambda: leading_blocks(origin(context), change))
    for candidate in candidates:
        copy = candidate()
        # the digest covers every name and shape: equal digests, the same layout
        if copy is not None and list(copy) == list(change) and state_digest(copy) == base:
            return copy
    return None


def make_compression_mod(origin: Origin | None = None) -> Mod:
    """``compression_mod`` whose node, before its first message, already holds ``origin``: with
    a downlink delta, the server (given the same adapters as ``CompressionStrategy``'s
    ``delta_origin``) then sends a node it has no mirror of the change from them, not a full
    copy. ``origin`` is called only then, and its result is checked against the server's
    digest, so a node that builds other initial adapters refuses instead of training them."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        return _compression(msg, context, call_next, origin)

    mod.__doc__ = compression_mod.__doc__
    return mod


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the payload, run the handler, encode its reply as the header asks.

    A malformed payload or an unknown codec raises ``CodecError``; Flower turns the exception
    into an error reply, so the server logs it against this node instead of aggregating junk.
    """
    return _compression(msg, context, call_next, None)


def _compression(
    msg: Message, context: Context, call_next: ClientAppCallable, origin: Origin | None
) -> Message:
    header = read_header(msg.content) if msg.has_content() else None
    if header is None:
        return call_next(msg, context)
    entered = started = time.perf_counter()
    msg.content = decode_content(msg.content)
    base = header.get(DELTA_BASE)
    if isinstance(base, str):
        _rebuilt(msg.content, base, context, origin)
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
        try:  # a node that trained fewer LoRA components replies with leading blocks
            value = update_of(trained, record_to_numpy(sent_record))
        except ValueError as exc:
            raise CodecError(str(exc)) from None
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
