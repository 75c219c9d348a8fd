"""The scale benchmark's runs would start: flora's configuration at every size is valid and
samples 10 clients a round, and the floor app takes the same fractions."""

from __future__ import annotations

from pathlib import Path

import pytest

from flora_app.config import FloraConfig
from flora_tools.preflight import app_defaults, parse_run_config, run_config_problem
from flora_tools.scale_bench import FLOOR_APP, PER_ROUND, SIZES, floor_config, flora_config


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
