"""Heterogeneous ranks (``rank-tiers``, HetLoRA-style): a node trains only its first r LoRA
components and replies with only those (the leading blocks of its tensors); the server
validates each reply against the blocks its node was asked for and averages every component
over the nodes that trained it (checked against a hand computation), and the configuration
refuses what the masked mean cannot compose with."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flora_app.client_app import train
from flora_app.config import ConfigError, FloraConfig
from flora_app.ml.lora import rank_block
from flora_app.results import read_rounds
from strategies import FedLoRA, FLoCoRA
from strategies.blocks import leading_block
from strategies.choices import RANK_KEY
from strategies.compression import CompressionStrategy
from strategies.mod import make_compression_mod
from strategies.rank_tiers import RankTiers
from strategies.wire import (
    DELTA_BASE,
    decode_content,
    numpy_to_record,
    read_header,
    record_to_numpy,
    state_digest,
)
from tests.helpers import make_context, make_message, make_reply, train_content

A, B, NORM = "m.conv.lora_A.weight", "m.conv.lora_B.weight", "m.norm.weight"
RANKS = {1: 2, 2: None, 3: 1}  # node -> rank asked (None: the full rank 4)
WEIGHTS = {1: 10, 2: 30, 3: 20}


class _Nodes:
    def get_node_ids(self) -> list[int]:
        return list(RANKS)


def _global() -> OrderedDict:
    rng = np.random.default_rng(0)
    return OrderedDict(
        {
            A: rng.normal(size=(4, 3)).astype(np.float32),
            B: rng.normal(size=(5, 4)).astype(np.float32),
            NORM: rng.normal(size=5).astype(np.float32),
        }
    )


def _rank_tiered(strategy: CompressionStrategy | None = None) -> CompressionStrategy:
    """``strategy`` (FedLoRA by default) over ``RANKS``, composed as
    ``flora_app.strategy_factory`` composes it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    if strategy is None:
        strategy = FedLoRA(fraction_train=1.0, min_available_nodes=1, min_train_nodes=1)
    tiers = RankTiers(strategy.strategy, rank_for_node=RANKS.get, rank_block=rank_block)
    strategy.strategy = tiers
    strategy.set_node_blocks(tiers.node_block)
    return strategy


def _sent(arrays: OrderedDict, node: int) -> OrderedDict:
    """What ``node`` sends of ``arrays``: the leading blocks of its rank."""
    rank = RANKS[node]
    if rank is None:
        return arrays
    return OrderedDict(
        (k, leading_block(v, rank_block(k, v.shape, rank))) for k, v in arrays.items()
    )


def test_each_component_is_the_mean_over_the_nodes_that_trained_it() -> None:
    strategy = _rank_tiered()
    g = _global()
    messages = strategy.configure_train(1, numpy_to_record(g), ConfigRecord({}), _Nodes())
    asked = {m.metadata.dst_node_id: m.content["config"].get(RANK_KEY) for m in messages}
    assert asked == RANKS  # each node is told its rank; the full-rank node is told nothing
    for msg in messages:  # and is sent only the blocks of its rank, in fp32: exactly them
        node = msg.metadata.dst_node_id
        got = record_to_numpy(decode_content(msg.content)["arrays"])
        assert all(np.array_equal(got[k], v) for k, v in _sent(g, node).items())
        assert [v.shape for v in got.values()] == [v.shape for v in _sent(g, node).values()]

    rng = np.random.default_rng(1)
    updates = {}
    for node, rank in RANKS.items():  # what a client sends: zero beyond its rank
        u = {k: rng.normal(size=v.shape) for k, v in g.items()}
        if rank is not None:
            u[A][rank:] = 0.0
            u[B][:, rank:] = 0.0
        updates[node] = u
    replies = [
        make_reply(
            _sent(OrderedDict((k, (g[k] + updates[n][k]).astype(np.float32)) for k in g), n),
            WEIGHTS[n],
            n,
            "fp32",
        )
        for n in RANKS
    ]
    sizes = {m.metadata.src_node_id: len(m.content["arrays"]["payload"].data) for m in replies}
    assert sizes[3] < sizes[1] < sizes[2]  # rank 1 < rank 2 < rank 4: only what they trained
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.take_round_metrics()["rejected_replies"] == 0
    got = record_to_numpy(arrays)

    def covers(node: int, component: int) -> bool:
        return RANKS[node] is None or component < RANKS[node]

    expected_a = g[A].astype(np.float64).copy()
    expected_b = g[B].astype(np.float64).copy()
    for j in range(4):  # by hand: component j over the nodes whose rank reaches it
        nodes = [n for n in RANKS if covers(n, j)]
        total = sum(WEIGHTS[n] for n in nodes)
        expected_a[j] += sum(WEIGHTS[n] * updates[n][A][j] for n in nodes) / total
        expected_b[:, j] += sum(WEIGHTS[n] * updates[n][B][:, j] for n in nodes) / total
    expected_norm = g[NORM] + sum(WEIGHTS[n] * updates[n][NORM] for n in RANKS) / 60
    np.testing.assert_allclose(got[A], expected_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[B], expected_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[NORM], expected_norm, rtol=1e-5, atol=1e-6)
    # component 3 is only node 2's: a plain mean would have cut its update to 30/60
    assert not np.allclose(got[A][3], g[A][3] + 0.5 * updates[2][A][3], atol=1e-3)


