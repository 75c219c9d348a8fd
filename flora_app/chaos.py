"""``chaos-clients``: a test knob that turns some SuperNodes into broken or lying clients.

In round t, the ``chaos-clients`` partitions starting at (t - 1) mod ``num-partitions`` are
broken: such a SuperNode trains normally, then spoils its encoded training reply before it
leaves: a NaN written into the payload, a payload cut in half, or a claim of a billion
examples, in turn by round. It sits outside ``compression_mod`` so it damages exactly what would
cross the wire; the server must reject every such reply and still finish the run with the good
ones.

The broken pair moves round by round so that the demo measures what bad replies cost, not what
losing two partitions' data for the whole run costs: with a fixed pair, the federation simply
never sees their (non-IID) data, whatever the server does.
"""

from __future__ import annotations

import struct

from flwr.app import ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from strategies.codecs import CodecError, read_header
from strategies.wire import blob_to_record, record_to_blob

KINDS = ("nan", "truncate", "examples")
NAN = struct.pack("<f", float("nan"))


def chaos_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    chaos = int(context.run_config.get("chaos-clients", 0))
    if msg.metadata.message_type != "train" or reply.has_error() or chaos <= 0:
        return reply
    config = next((r for r in msg.content.config_records.values() if "server-round" in r), None)
    server_round = int(config["server-round"]) if isinstance(config, ConfigRecord) else 0
    partition = int(context.node_config.get("partition-id", -1))
    partitions = int(context.node_config.get("num-partitions", 0))
    if not is_broken(partition, partitions, chaos, server_round):
        return reply
    kind = KINDS[(server_round + partition) % len(KINDS)]
    for key, record in list(reply.content.array_records.items()):
        blob = bytearray(record_to_blob(record))
        if kind == "nan":
            _write_nan(blob)
        elif kind == "truncate":
            del blob[len(blob) // 2 :]
        reply.content[key] = blob_to_record(bytes(blob))
    if kind == "examples":
        for key, metrics in list(reply.content.metric_records.items()):
            reply.content[key] = MetricRecord({**metrics, "num-examples": 10**9})
    return reply


def is_broken(partition: int, num_partitions: int, chaos: int, server_round: int) -> bool:
    """Whether ``partition`` is one of round ``server_round``'s ``chaos`` broken partitions."""
    if partition < 0:
        return False
    if num_partitions <= 0:  # no federation size known: the first ``chaos`` partitions
        return partition < chaos
    return (partition - (server_round - 1)) % num_partitions < min(chaos, num_partitions)


def _write_nan(blob: bytearray) -> None:
    """NaN into the first float of a tensor's values: an fp32/fp16 value, or an affine
    tensor's leading fp32 unit or scale (the layout ``strategies.codecs`` writes)."""
    try:
        entries, pos = read_header(bytes(blob))
    except CodecError:
        return
    for entry in entries:
        offset = pos + (entry.index_bytes if entry.kind == "s" else 0)
        if entry.body_size() - (offset - pos) >= 4:
            blob[offset : offset + 4] = NAN
            return
        pos += entry.body_size()
