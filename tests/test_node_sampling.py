"""Node sampling: each round's sample is a function of the seed and the round alone, whatever
else draws from Python's global ``random``; ``over-selection`` samples more nodes than
``fraction-train`` asks for and aggregates exactly the first ``fraction-train``'s worth of valid
replies in sampling order, whatever was rejected."""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from flora_app.config import ConfigError, FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from strategies import FLASC, FedLoRA, FLoCoRA, NodeSampling
from strategies.chain import innermost, take_round_metrics
from strategies.codecs import codec_spec
from strategies.compression import CompressionStrategy
from strategies.wire import numpy_to_record, record_to_numpy
from tests.helpers import LocalGrid, bad_reply, make_arrays, make_content, make_message

Q4 = codec_spec(4)


class _Grid:
    """Enough of a Grid for Flower's sampling: ten connected nodes."""

    def get_node_ids(self) -> list[int]:
        return list(range(100, 110))


def _configure(
    strategy: CompressionStrategy,
    global_arrays: OrderedDict,
    server_round: int = 1,
    kind: str = "train",
) -> list[int]:
    """Run the real configure_train (or _evaluate); the node ids it sampled, in order."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    configure = getattr(strategy, f"configure_{kind}")
    messages = configure(
        server_round, numpy_to_record(global_arrays), ConfigRecord({"lr": 0.1}), _Grid()
    )
    return [m.metadata.dst_node_id for m in messages]


def _strategy(over_selection: float, seed: int = 0) -> CompressionStrategy:
    inner = FedAvg(
        fraction_train=0.3,
        fraction_evaluate=0.5,
        min_available_nodes=1,
        min_train_nodes=1,
        min_evaluate_nodes=1,
    )
    sampling = NodeSampling(inner, seed=seed, over_selection=over_selection)
    return CompressionStrategy(sampling, "fp32", Q4)


def _samples(seed: int, rounds: int = 6) -> list[tuple[list[int], list[int]]]:
    strategy = _strategy(0.0, seed)
    return [
        (
            _configure(strategy, make_arrays(0), r),
            _configure(strategy, make_arrays(0), r, "evaluate"),
        )
        for r in range(1, rounds + 1)
    ]


def test_the_sample_follows_the_seed_not_the_global_random() -> None:
    """Flower's heartbeat thread draws from the global ``random`` at times that depend on load;
    here a thread draws from it without pause while the rounds are sampled."""
    random.seed(1)
    quiet = _samples(seed=5)
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        random.seed(2)
        busy = _samples(seed=5)
    finally:
        stop.set()
        thread.join()
    assert busy == quiet
    assert all(len(t) == 3 and len(e) == 5 for t, e in quiet)  # fractions 0.3 and 0.5 of 10
    assert len({tuple(t) for t, _ in quiet}) > 1  # rounds differ from one another
    assert _samples(seed=6) != quiet  # and so do seeds


def test_a_resumed_run_samples_what_the_whole_run_samples() -> None:
    """No generator state to restore: round r's sample depends on the seed and r only."""
    whole = _samples(seed=9, rounds=5)
    strategy = _strategy(0.0, 9)
    resumed = [
        (
            _configure(strategy, make_arrays(0), r),
            _configure(strategy, make_arrays(0), r, "evaluate"),
        )
        for r in (4, 5)
    ]
    assert resumed == whole[3:]


def test_sampling_leaves_the_inner_strategy_s_settings_alone() -> None:
    strategy = _strategy(1.0)
    _configure(strategy, make_arrays(0))
    _configure(strategy, make_arrays(0), kind="evaluate")
    inner = innermost(strategy)
    assert (inner.fraction_train, inner.fraction_evaluate, inner.min_available_nodes) == (
        0.3,
        0.5,
        1,
    )