def test_with_a_downlink_delta_a_smaller_rank_starts_from_the_origins_blocks() -> None:
    """The first copy a rank-r node gets is the 8-bit change from the leading blocks of the
    origin (which the node cuts from its own), not a coded copy from zeros; it rebuilds the
    blocks of the global round after round, and its replies in blocks are all accepted."""
    origin = _global()
    strategy = _rank_tiered(
        FLoCoRA(
            fraction_train=1.0,
            min_available_nodes=1,
            min_train_nodes=1,
            quant_bits=8,
            quant_bits_down=8,
            downlink_delta=True,
        )
    )
    strategy.set_delta_origin(origin)
    mod = make_compression_mod(origin=lambda context: origin)
    contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in RANKS}
    received: dict[int, OrderedDict] = {}

    def handler(msg: Message, context: Context) -> Message:
        arrays = record_to_numpy(msg.content["arrays"])
        received[context.node_id] = arrays
        trained = OrderedDict((k, v + np.float32(0.01)) for k, v in arrays.items())
        content = RecordDict(
            {"arrays": numpy_to_record(trained), "metrics": MetricRecord({"num-examples": 10})}
        )
        return Message(content=content, reply_to=msg)

    g = origin
    rng = np.random.default_rng(2)
    for server_round in (1, 2, 3):
        g = OrderedDict(
            (k, (v + 0.05 * rng.normal(size=v.shape)).astype(np.float32)) for k, v in g.items()
        )
        messages = list(
            strategy.configure_train(server_round, numpy_to_record(g), ConfigRecord({}), _Nodes())
        )
        if server_round == 1:
            bases = {m.metadata.dst_node_id: read_header(m.content)[DELTA_BASE] for m in messages}
            assert bases == {n: state_digest(_sent(origin, n)) for n in RANKS}
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            delivered = make_message(msg.content, src=0, dst=node, mid=f"m{node}")
            replies.append(mod(delivered, contexts[node], handler))
        assert not any(r.has_error() for r in replies)
        strategy.aggregate_train(server_round, replies)
        assert strategy.take_round_metrics()["rejected_replies"] == 0
        for node, arrays in received.items():  # the blocks of the global, within 8 bits
            want = _sent(g, node)
            assert [v.shape for v in arrays.values()] == [v.shape for v in want.values()]
            assert max(float(np.abs(arrays[k] - want[k]).max()) for k in want) < 0.02


