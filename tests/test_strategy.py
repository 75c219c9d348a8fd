"""The compression wrapper around Flower's FedAvg: aggregation is exactly the weighted mean."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies import FLASC, FedLoRA, FLoCoRA
from strategies.chain import innermost, take_round_metrics
from strategies.codecs import codec_spec, decode_blob, get_codec
from strategies.compression import CompressionStrategy
from strategies.schedules import schedule_factor
from strategies.wire import (
    HEADER_KEY,
    numpy_to_record,
    record_to_blob,
    record_to_numpy,
)
from tests.helpers import (
    OneNodeGrid,
    make_arrays,
    make_message,
    make_reply,
    send_round,
    weighted_mean,
)

Q4 = codec_spec(4)
# Sampling for a one-node grid: the strategies' defaults are Flower's (two nodes at least).
ONE_NODE = {"fraction_evaluate": 0.1, "min_available_nodes": 1, "min_train_nodes": 1}


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=1, min_train_nodes=1)


def test_fp32_aggregate_is_the_example_weighted_mean() -> None:
    strategy = CompressionStrategy(_fedavg(), "fp32", "fp32")
    send_round(strategy, make_arrays(0))
    clients = [(make_arrays(i), n) for i, n in enumerate([10, 30, 60], start=1)]
    replies = [make_reply(a, n, src=i + 1, codec="fp32") for i, (a, n) in enumerate(clients)]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    for key, value in weighted_mean(clients).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6)


def test_quantized_replies_aggregate_to_the_mean_of_their_dequantized_tensors() -> None:
    strategy = CompressionStrategy(_fedavg(), "fp32", Q4)
    send_round(strategy, make_arrays(0))
    clients = [(make_arrays(i), n) for i, n in enumerate([10, 30, 60], start=1)]
    replies = [make_reply(a, n, src=i + 1, codec=Q4) for i, (a, n) in enumerate(clients)]
    dequantized = [
        (decode_blob(record_to_blob(r.content["arrays"])), n)
        for r, (_, n) in zip(replies, clients, strict=True)
    ]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    for key, value in weighted_mean(dequantized).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6)
    # and 4 bits really lost information: the dequantized mean is not the fp32 mean
    assert not np.allclose(got["a"], weighted_mean(clients)["a"], atol=1e-4)


def test_updates_are_applied_to_the_dense_global_not_the_lossy_downlink() -> None:
    strategy = CompressionStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1), codec_spec(8), "fp32", reply="update"
    )
    dense = make_arrays(0, scale=3.0)
    received = send_round(strategy, dense)  # 8-bit downlink: lossy
    assert not np.allclose(received["a"], dense["a"], atol=1e-4)
    updates = [(make_arrays(i, scale=0.01), n) for i, n in ((1, 1), (2, 3))]
    replies = [make_reply(u, n, i + 1, "fp32", mode="update") for i, (u, n) in enumerate(updates)]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    mean_update = weighted_mean(updates)
    for key in dense:
        np.testing.assert_allclose(got[key], dense[key] + mean_update[key], atol=1e-6)


@pytest.mark.parametrize(
    "corrupt",
    ["codec", "mode", "shape"],
)
def test_a_bad_reply_is_dropped_and_the_rest_aggregate_exactly(corrupt: str) -> None:
    strategy = CompressionStrategy(_fedavg(), "fp32", Q4)
    send_round(strategy, make_arrays(0))
    good = [(make_arrays(1), 10), (make_arrays(2), 30)]
    replies = [make_reply(a, n, src=i + 1, codec=Q4) for i, (a, n) in enumerate(good)]
    expected = weighted_mean(
        [
            (decode_blob(record_to_blob(r.content["arrays"])), n)
            for r, (_, n) in zip(replies, good, strict=True)
        ]
    )
    if corrupt == "codec":
        bad = make_reply(make_arrays(3), 1000, src=9, codec="fp32")
    elif corrupt == "mode":
        bad = make_reply(make_arrays(3), 1000, src=9, codec=Q4, mode="update")
    else:
        wrong = make_arrays(3)
        wrong["a"] = wrong["a"][:2]
        bad = make_reply(wrong, 1000, src=9, codec=Q4)
    got = record_to_numpy(strategy.aggregate_train(1, [*replies, bad])[0])
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6)
    metrics = strategy.take_round_metrics()
    assert metrics["rejected_replies"] == 1 and metrics["failed_replies"] == 0


def test_strategy_classes_build_the_baseline_and_flocora() -> None:
    strategy = FedLoRA(fraction_train=0.5, fraction_evaluate=0.1)
    aggregator = innermost(strategy)
    assert type(aggregator) is FedAvg and aggregator.fraction_train == 0.5
    assert strategy.uplink == "fp32" and strategy.downlink.spec == "fp32"
    flocora = FLoCoRA(quant_bits=2, quant_bits_down=8, reply="weights")
    assert flocora.uplink == codec_spec(2) and flocora.downlink.spec == codec_spec(8)
    assert flocora.reply == "weights" and type(innermost(flocora)) is FedAvg
    both = FLoCoRA(quant_bits=4, quant_bits_down=8, quant_vectors="quant", entropy_coder="zstd")
    assert both.uplink == codec_spec(4, vectors="quant") + "+zstd"
    assert both.downlink.spec == codec_spec(8, vectors="quant") + "+zstd"


def test_downlink_is_encoded_once_and_names_the_reply_codec() -> None:
    strategy = CompressionStrategy(FedAvg(), "fp32", Q4, reply="update", error_feedback=True)
    content = RecordDict({"arrays": numpy_to_record(make_arrays(0)), "config": ConfigRecord({})})
    messages = strategy._encode([make_message(content), make_message(content, dst=8)], True)
    assert messages[0].content is messages[1].content  # encoded once per round, not per node
    header = messages[0].content[HEADER_KEY]
    assert header["codec"] == "fp32" and header["reply-codec"] == Q4
    assert header["reply"] == "update" and header["error-feedback"] is True
    assert list(messages[0].content["arrays"].keys()) == ["payload"]  # one Array per message


def _flasc(
    optimizer: str, lr: float, density_up: float = 0.5, density_down: float = 1.0, **extra
) -> CompressionStrategy:
    return FLASC(
        density_up=density_up,
        density_down=density_down,
        server_optimizer=optimizer,
        server_lr=lr,
        **ONE_NODE,
        **extra,
    )


def _sparse_replies(strategy: CompressionStrategy, updates: list[tuple[OrderedDict, int]]):
    codec = strategy.uplink
    return [make_reply(u, n, i + 1, codec, mode="update") for i, (u, n) in enumerate(updates)]


def test_flasc_sgd_with_lr_one_is_fedavg_of_the_sparse_updates() -> None:
    strategy = _flasc("sgd", 1.0)
    dense = make_arrays(0)
    send_round(strategy, dense)
    updates = [(make_arrays(i, scale=0.1), n) for i, n in ((1, 10), (2, 30))]
    replies = _sparse_replies(strategy, updates)
    sent = [
        (decode_blob(record_to_blob(r.content["arrays"])), n)
        for r, (_, n) in zip(replies, updates, strict=True)
    ]
    total = sum(v.size for v in dense.values())
    for update, _ in sent:  # each client sent exactly half of its update
        assert sum(np.count_nonzero(v) for v in update.values()) == round(0.5 * total)
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    mean = weighted_mean(sent)
    for key in dense:  # FedAvg of (dense + sparse update) == dense + mean sparse update
        np.testing.assert_allclose(got[key], dense[key] + mean[key], rtol=1e-6, atol=1e-6)


def test_flasc_adam_matches_a_hand_computation_over_two_rounds() -> None:
    lr, b1, b2, eps = 0.05, 0.8, 0.99, 1e-3  # not the defaults: the keys must reach Flower
    strategy = _flasc("adam", lr, server_beta1=b1, server_beta2=b2, server_eps=eps)
    x = {k: v.astype(np.float64) for k, v in make_arrays(0).items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(v) for k, v in x.items()}
    for server_round in (1, 2):
        send_round(strategy, OrderedDict((k, val.astype(np.float32)) for k, val in x.items()))
        updates = [(make_arrays(10 * server_round + i, scale=0.1), n) for i, n in ((1, 1), (2, 3))]
        replies = _sparse_replies(strategy, updates)
        sent = [
            (decode_blob(record_to_blob(r.content["arrays"])), n)
            for r, (_, n) in zip(replies, updates, strict=True)
        ]
        got = record_to_numpy(strategy.aggregate_train(server_round, replies)[0])
        delta = weighted_mean(sent)  # the pseudo-gradient: mean sparse update
        step = lr * np.sqrt(1 - b2 ** (server_round + 1)) / (1 - b1 ** (server_round + 1))
        for k in x:  # Flower's FedAdam, written out
            m[k] = b1 * m[k] + (1 - b1) * delta[k]
            v[k] = b2 * v[k] + (1 - b2) * delta[k] ** 2
            x[k] = x[k] + step * m[k] / (np.sqrt(v[k]) + eps)
            np.testing.assert_allclose(got[k], x[k], rtol=1e-4, atol=1e-5)
        x = {k: got[k].astype(np.float64) for k in x}


def test_flasc_sends_exactly_k_entries_each_way() -> None:
    strategy = _flasc("adam", 0.01, density_up=0.1, density_down=0.25)
    received = send_round(strategy, make_arrays(0))
    total = sum(v.size for v in received.values())
    assert sum(np.count_nonzero(v) for v in received.values()) == round(0.25 * total)
    (reply,) = _sparse_replies(strategy, [(make_arrays(5), 3)])
    update = decode_blob(record_to_blob(reply.content["arrays"]))
    assert sum(np.count_nonzero(v) for v in update.values()) == round(0.1 * total)


def test_round_metrics_report_realised_density_and_index_encoding() -> None:
    strategy = _flasc("adam", 0.01, density_up=0.1, density_down=0.25)
    send_round(strategy, make_arrays(0))
    strategy.aggregate_train(
        1, _sparse_replies(strategy, [(make_arrays(5), 3), (make_arrays(6), 1)])
    )
    metrics = strategy.take_round_metrics()
    total = sum(v.size for v in make_arrays(0).values())
    assert metrics["down_density"] == pytest.approx(round(0.25 * total) / total)
    assert metrics["up_density"] == pytest.approx(round(0.1 * total) / total)
    assert metrics["up_bitmap_tensors"] + metrics["up_gap_tensors"] == 3
    assert strategy.take_round_metrics() == {}  # taken once per round


def test_density_schedule_decays_the_codecs_round_by_round() -> None:
    strategy = FLASC(density_up=0.4, density_down=0.8, density_schedule="decay:0.5:2", **ONE_NODE)
    seen = []
    for server_round in (1, 2, 3, 5):
        strategy.configure_train(
            server_round, numpy_to_record(make_arrays(0)), ConfigRecord({}), OneNodeGrid()
        )
        seen.append((strategy.downlink.density, get_codec(strategy.uplink).density))
    assert seen == [(0.8, 0.4), (0.8, 0.4), (0.4, 0.2), (0.2, 0.1)]
    with pytest.raises(ValueError, match="decay:F:N"):
        schedule_factor("decay:2:1")


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean"])
def test_robust_aggregation_ignores_a_poisoned_but_valid_reply(aggregation: str) -> None:
    strategy = FedLoRA(aggregation=aggregation, trim_fraction=0.25, **ONE_NODE)
    send_round(strategy, make_arrays(0))
    clients = [(make_arrays(i), 10) for i in (1, 2, 3)] + [(make_arrays(4, scale=1e4), 10)]
    replies = [make_reply(a, n, src=i + 1, codec="fp32") for i, (a, n) in enumerate(clients)]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    stacked = {k: np.stack([a[k] for a, _ in clients]) for k in clients[0][0]}
    for key, values in stacked.items():
        ordered = np.sort(values, axis=0)
        expected = (
            np.median(values, axis=0) if aggregation == "median" else ordered[1:3].mean(axis=0)
        )
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6)
        assert np.abs(got[key]).max() < 10  # the 1e4-scaled reply did not drag it away
    mean = weighted_mean(clients)
    assert np.abs(mean["w"]).max() > 100  # while the plain mean would have been


def test_flasc_composes_its_server_optimizer_with_the_median_of_the_updates() -> None:
    strategy = _flasc("sgd", 1.0, density_up=1.0, aggregation="median")
    dense = make_arrays(0)
    send_round(strategy, dense)
    updates = [(make_arrays(i, scale=0.1), n) for i, n in ((1, 1), (2, 50), (3, 1))]
    replies = _sparse_replies(strategy, updates)
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    for key in dense:
        median = np.median(np.stack([u[key] for u, _ in updates]), axis=0)
        np.testing.assert_allclose(got[key], dense[key] + median, rtol=1e-5, atol=1e-6)


def _plain_replies(clients: list[tuple[OrderedDict, int]]) -> list:
    """The same replies as plain fp32 Flower messages, as Flower's own strategies take them."""
    from flwr.app import ArrayRecord, MetricRecord

    return [
        make_message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            ),
            src=i + 1,
        )
        for i, (arrays, n) in enumerate(clients)
    ]