@pytest.mark.parametrize("build", [FedLoRA, FLoCoRA, FLASC])
def test_each_strategy_passes_its_seed_to_the_sampling(build: type) -> None:
    strategy = build(fraction_train=0.3, min_available_nodes=1, seed=11)
    assert strategy.strategy.seed == 11  # type: ignore[attr-defined]
    assert isinstance(strategy.strategy, NodeSampling)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_a_bad_seed_is_refused_with_its_value(seed: object) -> None:
    with pytest.raises(ValueError, match="seed = "):
        NodeSampling(FedAvg(), seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize(("over", "sampled"), [(0.0, 3), (0.4, 4), (1.0, 6), (5.0, 10)])
def test_over_selection_enlarges_the_sample_and_restores_the_fraction(
    over: float, sampled: int
) -> None:
    strategy = _strategy(over)
    nodes = _configure(strategy, make_arrays(0))
    assert len(nodes) == len(set(nodes)) == sampled
    assert innermost(strategy).fraction_train == 0.3  # the inner strategy's own setting is kept


def test_the_first_valid_replies_in_sampling_order_are_aggregated_exactly(
    warnings_log: list[str],
) -> None:
    strategy = _strategy(1.0)  # target 3 of 10, sample 6
    order = _configure(strategy, make_arrays(0))
    assert len(order) == 6
    updates = {node: make_arrays(node) for node in order}
    examples = {node: 10 + i for i, node in enumerate(order)}
    bad = {order[1]}  # the second sampled node lies; the 4th in order fills its place
    replies = [
        make_message(
            bad_reply("truncated", Q4)
            if node in bad
            else make_content(updates[node], {"num-examples": examples[node]}, Q4),
            src=node,
        )
        for node in reversed(order)  # arrival order must not matter
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    used = [node for node in order if node not in bad][:3]

    reference = _strategy(0.0)
    _configure(reference, make_arrays(0))
    expected, _ = reference.aggregate_train(
        1,
        [
            make_message(make_content(updates[n], {"num-examples": examples[n]}, Q4), src=n)
            for n in reversed(order)  # Flower sums in arrival order; so does the reference
            if n in used
        ],
    )
    got, want = record_to_numpy(arrays), record_to_numpy(expected)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    metrics = take_round_metrics(strategy)
    assert metrics["rejected_replies"] == 1
    assert metrics["aggregated_replies"] == 3
    assert metrics["spare_replies"] == 2


def test_without_over_selection_every_valid_reply_is_aggregated() -> None:
    strategy = _strategy(0.0)
    order = _configure(strategy, make_arrays(0))
    replies = [
        make_message(make_content(make_arrays(n), {"num-examples": 5}, Q4), src=n) for n in order
    ]
    strategy.aggregate_train(1, replies)
    metrics = take_round_metrics(strategy)
    assert metrics["aggregated_replies"] == 3 and "spare_replies" not in metrics


def test_a_round_keeps_its_participation_with_a_chaos_client(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    """Real ClientApp in-process: 4 nodes, target 2, sample 4, one spoiled reply per round."""
    cfg = {
        **tiny_run_config,
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "over-selection": 1.0,
        "chaos-clients": 1,
        "output-dir": str(tmp_path),
        "run-name": "over",
    }
    summary = run(LocalGrid(cfg, 4), FloraConfig.from_run_config(cfg))
    assert summary["rounds"] == 3
    rounds = read_rounds(tmp_path / "over")
    assert [r["clients"] for r in rounds] == [4, 4, 4]
    assert [r["rejected_replies"] for r in rounds] == [1, 1, 1]
    assert [r["aggregated_replies"] for r in rounds] == [2, 2, 2]
    assert [r["spare_replies"] for r in rounds] == [1, 1, 1]


@pytest.mark.parametrize("value", [-0.1, 11.0])
def test_out_of_range_over_selection_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match="'over-selection'"):
        FloraConfig.from_run_config({"over-selection": value})


def test_the_progress_line_reports_a_round_that_lost_replies() -> None:
    from flora_app.results import progress_line

    base = {
        "round": 3,
        "rounds_total": 20,
        "accuracy": 0.9,
        "loss": 0.3,
        "bytes_up": 1e6,
        "bytes_down": 2e6,
        "seconds": 1.5,
        "failed_replies": 0.0,
        "aggregated_replies": 5.0,
    }
    clean = progress_line({**base, "rejected_replies": 0.0}, [])
    assert "replies" not in clean
    lossy = progress_line({**base, "rejected_replies": 2.0, "spare_replies": 1.0}, [])
    assert lossy == clean + " | replies: 5 used, 2 rejected, 0 failed, 1 spare"
    filtered = progress_line({**base, "rejected_replies": 0.0, "outlier_replies": 2.0}, [])
    assert filtered == clean + " | replies: 5 used, 0 rejected, 2 outlier, 0 failed, 0 spare"
