"""``chaos-clients``: broken and lying clients in a real in-process run; the server rejects
every spoiled reply, names the node and the reason, counts them, and finishes the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flora_app.chaos import is_broken
from flora_app.config import FloraConfig
from flora_app.results import read_rounds
from flora_app.server_app import run
from tests.helpers import LocalGrid


@pytest.mark.parametrize(
    "strategy",
    [
        {"strategy": "flocora", "quant-bits": 4},
        {"strategy": "flasc", "density-up": 0.3, "density-down": 0.5, "sparse-value-bits": 8},
    ],
    ids=["flocora-4bit", "flasc-8bit-values"],
)
def test_two_chaos_clients_are_rejected_every_round_and_the_run_finishes(
    tmp_path: Path, tiny_run_config: dict, warnings_log: list[str], strategy: dict
) -> None:
    cfg = {
        **tiny_run_config,
        **strategy,
        "num-server-rounds": 3,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.5,
        "chaos-clients": 2,
        "output-dir": str(tmp_path),
        "run-name": "chaos",
    }
    grid = LocalGrid(cfg, 4)
    summary = run(grid, FloraConfig.from_run_config(cfg))
    assert summary["rounds"] == 3
    rounds = read_rounds(tmp_path / "chaos")
    assert [r["rejected_replies"] for r in rounds] == [2, 2, 2]
    assert all(np.isfinite(r["accuracy"]) and np.isfinite(r["loss"]) for r in rounds)
    rejected = [line for line in warnings_log if "rejected" in line]
    assert len(rejected) == 6
    # the broken pair moves on by one partition each round: {0, 1}, {1, 2}, {2, 3}
    for server_round in (1, 2, 3):
        nodes = {
            int(line.split("node ")[1].split()[0])
            for line in rejected
            if line.startswith(f"round {server_round}:")
        }
        expected = {grid.node_ids[server_round - 1], grid.node_ids[server_round % 4]}
        assert nodes == expected, (server_round, nodes, expected)
    # every kind of spoiling happened and was recognised for what it is
    assert any("NaN" in line or "non-finite" in line for line in rejected), rejected
    assert any("bytes" in line for line in rejected), rejected  # truncated payload
    assert any("num-examples = 1000000000" in line for line in rejected), rejected


@pytest.mark.parametrize(
    ("partitions", "chaos", "server_round", "broken"),
    [
        (10, 2, 1, {0, 1}),
        (10, 2, 2, {1, 2}),
        (10, 2, 10, {9, 0}),
        (10, 2, 11, {0, 1}),
        (3, 5, 4, {0, 1, 2}),  # more chaos clients than partitions: all of them
        (0, 2, 7, {0, 1}),  # federation size unknown: the first ones, every round
    ],
)
def test_broken_partitions_rotate_by_round(
    partitions: int, chaos: int, server_round: int, broken: set[int]
) -> None:
    ids = range(partitions or 10)
    assert {p for p in ids if is_broken(p, partitions, chaos, server_round)} == broken
    assert not is_broken(-1, partitions, chaos, server_round)


def test_bad_batchnorm_statistics_are_left_out_of_the_pool(
    tmp_path: Path,
    tiny_run_config: dict,
    warnings_log: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flora_app import client_app

    original = client_app.running_statistics

    def lying(model, spec):  # type: ignore[no-untyped-def]
        stats = original(model, spec)
        name = next(iter(stats))
        stats[name] = np.full_like(stats[name], np.nan)
        return stats

    cfg = {
        **tiny_run_config,
        "model": "resnet8",  # the tiny CNN has no BatchNorm
        "model-width": 4,
        "dataset": "synthetic",
        "synthetic-samples": 200,
        "synthetic-image-size": 8,
        "num-server-rounds": 2,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "output-dir": str(tmp_path),
        "run-name": "bn",
    }
    clean = run(LocalGrid(cfg, 3), FloraConfig.from_run_config(cfg))
    assert not [line for line in warnings_log if "BatchNorm" in line]
    monkeypatch.setattr(client_app, "running_statistics", lying)
    bad_cfg = {**cfg, "run-name": "bn2"}
    bad = run(LocalGrid(bad_cfg, 3), FloraConfig.from_run_config(bad_cfg))
    assert bad["rounds"] == 2 and np.isfinite(bad["final_loss"])
    assert len([line for line in warnings_log if "BatchNorm statistics from node" in line]) == 6
    assert clean["rounds"] == 2
