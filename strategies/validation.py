"""What a training reply must satisfy before any strategy may aggregate it.

A federated server has to assume some clients are broken or hostile. Each check here raises
``RejectedReplyError`` with a reason short enough for one log line; the wrapper
(``strategies.compression``) turns that into a dropped reply, so the aggregate of the others is
exactly what it would have been without it. The payload itself is checked by the codec layer
(``strategies.codecs.decode_blob``: codec parameters, names, shapes, sparse indices); this module
adds what lies around it: the message's shape, its size bound, ``num-examples``, finite values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from strategies.codecs import Codec
from strategies.wire import HEADER_KEY

NUM_EXAMPLES = "num-examples"
# Flower weighs each reply by its claimed example count: an absurd claim would let one client
# outweigh everyone else. A phone-sized partition is far below this.
DEFAULT_MAX_NUM_EXAMPLES = 1_000_000


class RejectedReplyError(ValueError):
    """A reply that must not be aggregated; the message is the reason."""


def rejected_reply(server_round: int, msg: Message, reason: str) -> Message:
    """``msg`` turned into the error reply Flower's strategies skip, logged in the one line
    every rejection gets (``round 3: reply from node 4711 rejected: <reason>``), whichever
    wrapper rejects it."""
    log(
        WARNING,
        "round %d: reply from node %d rejected: %s",
        server_round,
        msg.metadata.src_node_id,
        reason,
    )
    return Message(
        metadata=msg.metadata,
        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
    )


def check_layout(content: RecordDict, arrays_key: str) -> tuple[ArrayRecord, MetricRecord]:
    """Exactly the records a training reply carries: one ArrayRecord, one MetricRecord."""
    arrays = list(content.array_records.items())
    if len(arrays) != 1 or arrays[0][0] != arrays_key:
        raise RejectedReplyError(
            f"expected one ArrayRecord {arrays_key!r}, got {[k for k, _ in arrays]}"
        )
    metrics = only_metric_record(content)
    unexpected = [k for k in content.config_records if k != HEADER_KEY]
    if unexpected:
        raise RejectedReplyError(f"unexpected ConfigRecords {unexpected}")
    return arrays[0][1], metrics


def only_metric_record(content: RecordDict) -> MetricRecord:
    """The reply's single MetricRecord (training and evaluation replies carry exactly one)."""
    metrics = list(content.metric_records.values())
    if len(metrics) != 1:
        raise RejectedReplyError(f"expected one MetricRecord, got {len(metrics)}")
    return metrics[0]


def check_metrics(metrics: MetricRecord, max_num_examples: int) -> int:
    """Every metric a finite number; ``num-examples`` a positive integer within the bound."""
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise RejectedReplyError(f"metric {key!r} is not a finite number")
    if NUM_EXAMPLES not in metrics:
        raise RejectedReplyError(f"metric {NUM_EXAMPLES!r} is missing")
    return check_count(NUM_EXAMPLES, metrics[NUM_EXAMPLES], max_num_examples)


def check_count(key: str, count: object, bound: int) -> int:
    """An example count: an integer in 1..bound (strategies weigh replies by it)."""
    if isinstance(count, (list, bool)) or not isinstance(count, (int, float)):
        raise RejectedReplyError(f"{key} = {count!r} is not an integer")
    if count != int(count):
        raise RejectedReplyError(f"{key} = {count!r} is not an integer")
    if not 1 <= count <= bound:
        raise RejectedReplyError(f"{key} = {count!r} outside 1..{bound}")
    return int(count)


def check_payload_size(size: int, codec: Codec, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The payload is no larger than ``codec`` can produce for the model's tensors."""
    bound = codec.max_message_bytes(shapes)
    if size > bound:
        raise RejectedReplyError(
            f"payload of {size} bytes exceeds the {bound} {codec.spec} can produce"
        )


def check_finite(tensors: Mapping[str, np.ndarray]) -> None:
    """No NaN or Inf anywhere: one such value would poison every coordinate it is averaged in."""
    for name, value in tensors.items():
        if not np.all(np.isfinite(value)):
            raise RejectedReplyError(f"tensor {name!r} holds NaN or Inf")


def common_metric_keys(metrics: list[MetricRecord]) -> set[str]:
    """Keys every reply's metrics share; Flower refuses to aggregate replies that differ."""
    if not metrics:
        return set()
    keys = set(metrics[0].keys())
    for record in metrics[1:]:
        keys &= set(record.keys())
    return keys
