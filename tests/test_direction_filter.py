"""The median-direction filter (``min-update-cosine``): it drops the replies whose update points
away from the round's median update, and the rest aggregate exactly as without it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from flora_app.config import ConfigError, FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from strategies import FLASC, FedLoRA, FLoCoRA
from strategies.chain import strategy_chain, take_round_metrics
from strategies.compression import CompressionStrategy
from strategies.direction_filter import (
    MedianDirectionFilter,
    median_cosines,
    tensor_median_cosines,
)
from strategies.wire import numpy_to_record, record_to_numpy
from tests.helpers import LocalGrid, make_arrays, make_reply, send_round

ONE_NODE = {"fraction_evaluate": 0.1, "min_available_nodes": 1, "min_train_nodes": 1}
BUILDERS: dict[str, Callable[..., CompressionStrategy]] = {
    "fedlora": lambda **kw: FedLoRA(**ONE_NODE, **kw),
    "flocora-q4": lambda **kw: FLoCoRA(quant_bits=4, **ONE_NODE, **kw),
    "flasc-adam": lambda **kw: FLASC(density_up=0.5, density_down=1.0, **ONE_NODE, **kw),
}
DENSE = make_arrays(0)


def _honest(node: int) -> OrderedDict:
    """Non-IID but agreeing: a shared direction plus a node's own noise."""
    shared, own = make_arrays(1, scale=0.1), make_arrays(100 + node, scale=0.05)
    return OrderedDict((k, shared[k] + own[k]) for k in shared)


def _reply(strategy: CompressionStrategy, update: OrderedDict, node: int):
    """What ``node`` sends for ``update`` in its strategy's reply mode and uplink codec."""
    if strategy.reply == "update":
        return make_reply(update, 10 + node, node, strategy.uplink, mode="update")
    weights = OrderedDict((k, DENSE[k] + update[k]) for k in DENSE)
    return make_reply(weights, 10 + node, node, strategy.uplink)


def _aggregate(strategy: CompressionStrategy, updates: dict[int, OrderedDict]) -> dict:
    send_round(strategy, DENSE)
    arrays, _ = strategy.aggregate_train(
        1, [_reply(strategy, u, node) for node, u in updates.items()]
    )
    assert arrays is not None
    return record_to_numpy(arrays)


def _flipped(update: OrderedDict) -> OrderedDict:
    return OrderedDict((k, -v) for k, v in update.items())


def test_only_the_rows_against_the_median_have_a_negative_cosine() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(size=50)
    rows = np.stack([shared + rng.normal(scale=0.5, size=50) for _ in range(5)])
    rows = np.vstack([rows, -rows[0], 10 * rows[1]])
    cosines = median_cosines(rows)
    median = np.median(rows, axis=0)
    expected = rows @ median / (np.linalg.norm(rows, axis=1) * np.linalg.norm(median))
    np.testing.assert_allclose(cosines, expected, rtol=1e-6)
    assert (cosines[[0, 1, 2, 3, 4, 6]] > 0.5).all() and cosines[5] < -0.5
    assert cosines[6] == pytest.approx(cosines[1])  # scaling is not a change of direction


