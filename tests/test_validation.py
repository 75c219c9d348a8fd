"""Every rejection reason: one hand-built bad reply among good ones, and the aggregate of the
good ones comes out exactly as if the bad one had never been sent."""

from __future__ import annotations

import json
import struct
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Message
from flwr.serverapp.strategy import FedAvg

from strategies import FLASC
from strategies.codecs import Entry, codec_spec, decode_blob
from strategies.compression import CompressionStrategy
from strategies.wire import (
    record_to_blob,
    record_to_numpy,
)
from tests.helpers import bad_reply, make_arrays, make_content, make_message, send_round, with_blob

Q4 = codec_spec(4)


REASONS = {
    "wrong-codec": "differs from the requested",
    "wrong-bits": "differs from the requested",
    "wrong-mode": "reply mode",
    "wrong-shape": "has shape",
    "missing-tensor": "missing ['b']",
    "extra-tensor": "extra ['z']",
    "nan-value": "NaN or Inf",
    "truncated": "bytes",
    "bad-magic": "bad magic",
    "oversized": "exceeds",
    "examples=zero": "outside 1..",
    "examples=negative": "outside 1..",
    "examples=fraction": "not an integer",
    "examples=huge": "outside 1..",
    "no-examples": "'num-examples' is missing",
    "nan-metric": "'train-loss' is not a finite number",
    "two-array-records": "expected one ArrayRecord",
    "no-metrics": "expected one MetricRecord",
    "unexpected-config": "unexpected ConfigRecords",
}


# A NaN cannot be written into packed 4-bit codes: the affine NaN is the scale (test below).
CASES = [(k, c) for k in sorted(REASONS) for c in ("fp32", Q4) if (k, c) != ("nan-value", Q4)]


@pytest.mark.parametrize(("kind", "codec"), CASES)
def test_each_bad_reply_is_rejected_and_the_good_ones_aggregate_exactly(
    kind: str, codec: str, warnings_log: list[str]
) -> None:

    def fresh() -> CompressionStrategy:
        strategy = CompressionStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", codec
        )
        send_round(strategy, make_arrays(0))
        return strategy

    def good() -> list[Message]:
        return [
            make_message(make_content(a, {"num-examples": n, "train-loss": 0.1 * n}, codec), src=s)
            for s, (a, n) in ((1, (make_arrays(1), 10)), (2, (make_arrays(2), 30)))
        ]

    expected = record_to_numpy(fresh().aggregate_train(1, good())[0])
    strategy = fresh()
    first, second = good()
    bad = make_message(bad_reply(kind, codec), src=99)
    arrays, metrics = strategy.aggregate_train(1, [first, bad, second])
    got = record_to_numpy(arrays)
    assert list(got) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
    assert metrics["train-loss"] == pytest.approx((0.1 * 10 * 10 + 0.1 * 30 * 30) / 40)
    round_metrics = strategy.take_round_metrics()
    assert round_metrics["rejected_replies"] == 1
    assert round_metrics["failed_replies"] == 0
    rejections = [line for line in warnings_log if "rejected" in line]
    assert len(rejections) == 1 and "node 99" in rejections[0], warnings_log
    assert REASONS[kind] in rejections[0], rejections[0]


def test_nan_scales_of_an_affine_reply_are_rejected(warnings_log: list[str]) -> None:
    """The affine codec's NaN: the per-channel scale, not the packed codes."""
    strategy = CompressionStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", Q4)
    send_round(strategy, make_arrays(0))
    content = make_content(make_arrays(1), {"num-examples": 5}, Q4)
    blob = bytearray(record_to_blob(content["arrays"]))
    header_len = struct.unpack("<I", blob[4:8])[0]
    body = 8 + header_len
    blob[body : body + 4] = struct.pack("<f", float("nan"))  # the fp32 unit of tensor "a"
    bad = make_message(with_blob(content, lambda _: blob), src=5)
    good = make_message(make_content(make_arrays(2), {"num-examples": 5}, Q4), src=6)
    expected = decode_blob(record_to_blob(good.content["arrays"]))
    arrays, _ = strategy.aggregate_train(1, [bad, good])
    for key, value in record_to_numpy(arrays).items():
        np.testing.assert_array_equal(value, expected[key])
    assert strategy.take_round_metrics()["rejected_replies"] == 1
    assert any("node 5" in line and "non-finite" in line for line in warnings_log), warnings_log