@pytest.mark.parametrize("aggregation", ["krum", "multi-krum", "bulyan"])
def test_the_krum_family_equals_flower_s_own_on_the_decoded_replies(aggregation: str) -> None:
    """Seven replies, one scaled 1e4 (valid, malicious): flora's pipeline through the fp32 codec
    gives exactly what Flower's class gives on the same tensors, and drops the outlier."""
    from flwr.serverapp.strategy import Bulyan, Krum, MultiKrum

    strategy = FedLoRA(aggregation=aggregation, malicious_nodes=1, multi_krum_select=3, **ONE_NODE)
    send_round(strategy, make_arrays(0))
    clients = [(make_arrays(i), 10 + i) for i in range(1, 7)] + [(make_arrays(9, 1e4), 10)]
    replies = [make_reply(a, n, src=i + 1, codec="fp32") for i, (a, n) in enumerate(clients)]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    flower = {
        "krum": Krum(num_malicious_nodes=1),
        "multi-krum": MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
        "bulyan": Bulyan(num_malicious_nodes=1),
    }[aggregation]
    want = record_to_numpy(flower.aggregate_train(1, _plain_replies(clients))[0])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
        assert np.abs(got[key]).max() < 10  # the 1e4-scaled reply was left out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_flasc_steps_on_what_krum_selects(optimizer: str) -> None:
    from flwr.serverapp.strategy import Krum

    strategy = _flasc(optimizer, 1.0, density_up=1.0, aggregation="krum", malicious_nodes=1)
    inner = innermost(strategy)
    assert isinstance(inner, Krum) and inner.num_malicious_nodes == 1
    dense = make_arrays(0)
    send_round(strategy, dense)
    updates = [(make_arrays(i, scale=0.1), 5) for i in range(1, 5)] + [(make_arrays(9, 1e3), 5)]
    got = record_to_numpy(strategy.aggregate_train(1, _sparse_replies(strategy, updates))[0])
    chosen = record_to_numpy(
        Krum(num_malicious_nodes=1).aggregate_train(1, _plain_replies(updates))[0]
    )
    for key in dense:
        step = got[key] - dense[key]
        if optimizer == "sgd":  # lr 1, no momentum: exactly the selected update
            np.testing.assert_allclose(step, chosen[key], rtol=1e-5, atol=1e-6)
        assert np.abs(step).max() < 10  # not the 1e3-scaled update