def test_tensor_scope_is_the_median_of_each_tensors_cosine() -> None:
    rng = np.random.default_rng(1)
    sizes = [7, 3, 20, 5]
    rows = rng.normal(size=(6, sum(sizes)))
    rows[:, 7:10] = 0.0  # a tensor no reply changed: its median is zero, it says nothing
    rows[2, 10:30] = 0.0  # a sparse reply that sent none of this tensor: it says nothing of it
    rows[5, :] = 0.0  # nothing sent at all: no direction
    got = tensor_median_cosines(rows, sizes)
    median = np.median(rows, axis=0)
    want = []
    for row in rows[:5]:
        cosines, start = [], 0
        for size in sizes:
            block, ref = row[start : start + size], median[start : start + size]
            if np.linalg.norm(ref) > 0 and np.linalg.norm(block) > 0:
                cosines.append(block @ ref / (np.linalg.norm(block) * np.linalg.norm(ref)))
            start += size
        want.append(np.median(cosines))
    np.testing.assert_allclose(got, [*want, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(tensor_median_cosines(np.zeros((4, 9)), [4, 5]), np.ones(4))


def _against_its_head(node: int) -> OrderedDict:
    """An honest update whose largest tensor, ``a`` (108 of its 143 values), points against
    the others' and is 1.5 times as long, as a non-IID node's classifier head can (a sparse
    uplink then still sends some of its other tensors)."""
    update = _honest(node)
    update["a"] = -1.5 * update["a"]
    return update


@pytest.mark.parametrize("name", BUILDERS)
def test_per_tensor_the_flip_of_an_update_against_its_head_is_dropped(name: str) -> None:
    """Flipped, that update points along the others in its largest tensor and against them in
    the rest: over the whole update its cosine is positive and it passes; tensor by tensor it
    is negative in two of three and dropped, and the rest aggregate exactly."""
    honest = {node: _honest(node) for node in range(1, 5)}
    attacked = {**honest, 5: _flipped(_against_its_head(5))}
    whole = BUILDERS[name](min_update_cosine=0.0)
    _aggregate(whole, attacked)
    assert take_round_metrics(whole)["outlier_replies"] == 0
    per_tensor = BUILDERS[name](min_update_cosine=0.0, update_cosine_scope="tensor")
    got = _aggregate(per_tensor, attacked)
    want = _aggregate(BUILDERS[name](), honest)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert take_round_metrics(per_tensor)["outlier_replies"] == 1


@pytest.mark.parametrize("name", BUILDERS)
def test_a_flipped_reply_is_dropped_and_the_rest_aggregate_exactly(name: str) -> None:
    honest = {node: _honest(node) for node in range(1, 5)}
    filtered = BUILDERS[name](min_update_cosine=0.0)
    got = _aggregate(filtered, {**honest, 5: _flipped(_honest(5))})
    want = _aggregate(BUILDERS[name](), honest)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    metrics = take_round_metrics(filtered)
    assert metrics["outlier_replies"] == 1 and metrics["aggregated_replies"] == 4


@pytest.mark.parametrize("name", BUILDERS)
def test_with_every_update_along_the_median_the_filter_changes_nothing(name: str) -> None:
    honest = {node: _honest(node) for node in range(1, 6)}
    filtered = BUILDERS[name](min_update_cosine=0.0)
    got = _aggregate(filtered, honest)
    want = _aggregate(BUILDERS[name](), honest)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert take_round_metrics(filtered)["outlier_replies"] == 0


def test_two_replies_give_no_median_to_judge_by() -> None:
    filtered = FedLoRA(min_update_cosine=0.0, **ONE_NODE)
    _aggregate(filtered, {1: _honest(1), 2: _flipped(_honest(2))})
    metrics = take_round_metrics(filtered)
    assert metrics["outlier_replies"] == 0 and metrics["aggregated_replies"] == 2


def test_a_warning_names_the_node_and_its_cosine(warnings_log: list[str]) -> None:
    filtered = FedLoRA(min_update_cosine=0.0, **ONE_NODE)
    _aggregate(filtered, {1: _honest(1), 2: _honest(2), 3: _flipped(_honest(3))})
    (line,) = [w for w in warnings_log if "cosine" in w]
    assert line.startswith("round 1: reply from node 3 rejected: update's cosine -")
    assert line.endswith("below min-update-cosine 0")


class _TenNodes:
    def get_node_ids(self) -> list[int]:
        return list(range(1, 11))


def test_over_selection_fills_an_outliers_place() -> None:
    """Target 3 of 10 nodes, 6 sampled: the flipped second node's place goes to the fourth."""
    from flwr.supercore.task_identity import TaskIdentity

    sampling = {"fraction_train": 0.3, "min_available_nodes": 1, "min_train_nodes": 1}
    strategy = FedLoRA(min_update_cosine=0.0, over_selection=1.0, seed=3, **sampling)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    messages = strategy.configure_train(
        1, numpy_to_record(DENSE), ConfigRecord({"lr": 0.1}), _TenNodes()
    )
    order = [m.metadata.dst_node_id for m in messages]
    assert len(order) == 6
    flipped = order[1]
    updates = {n: _flipped(_honest(n)) if n == flipped else _honest(n) for n in order}
    arrays, _ = strategy.aggregate_train(1, [_reply(strategy, updates[n], n) for n in order])
    used = [n for n in order if n != flipped][:3]
    want = _aggregate(FedLoRA(**ONE_NODE), {n: updates[n] for n in used})
    got = record_to_numpy(arrays)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    metrics = take_round_metrics(strategy)
    assert metrics["outlier_replies"] == 1
    assert metrics["aggregated_replies"] == 3 and metrics["spare_replies"] == 2


def test_off_by_default_and_bounds_checked() -> None:
    assert not any(isinstance(p, MedianDirectionFilter) for p in strategy_chain(FedLoRA()))
    assert any(
        isinstance(p, MedianDirectionFilter)
        for p in strategy_chain(FLoCoRA(quant_bits=4, min_update_cosine=0.0))
    )
    for bad in (-1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_cosine = "):
            MedianDirectionFilter(FedAvg(), min_cosine=bad)
    with pytest.raises(ValueError, match="min_update_cosine"):
        FedLoRA(min_update_cosine=0.0, dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="scope = 'layer': expected one of global, tensor"):
        MedianDirectionFilter(FedAvg(), min_cosine=0.0, scope="layer")


@pytest.mark.parametrize("value", [-1.5, 1.01, "zero"])
def test_a_bad_run_config_value_is_one_line_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="'min-update-cosine'") as caught:
        FloraConfig.from_run_config({"min-update-cosine": value})
    assert "\n" not in str(caught.value)


def test_a_bad_scope_is_one_line_naming_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'update-cosine-scope'.*global.*tensor") as caught:
        FloraConfig.from_run_config({"update-cosine-scope": "layer"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("strategy", "scope"), [("fedlora", "global"), ("flasc", "global"), ("flasc", "tensor")]
)
def test_the_real_apps_sign_flipping_node_is_dropped_every_round(
    tmp_path: Path, tiny_run_config: dict, strategy: str, scope: str
) -> None:
    """Real ServerApp and ClientApps in-process: 5 nodes, all sampled, partition 0 flips its
    update; every round drops exactly it, and no honest node."""
    cfg = {
        **tiny_run_config,
        "strategy": strategy,
        "num-server-rounds": 3,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.4,
        "byzantine-clients": 1,
        "attack": "sign-flip",
        "min-update-cosine": 0.0,
        "update-cosine-scope": scope,
        "output-dir": str(tmp_path),
        "run-name": "flip",
    }
    run(LocalGrid(cfg, 5), FloraConfig.from_run_config(cfg))
    rounds = read_rounds(tmp_path / "flip")
    assert [r["outlier_replies"] for r in rounds] == [1, 1, 1]
    assert [r["aggregated_replies"] for r in rounds] == [4, 4, 4]