def test_an_update_that_overflows_the_global_is_rejected(warnings_log: list[str]) -> None:
    strategy = CompressionStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", "fp32", reply="update"
    )
    dense = make_arrays(0)
    dense["w"][0, 0] = 3e38
    send_round(strategy, dense)
    huge = make_arrays(1, scale=0.0)
    huge["w"][0, 0] = 3e38  # finite, but global + update is inf
    small = make_arrays(2, scale=0.01)
    replies = [
        make_message(make_content(huge, {"num-examples": 3}, "fp32", "update"), src=1),
        make_message(make_content(small, {"num-examples": 3}, "fp32", "update"), src=2),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    for key, value in record_to_numpy(arrays).items():
        np.testing.assert_array_equal(value, (dense[key] + small[key]).astype(np.float32))
    assert any("node 1" in line and "NaN or Inf" in line for line in warnings_log)


def _sparse_reply(strategy: CompressionStrategy, update: OrderedDict, n: int, src: int) -> Message:
    return make_message(
        make_content(update, {"num-examples": n}, strategy.uplink, "update"), src=src
    )


def _container(entries: list[Entry], bodies: list[bytes]) -> bytes:
    """A container written by hand, to say what our encoder never would."""
    header = zlib.compress(json.dumps({"t": [e.to_json() for e in entries]}).encode())
    return b"FLC1" + struct.pack("<I", len(header)) + header + b"".join(bodies)


# Index sections of a 2-entry sparse tensor "a" (108 values) that must not decode. Gaps are
# LEB128 varints of (first index, then gap - 1), so they cannot repeat an index; a bitmap
# cannot either. What can go wrong is the range, the count, and stray padding bits.
BAD_INDICES = {
    "gap-out-of-range": ("g", bytes([100, 20])),  # 100, then 121 > 107
    "gap-count": ("g", bytes([1, 2, 3])),  # three varints, header says two
    "gap-unterminated": ("g", bytes([1, 0x80])),
    "bitmap-count": ("b", np.packbits(np.eye(1, 108, 5, dtype=np.uint8)[0]).tobytes()),
    "bitmap-padding": (
        "b",
        np.packbits(np.concatenate([np.eye(1, 108, 5, dtype=np.uint8)[0], [0, 0, 1, 0]])).tobytes(),
    ),
}


@pytest.mark.parametrize("defect", sorted(BAD_INDICES))
def test_sparse_replies_with_bad_indices_are_rejected(defect: str, warnings_log) -> None:
    strategy = FLASC(
        density_up=1.0,
        density_down=1.0,
        sparsity_scope="tensor",
        server_optimizer="sgd",
        server_lr=1.0,
        fraction_evaluate=0.1,
        min_available_nodes=1,
        min_train_nodes=1,
    )
    # density 1 per tensor: every entry of every tensor is kept, so k is the tensor size
    dense = make_arrays(0)
    send_round(strategy, dense)
    good = _sparse_reply(strategy, make_arrays(1, scale=0.1), 4, src=1)
    kind, index = BAD_INDICES[defect]
    k = 108  # density 1 per tensor: the codec demands k == size
    entries = [
        Entry("a", (4, 3, 3, 3), "s", k=k, index=kind, index_bytes=len(index), values="f32"),
        Entry("w", (5, 6), "s", k=30, index="b", index_bytes=4, values="f32"),
        Entry("b", (5,), "s", k=5, index="b", index_bytes=1, values="f32"),
    ]
    bodies = [
        index + np.ones(k, "<f4").tobytes(),
        np.packbits(np.ones(30, np.uint8)).tobytes() + np.ones(30, "<f4").tobytes(),
        np.packbits(np.ones(5, np.uint8)).tobytes() + np.ones(5, "<f4").tobytes(),
    ]
    bad = _sparse_reply(strategy, make_arrays(2, scale=0.1), 4, src=2)
    bad = make_message(with_blob(bad.content, lambda _: _container(entries, bodies)), src=2)
    sent = decode_blob(record_to_blob(good.content["arrays"]))
    arrays, _ = strategy.aggregate_train(1, [good, bad])
    for key, value in record_to_numpy(arrays).items():
        np.testing.assert_allclose(value, dense[key] + sent[key], rtol=0, atol=1e-6)
    assert strategy.take_round_metrics()["rejected_replies"] == 1
    assert any("node 2" in line and "rejected" in line for line in warnings_log), warnings_log


def test_with_no_valid_reply_the_round_aggregates_nothing(warnings_log: list[str]) -> None:
    """Flower's ``start`` keeps the previous global when aggregation returns ``None``."""
    strategy = CompressionStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", Q4)
    send_round(strategy, make_arrays(0))
    bad = [make_message(bad_reply(k, Q4), src=i) for i, k in enumerate(["truncated", "no-metrics"])]
    arrays, _ = strategy.aggregate_train(1, bad)
    assert arrays is None
    assert strategy.take_round_metrics()["rejected_replies"] == 2
    assert any("no valid reply" in line for line in warnings_log)


def test_replies_with_different_metric_keys_still_aggregate(warnings_log: list[str]) -> None:
    """Flower's FedAvg would stop the round (InconsistentMessageReplies); we keep both."""
    strategy = CompressionStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), "fp32", Q4)
    send_round(strategy, make_arrays(0))
    replies = [
        make_message(
            make_content(make_arrays(1), {"num-examples": 1, "train-loss": 1.0}, Q4), src=1
        ),
        make_message(
            make_content(make_arrays(2), {"num-examples": 3, "train-loss": 2.0, "x": 5}, Q4), src=2
        ),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and set(metrics) == {"train-loss"}  # Flower drops the weight
    assert metrics["train-loss"] == pytest.approx(1.75)
    assert strategy.take_round_metrics()["rejected_replies"] == 0
    assert any("['x'] not sent by every client" in line for line in warnings_log)
