"""The compression wrapper around Flower's FedAvg: aggregation is exactly the weighted mean."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies.codecs import get_codec
from strategies.compression import CompressionStrategy
from strategies.presets import PRESETS, build_strategy
from strategies.wire import HEADER_KEY, encode_content, numpy_to_record, record_to_numpy
from tests.conftest import make_message


def _reply(arrays: dict, n: int, src: int, codec: str = "fp32"):
    content = RecordDict(
        {
            "arrays": numpy_to_record(OrderedDict(arrays)),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )
    return make_message(encode_content(content, get_codec(codec), None), src=src, mid=str(src))


def _arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float32),
    }


def test_aggregate_is_the_example_weighted_mean() -> None:
    strategy = CompressionStrategy(FedAvg(), "fp32", "fp32")
    clients = [(_arrays(i), n) for i, n in enumerate([10, 30, 60])]
    replies = [_reply(a, n, src=i + 1) for i, (a, n) in enumerate(clients)]
    arrays, _ = strategy.aggregate_train(1, replies)
    got = record_to_numpy(arrays)
    total = sum(n for _, n in clients)
    for key in ("a", "b"):
        expected = sum(a[key].astype(np.float64) * n for a, n in clients) / total
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6)


def test_a_reply_in_the_wrong_codec_is_dropped_and_the_rest_aggregate_exactly() -> None:
    strategy = CompressionStrategy(FedAvg(), "fp32", "fp32")
    good = [_reply(_arrays(1), 10, src=1), _reply(_arrays(2), 30, src=2)]
    bad = _reply(_arrays(3), 1000, src=3)
    bad.content[HEADER_KEY]["codec"] = "int3"
    arrays, _ = strategy.aggregate_train(1, [*good, bad])
    expected, _ = CompressionStrategy(FedAvg(), "fp32", "fp32").aggregate_train(
        1, [_reply(_arrays(1), 10, src=1), _reply(_arrays(2), 30, src=2)]
    )
    for key, value in record_to_numpy(expected).items():
        np.testing.assert_array_equal(record_to_numpy(arrays)[key], value)
    assert strategy.take_round_metrics()["failed_replies"] == 1


def test_presets_cover_the_baselines() -> None:
    assert PRESETS["fedavg"].lora is False and PRESETS["fedlora"].lora is True
    strategy = build_strategy("fedlora", fraction_train=0.5, fraction_evaluate=0.0)
    assert isinstance(strategy.strategy, FedAvg) and strategy.strategy.fraction_train == 0.5


def test_downlink_messages_carry_the_codec_header_and_reply_codec() -> None:
    strategy = CompressionStrategy(FedAvg(), "fp32", "fp32")
    content = RecordDict(
        {"arrays": numpy_to_record(OrderedDict(_arrays(0))), "config": ConfigRecord({"lr": 0.1})}
    )
    messages = strategy._encode([make_message(content), make_message(content, dst=8)], "fp32")
    assert messages[0].content is messages[1].content  # encoded once per round, not per node
    header = messages[0].content[HEADER_KEY]
    assert header["codec"] == "fp32" and header["reply-codec"] == "fp32"
