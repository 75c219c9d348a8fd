"""The scale benchmark's runs would start: flora's configuration at every size is valid and
samples 10 clients a round, and the floor app takes the same fractions."""

from __future__ import annotations

from pathlib import Path

import pytest

from flora_app.config import FloraConfig
from flora_tools.preflight import app_defaults, parse_run_config, run_config_problem
from flora_tools.scale_bench import FLOOR_APP, PER_ROUND, SIZES, floor_config, flora_config, table


@pytest.mark.parametrize("supernodes", SIZES)
def test_every_size_would_start_with_ten_clients_a_round(supernodes: int, tmp_path: Path) -> None:
    keys = parse_run_config(flora_config(supernodes, tmp_path))
    assert run_config_problem(keys) is None
    cfg = FloraConfig.from_run_config({**app_defaults(), **keys})
    assert int(supernodes * cfg.run.fraction_train) == PER_ROUND
    assert cfg.data.synthetic_samples >= supernodes  # a sample for every partition
    floor = parse_run_config(floor_config(supernodes, tmp_path))
    assert set(floor) <= set(app_defaults(FLOOR_APP))  # keys the floor app knows
    assert floor["fraction-train"] == cfg.run.fraction_train


def test_the_table_sets_each_size_against_the_smallest_with_and_without_central_scoring() -> None:
    rows = {
        100: {"flora_s": 0.5, "flora_federation_s": 0.4, "flora_gb": 2.0, "floor_s": 0.4,
              "floor_gb": 1.0},
        10_000: {"flora_s": 1.5, "flora_federation_s": 0.6, "flora_gb": 2.5, "floor_s": 0.6,
                 "floor_gb": 1.5},
    }  # fmt: skip
    lines = table(rows).splitlines()
    assert lines[0].count("|") == lines[2].count("|") == 11
    assert lines[2].startswith("| 100 | 0.50 | 1.00x | 0.40 | 1.00x | 2.00 | 1.00x | 0.40 | 1.00x")
    assert lines[3] == (
        "| 10,000 | 1.50 | 3.00x | 0.60 | 1.50x | 2.50 | 1.25x | 0.60 | 1.50x | 1.50 |"
    )