def test_every_aggregation_choice_has_a_combiner_and_both_optimizers() -> None:
    from flora_app.config import AGGREGATIONS, SERVER_OPTIMIZERS
    from strategies.aggregation import _OPTIMIZER_CLASSES, COMBINERS

    assert tuple(COMBINERS) == AGGREGATIONS
    assert set(_OPTIMIZER_CLASSES) == {(o, a) for o in SERVER_OPTIMIZERS for a in AGGREGATIONS}


def test_server_lr_schedule_scales_the_optimizer_step_round_by_round() -> None:
    strategy = _flasc("sgd", 1.0, density_up=1.0, server_lr_schedule="decay:0.5:1")
    dense = make_arrays(0)
    for server_round, factor in ((1, 1.0), (2, 0.5), (3, 0.25)):
        send_round(strategy, dense)
        update = make_arrays(server_round, scale=0.1)
        (reply,) = _sparse_replies(strategy, [(update, 5)])
        got = record_to_numpy(strategy.aggregate_train(server_round, [reply])[0])
        for key in dense:
            np.testing.assert_allclose(got[key], dense[key] + factor * update[key], atol=1e-6)
        dense = got


class _TwoNodes:
    """Enough of a Grid for sampling: nodes 1 and 2."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _tiered_round(strategy: CompressionStrategy, dense: OrderedDict) -> dict[int, str]:
    """configure_train on two nodes; the uplink codec each message asks of its node."""
    from flwr.supercore.task_identity import TaskIdentity

    from strategies.wire import REPLY_CODEC, read_header

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    messages = strategy.configure_train(1, numpy_to_record(dense), ConfigRecord({}), _TwoNodes())
    return {m.metadata.dst_node_id: read_header(m.content)[REPLY_CODEC] for m in messages}


def test_flasc_tiers_ask_each_node_its_density_and_average_what_was_sent() -> None:
    """Node 1 sends 20 % of its update, node 2 all of it; server SGD at lr 1 is the
    example-weighted mean of the two sparse updates, by hand."""
    tiers = {1: 0.2, 2: 1.0}
    strategy = FLASC(
        density_up=0.5,
        density_down=1.0,
        density_up_for_node=tiers.get,
        server_optimizer="sgd",
        server_lr=1.0,
        fraction_train=1.0,
        min_available_nodes=1,
    )
    dense = make_arrays(0)
    asked = _tiered_round(strategy, dense)
    assert {n: get_codec(s).density for n, s in asked.items()} == tiers
    updates = {1: (make_arrays(1, scale=0.1), 30), 2: (make_arrays(2, scale=0.1), 10)}
    replies = [
        make_reply(u, n, node, asked[node], mode="update") for node, (u, n) in updates.items()
    ]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    sent = {node: decode_blob(get_codec(asked[node]).encode(u)) for node, (u, _) in updates.items()}
    total = sum(v.size for v in dense.values())
    assert sum(np.count_nonzero(v) for v in sent[1].values()) == round(0.2 * total)
    for key in dense:
        mean = (30 * sent[1][key].astype(np.float64) + 10 * sent[2][key]) / 40
        np.testing.assert_allclose(got[key], dense[key] + mean, rtol=1e-5, atol=1e-6)


def test_a_node_that_answers_in_another_tier_s_codec_is_rejected() -> None:
    strategy = FLoCoRA(
        quant_bits=8,
        quant_bits_for_node={1: 2, 2: 8}.get,
        fraction_train=1.0,
        min_available_nodes=1,
    )
    asked = _tiered_round(strategy, make_arrays(0))
    assert [get_codec(asked[n]).bits for n in (1, 2)] == [2, 8]
    cheat = make_reply(make_arrays(1, scale=0.1), 10, 1, asked[2], mode="update")  # 8 bits
    honest = make_reply(make_arrays(2, scale=0.1), 10, 2, asked[2], mode="update")
    strategy.aggregate_train(1, [cheat, honest])
    metrics = take_round_metrics(strategy)
    assert metrics["rejected_replies"] == 1
    assert metrics["aggregated_replies"] == 1


def _norm(arrays: dict) -> float:
    return float(
        np.sqrt(sum(np.sum(np.asarray(v, dtype=np.float64) ** 2) for v in arrays.values()))
    )


def test_max_update_norm_clips_a_long_update_to_the_bound_and_counts_it() -> None:
    strategy = FedLoRA(max_update_norm=2.0, **ONE_NODE)
    dense = make_arrays(0)
    send_round(strategy, dense)
    short = OrderedDict((k, v + 0.01) for k, v in dense.items())
    long_update = make_arrays(5, scale=3.0)
    long = OrderedDict((k, dense[k] + long_update[k]) for k in dense)
    replies = [make_reply(short, 10, 1, "fp32"), make_reply(long, 10, 2, "fp32")]
    got = record_to_numpy(strategy.aggregate_train(1, replies)[0])
    factor = 2.0 / _norm(long_update)
    for key in dense:  # mean of the short reply and the long one scaled onto the bound
        clipped = dense[key] + long_update[key].astype(np.float64) * factor
        np.testing.assert_allclose(got[key], (short[key] + clipped) / 2, rtol=1e-5, atol=1e-6)
    metrics = take_round_metrics(strategy)
    assert metrics["clipped_replies"] == 1 and metrics["rejected_replies"] == 0


def test_max_update_norm_can_reject_instead() -> None:
    strategy = FedLoRA(max_update_norm=2.0, update_norm_action="reject", **ONE_NODE)
    dense = make_arrays(0)
    send_round(strategy, dense)
    long = OrderedDict((k, v + make_arrays(5, scale=3.0)[k]) for k, v in dense.items())
    strategy.aggregate_train(1, [make_reply(long, 10, 2, "fp32")])
    assert take_round_metrics(strategy)["rejected_replies"] == 1
    with pytest.raises(ValueError, match="update_norm_action"):
        FedLoRA(max_update_norm=1.0, update_norm_action="drop")


def test_the_bound_holds_for_every_decoded_sparse_update() -> None:
    """FLASC, server SGD at lr 1 on one reply: the step is the decoded, clipped update."""
    strategy = _flasc("sgd", 1.0, density_up=0.3, max_update_norm=0.5)
    dense = make_arrays(0)
    send_round(strategy, dense)
    for seed in range(1, 4):
        (reply,) = _sparse_replies(strategy, [(make_arrays(seed, scale=0.5), 5)])
        got = record_to_numpy(strategy.aggregate_train(1, [reply])[0])
        step = {k: got[k].astype(np.float64) - dense[k] for k in dense}
        assert _norm(step) <= 0.5 * (1 + 1e-5)
        assert _norm(step) > 0.4  # it was long: clipped onto the bound, not zeroed