def test_a_reply_with_more_than_its_rank_is_rejected_and_counted() -> None:
    """Node 3 was asked for rank 1 and sends all 4 components: the server refuses it (one
    line naming the shape), counts it, and aggregates the other two replies alone."""
    strategy = _rank_tiered()
    g = _global()
    strategy.configure_train(1, numpy_to_record(g), ConfigRecord({}), _Nodes())
    moved = OrderedDict((k, (v + 1.0).astype(np.float32)) for k, v in g.items())
    replies = [make_reply(_sent(moved, 1), 10, 1, "fp32"), make_reply(moved, 20, 3, "fp32")]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.take_round_metrics()["rejected_replies"] == 1
    got = record_to_numpy(arrays)  # node 1 alone: its rank-2 block moved by 1, the rest kept
    expected_a = g[A].copy()
    expected_a[:2] += 1.0
    np.testing.assert_allclose(got[A], expected_a, rtol=1e-6)
    np.testing.assert_allclose(got[NORM], g[NORM] + 1.0, rtol=1e-6)


def test_a_node_trains_and_sends_only_its_first_components(tiny_run_config: dict) -> None:
    content = train_content(tiny_run_config)
    received = record_to_numpy(content["arrays"])
    config = ConfigRecord({**content["config"], RANK_KEY: 2})
    asked = RecordDict({"arrays": content["arrays"], "config": config})
    reply = train(make_message(asked), make_context(tiny_run_config))
    trained = record_to_numpy(reply.content["arrays"])
    assert list(trained) == list(received)
    blocks = {k: rank_block(k, v.shape, 2) for k, v in received.items()}
    lora = [k for k in received if blocks[k] != received[k].shape]
    assert lora  # A's rows and B's columns beyond rank 2 do not travel
    assert all(trained[k].shape == blocks[k] for k in trained)
    moved = [
        k for k in lora if not np.array_equal(trained[k], leading_block(received[k], blocks[k]))
    ]
    assert moved  # the first components did train

    # Sent only its blocks (as flora's server sends them), it trains exactly the same adapter.
    cut = OrderedDict((k, leading_block(v, blocks[k])) for k, v in received.items())
    asked_blocks = RecordDict({"arrays": numpy_to_record(cut), "config": config})
    again = record_to_numpy(
        train(make_message(asked_blocks), make_context(tiny_run_config)).content["arrays"]
    )
    assert all(np.array_equal(again[k], trained[k]) for k in trained)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"rank-tiers": "0.5:2,0.5:32"}, "expected whole numbers in 1..lora-r"),
        ({"rank-tiers": "0.5:2.5,0.5:16"}, "expected whole numbers"),
        ({"rank-tiers": "0.5:4,0.5:16", "strategy": "fedavg"}, "only LoRA strategies"),
        ({"rank-tiers": "0.5:4,0.5:16", "aggregation": "median"}, "expected 'mean'"),
        ({"rank-tiers": "0.5:4,0.5:16", "dp-noise-multiplier": 1.0}, "sensitivity"),
        ({"rank-tiers": "0.5:4,0.4:16"}, "sum to"),
    ],
)
def test_rank_tiers_are_checked_before_anything_starts(extra: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        FloraConfig.from_run_config(extra)
    assert "rank-tiers" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "strategy",
    [
        {"strategy": "flocora", "quant-bits": 8},
        {"strategy": "flasc", "downlink-delta": True},
    ],
    ids=["flocora", "flasc-downlink-delta"],
)
def test_a_run_with_rank_tiers_trains_every_round(
    tmp_path, tiny_run_config: dict, strategy: dict
) -> None:
    """Every node of the real ClientApp trains the blocks it is sent (whole, or as the top-k
    change from its copy), and every reply in blocks of two sizes, quantized or top-k sparse, is
    accepted."""

    from flora_app.server_app import run
    from tests.helpers import LocalGrid

    config = {
        **tiny_run_config,
        **strategy,
        "rank-tiers": "0.5:1,0.5:4",
        "num-server-rounds": 2,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.5,
        "output-dir": str(tmp_path),
        "run-name": "ranks",
    }
    cfg = FloraConfig.from_run_config(config)
    run(LocalGrid(cfg.to_run_config(), 4), cfg)
    rounds = read_rounds(tmp_path / "ranks")
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["replies"] == 4 and r["failed_replies"] == 0 for r in rounds)
    assert all(r["rejected_replies"] == 0 and r["aggregated_replies"] == 4 for r in rounds)
