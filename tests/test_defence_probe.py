"""``flora_tools.defence_probe``: its figures on updates whose answer is known, and round 1's
updates taken from the real ClientApp for the nodes the run samples."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from flora_tools.defence_probe import analyse, folder_table, round_updates
from strategies.node_sampling import sampled_positions


def _updates(rows: np.ndarray) -> list[OrderedDict]:
    return [OrderedDict(a=row[:30].reshape(5, 6), b=row[30:]) for row in rows.astype(np.float32)]


def test_dense_updates_that_agree_let_multi_krum_drop_every_sign_flip() -> None:
    rng = np.random.default_rng(0)
    rows = 1.0 + 0.1 * rng.standard_normal((10, 40))
    figures = analyse(_updates(rows), trim_fraction=0.2, malicious=2, keep=6)
    assert figures["density"] == 1.0 and figures["shared_by"] == 10.0
    assert figures["trimmed_cosine"] > 0.99 and figures["median_cosine"] > 0.99
    assert figures["flip_dropped"] == 1.0
    assert figures["flip_passed"] < 0.2  # the negated values are the extremes trimming cuts


def test_disjoint_sparse_updates_are_trimmed_away_and_their_flips_unseen() -> None:
    rows = np.zeros((10, 40))
    for i in range(10):  # each update its own 4 coordinates, of growing size
        rows[i, 4 * i : 4 * i + 4] = 1.0 + i
    figures = analyse(_updates(rows), trim_fraction=0.2, malicious=2, keep=6)
    assert figures["density"] == pytest.approx(0.1) and figures["shared_by"] == 1.0
    assert figures["trimmed_norm"] == 0.0  # each coordinate's one value is its extreme
    assert figures["median_norm"] == 0.0  # and is outnumbered by the nine zeros
    assert figures["flip_dropped"] == 0.0  # distances do not depend on the signs
    norms = [2.0 * (1.0 + i) for i in range(10)]  # each row's L2 norm
    assert figures["krum_kept_norm"] == pytest.approx(np.mean(norms[:6]) / np.mean(norms))
    assert figures["norm_median"] == pytest.approx(np.median(norms))  # 11
    assert figures["norm_max"] == pytest.approx(20.0)
    # b holds coordinates 30-39: half of row 7's and all of rows 8 and 9, the largest
    in_b = 2 * 8.0**2 + sum(4 * (1.0 + i) ** 2 for i in (8, 9))
    assert figures["top_tensor"] == "b"
    assert figures["top_tensor_share"] == pytest.approx(in_b / sum(n**2 for n in norms))


@pytest.mark.parametrize(("strategy", "density"), [("fedlora", None), ("flasc", 0.1)])
def test_round_updates_come_from_the_sampled_nodes_through_the_codec(
    tiny_run_config: dict, strategy: str, density: float | None
) -> None:
    cfg = {**tiny_run_config, "strategy": strategy, "seed": 3}
    server_round, partitions, updates = round_updates(cfg, supernodes=4)
    assert server_round == 1
    assert partitions == [int(p) for p in sampled_positions(3, 1, "train", 4, 2)]
    assert len(updates) == 2 and updates[0].keys() == updates[1].keys()
    for update in updates:
        flat = np.concatenate([v.ravel() for v in update.values()])
        touched = float(np.mean(flat != 0.0))
        if density is None:
            assert touched > 0.5
        else:
            assert touched == pytest.approx(density, abs=0.01)


def test_a_checkpoint_starts_the_probe_at_the_round_after_it_from_its_global(
    tiny_run_config: dict,
) -> None:
    from flora_app.checkpoint import Checkpoint
    from tests.helpers import global_state

    cfg = {**tiny_run_config, "seed": 3}
    _, initial = global_state(cfg)

    def start(arrays: dict) -> Checkpoint:
        return Checkpoint(
            round=5, global_arrays=arrays, optimizer={}, rounds=[], initial=None, run_config=cfg
        )

    server_round, partitions, from_initial = round_updates(cfg, 4, start(dict(initial)))
    assert server_round == 6
    assert partitions == [int(p) for p in sampled_positions(3, 6, "train", 4, 2)]
    moved = {k: v + np.float32(0.01) for k, v in initial.items()}
    _, same_partitions, from_moved = round_updates(cfg, 4, start(moved))
    assert same_partitions == partitions
    key = next(iter(initial))
    assert not np.allclose(from_moved[0][key], from_initial[0][key])


def test_the_robustness_docs_show_the_committed_probe_results() -> None:
    root = Path(__file__).parent.parent
    results = root / "benchmarks" / "defence-probe"
    assert len(list(results.glob("*.json"))) >= 4
    assert folder_table(results) in (root / "docs" / "robustness.md").read_text()
