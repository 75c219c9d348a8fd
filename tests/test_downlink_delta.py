"""``downlink-delta``: each training node receives the coded change from the copy it holds.

Driven through the real strategy and the real client mod, with a handler that moves the
received adapters a little (no model), so many rounds with sampled nodes stay fast; one real
run at the end goes through the ClientApp.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flora_app.client_app import initial_adapters
from flora_app.config import FloraConfig
from flora_app.ml.data import load_dataset
from flora_app.ml.lora import build_trainable, exchanged_state
from flora_app.results import read_rounds
from flora_app.server_app import run
from flora_app.task import data_spec, model_spec
from strategies.codecs import CodecError, codec_spec
from strategies.compression import CompressionStrategy
from strategies.mod import HELD_KEY, compression_mod, make_compression_mod
from strategies.wire import (
    DELTA_BASE,
    numpy_to_record,
    read_header,
    record_to_numpy,
    state_digest,
)
from tests.helpers import LocalGrid, make_arrays, make_message

Q4, Q2 = codec_spec(4), codec_spec(2)
NODES = [11, 12, 13, 14, 15, 16]


class Nodes:
    """Just enough of a Grid for FedAvg's sampling, and the nodes' own contexts; ``origins``:
    what each node can rebuild before its first message (none: no origin)."""

    def __init__(self, origins: dict[int, OrderedDict[str, np.ndarray]] | None = None) -> None:
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in NODES}
        self.received: dict[int, OrderedDict[str, np.ndarray]] = {}
        self.mods = {
            n: compression_mod
            if origins is None
            else make_compression_mod(origin=lambda context, n=n: origins[n])
            for n in NODES
        }

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def handler(self, node: int):
        def train(msg: Message, context: Context) -> Message:
            received = record_to_numpy(msg.content["arrays"])
            self.received[node] = received
            trained = OrderedDict((k, v + np.float32(0.01)) for k, v in received.items())
            content = RecordDict(
                {
                    "arrays": numpy_to_record(trained),
                    "metrics": MetricRecord({"num-examples": 10}),
                }
            )
            return Message(content=content, reply_to=msg)

        return train

    def deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        delivered = make_message(msg.content, src=0, dst=node, mid=f"m{node}")
        try:
            reply = self.mods[node](delivered, self.contexts[node], self.handler(node))
        except CodecError as exc:  # what Flower's ClientApp makes of a raised exception
            reply = Message(Error(code=1, reason=str(exc)), reply_to=delivered)
        return reply


def _rounds(
    strategy: CompressionStrategy,
    nodes: Nodes,
    rounds: int,
    drift: float = 0.05,
    start: OrderedDict[str, np.ndarray] | None = None,
):
    """The global adapters take a random step each round from ``start``; yields (sampled
    nodes, global, the messages, the replies)."""
    rng = np.random.default_rng(0)
    global_arrays = make_arrays(0) if start is None else start
    for server_round in range(1, rounds + 1):
        global_arrays = OrderedDict(
            (k, (v + drift * rng.normal(size=v.shape)).astype(np.float32))
            for k, v in global_arrays.items()
        )
        messages = list(
            strategy.configure_train(
                server_round, numpy_to_record(global_arrays), ConfigRecord({}), nodes
            )
        )
        replies = [nodes.deliver(m) for m in messages]
        strategy.aggregate_train(server_round, replies)
        yield [m.metadata.dst_node_id for m in messages], global_arrays, messages, replies


def _strategy(downlink: str, delta: bool = True) -> CompressionStrategy:
    inner = FedAvg(fraction_train=0.5, min_train_nodes=2, min_available_nodes=2)
    return CompressionStrategy(inner, downlink, "fp32", reply="update", downlink_delta=delta)


def _max_error(a: OrderedDict, b: OrderedDict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_every_node_rebuilds_the_servers_mirror_bit_for_bit_across_missed_rounds() -> None:
    strategy, nodes = _strategy(Q4), Nodes()
    missed = set()
    for sampled, _, _, replies in _rounds(strategy, nodes, rounds=8):
        assert not any(r.has_error() for r in replies)
        missed |= set(NODES) - set(sampled)
        for node in sampled:
            held = record_to_numpy(nodes.contexts[node].state[HELD_KEY])
            assert state_digest(held) == state_digest(strategy._mirrors[node])
            # what the handler trained from is that copy
            assert state_digest(nodes.received[node]) == state_digest(held)
    assert missed & set(strategy._mirrors)  # some node came back after missing rounds


def test_the_change_loses_less_than_a_coded_copy_at_the_same_bits() -> None:
    errors = {}
    for delta in (True, False):
        strategy, nodes = _strategy(Q2, delta), Nodes()
        worst = []
        for sampled, global_arrays, _, _ in _rounds(strategy, nodes, rounds=8, drift=0.02):
            worst += [_max_error(nodes.received[n], global_arrays) for n in sampled]
        errors[delta] = worst
    # Round 1 is a full copy either way; later, each node's change spans its drift, not the
    # whole range of the adapters, and last time's coding error is sent again with it.
    assert errors[True][0] == errors[False][0]
    assert max(errors[True][-4:]) < 0.5 * min(errors[False][-4:]), errors


def test_a_lossless_change_leaves_each_copy_within_float32_rounding() -> None:
    strategy, nodes = _strategy("fp32"), Nodes()
    for sampled, global_arrays, _, _ in _rounds(strategy, nodes, rounds=6):
        for node in sampled:
            got = nodes.received[node]
            for k, v in global_arrays.items():
                # one float32 rounding of the change and one of the sum: the change can be as
                # large as the tensor's largest entries, so that is the scale of the rounding
                scale = np.float32(max(np.abs(v).max(), np.abs(got[k]).max()))
                assert np.abs(got[k] - v).max() <= 4 * np.spacing(scale)


def test_a_node_that_lost_its_copy_refuses_the_change_then_gets_a_full_copy() -> None:
    strategy, nodes = _strategy(Q4), Nodes()
    node, history = None, []
    for sampled, _, messages, replies in _rounds(strategy, nodes, rounds=60):
        if node is None:  # after its first (full) copy, the node restarts and loses it
            node = sampled[0]
            nodes.contexts[node] = Context(1, node, {}, RecordDict(), {})
            continue
        if node in sampled:
            i = sampled.index(node)
            reason = replies[i].error.reason if replies[i].has_error() else None
            history.append((read_header(messages[i].content)[DELTA_BASE], reason))
            if len(history) == 2:
                break
    (base, refusal), (then, answer) = history
    assert base != "" and "does not hold the copy" in refusal
    assert then == "" and answer is None  # the server dropped its mirror: a full copy


def test_a_node_sampled_for_the_first_time_gets_the_change_from_the_origin() -> None:
    """Cross-device rounds sample mostly new nodes: from the origin (the initial adapters both
    sides rebuild), their first copy loses as little as any later change, where a full copy at
    2 bits would lose the origin's values; every copy stays the server's mirror bit for bit."""
    origin = make_arrays(0)
    errors = {}
    for with_origin in (True, False):
        strategy = _strategy(Q2)
        if with_origin:
            strategy.set_delta_origin(origin)
        nodes = Nodes({n: origin for n in NODES} if with_origin else None)
        first, seen = [], set()
        for sampled, global_arrays, messages, replies in _rounds(
            strategy, nodes, rounds=6, drift=0.02, start=origin
        ):
            assert not any(r.has_error() for r in replies)
            for node, msg in zip(sampled, messages, strict=True):
                held = record_to_numpy(nodes.contexts[node].state[HELD_KEY])
                assert state_digest(held) == state_digest(strategy._mirrors[node])
                if node not in seen:
                    base = read_header(msg.content)[DELTA_BASE]
                    assert base == (state_digest(origin) if with_origin else "")
                    first.append(_max_error(held, global_arrays))
                    # what the server scores as a new node's copy is what it rebuilt
                    if len(seen) == 0:
                        assert state_digest(strategy.first_copy(global_arrays)) == (
                            state_digest(held)
                        )
                seen.add(node)
        errors[with_origin] = first
    assert max(errors[True]) < 0.2 * min(errors[False]), errors


def test_a_node_whose_origin_differs_refuses_then_gets_the_change_from_zeros() -> None:
    origin = make_arrays(0)
    strategy = _strategy(Q4)
    strategy.set_delta_origin(origin)
    other = OrderedDict((k, v + np.float32(1e-3)) for k, v in origin.items())
    nodes = Nodes({n: (other if n == NODES[0] else origin) for n in NODES})
    history = []
    for sampled, _, messages, replies in _rounds(strategy, nodes, rounds=40, start=origin):
        if NODES[0] in sampled:
            i = sampled.index(NODES[0])
            reason = replies[i].error.reason if replies[i].has_error() else None
            history.append((read_header(messages[i].content)[DELTA_BASE], reason))
            if len(history) == 2:
                break
    (base, refusal), (then, answer) = history
    assert base == state_digest(origin) and "initial adapters differ" in refusal
    assert then == "" and answer is None


def test_a_run_with_the_downlink_change_trains_through_the_client_app(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    base = {
        **tiny_run_config,
        "strategy": "flocora",
        "quant-bits": 4,
        "quant-bits-down": 2,
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "output-dir": str(tmp_path),
    }
    for delta in (False, True):
        cfg = FloraConfig.from_run_config(
            {**base, "downlink-delta": delta, "run-name": f"delta-{delta}"}
        )
        grid = LocalGrid(cfg.to_run_config(), 4)
        run(grid, cfg)
        rounds = read_rounds(tmp_path / f"delta-{delta}")
        assert all(r["failed_replies"] == 0 and r["rejected_replies"] == 0 for r in rounds)
        assert all(0.0 < r["eval_seconds"] <= r["seconds"] for r in rounds)
        held = [c.state.get(HELD_KEY) for c in grid.contexts.values()]
        assert any(h is not None for h in held) == delta  # only the change is kept on nodes
        if delta:  # the ClientApp rebuilt the server's initial adapters: no node refused
            assert sum(r["clients"] for r in rounds) == sum(r["replies"] for r in rounds)
            spec = model_spec(cfg, load_dataset(data_spec(cfg)).info)
            server_origin = state_digest(exchanged_state(build_trainable(spec), spec))
            for context in grid.contexts.values():
                assert state_digest(initial_adapters(context)) == server_origin
