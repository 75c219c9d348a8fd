"""Run-config validation: defaults load, every bad value fails with one clear line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flora_app.config import ConfigError, FloraConfig

DEFAULTS = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"][
    "flwr"
]["app"]["config"]


def test_pyproject_defaults_are_valid_and_complete() -> None:
    cfg = FloraConfig.from_run_config(DEFAULTS)
    assert set(cfg.to_run_config()) == set(DEFAULTS)  # every key is documented and typed
    assert cfg.strategy == "fedlora" and cfg.dataset == "digits" and cfg.model == "resnet8"


def test_integers_are_accepted_where_numbers_are_meant() -> None:
    assert FloraConfig.from_run_config({**DEFAULTS, "lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("strategy", "fedsgd", "expected one of fedavg, fedlora"),
        ("model", "vit", "expected one of resnet8, resnet18, cnn"),
        ("dataset", "mnist", "expected one of digits, cifar10, synthetic"),
        ("partitioner", "pathological", "expected one of iid, dirichlet"),
        ("lora-r", 0, "expected an integer >= 1"),
        ("fraction-train", 0.0, "(0.0, 1.0]"),
        ("fraction-train", 1.5, "(0.0, 1.0]"),
        ("lr", -0.1, "expected a number > 0"),
        ("lr", float("nan"), "expected a number > 0"),
        ("num-server-rounds", 0, ">= 1"),
        ("local-epochs", 2.5, "expected an integer"),
        ("lora-train-norm", "yes", "expected true or false"),
        ("dirichlet-alpha", 0, "expected a number > 0"),
        ("momentum", 1.0, "[0.0, 1.0)"),
        ("fraction-evaluate", 0.0, "BatchNorm statistics"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(key, value, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        FloraConfig.from_run_config({**DEFAULTS, key: value})
    message = str(info.value)
    assert f"'{key}'" in message and fragment in message and "\n" not in message


def test_serverapp_ends_a_misconfigured_run_before_training() -> None:
    from flwr.app import Context, RecordDict

    from flora_app.server_app import main

    context = Context(1, 0, {}, RecordDict(), {**DEFAULTS, "strategy": "nope"})
    with pytest.raises(ConfigError, match="run-config 'strategy' = 'nope'"):
        main(grid=None, context=context)  # never reaches the grid


def test_readme_configuration_table_matches_the_defaults() -> None:
    """The README documents every key with its real default (keeps the README true)."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    rows: dict[str, str] = {}
    for key, value in re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", table, flags=re.MULTILINE):
        rows.setdefault(key, value)
    for key, default in DEFAULTS.items():
        assert key in rows, f"README configuration table lacks {key!r}"
        shown = rows[key].strip().strip("`")
        if isinstance(default, float):
            assert float(shown) == default, f"{key}: README says {shown}, pyproject {default}"
            continue
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        assert shown.strip('"') == expected, f"{key}: README says {shown}, pyproject {default}"


def test_every_strategy_setting_is_a_run_config_key() -> None:
    from dataclasses import fields

    from strategies.presets import StrategySettings

    cfg = FloraConfig.from_run_config({**DEFAULTS, "quant-bits": 2, "server-lr": 0.5})
    settings = cfg.strategy_settings
    for f in fields(StrategySettings):
        assert f.name.replace("_", "-") in DEFAULTS
        assert getattr(settings, f.name) == getattr(cfg, f.name)
    assert settings.quant_bits == 2 and settings.server_lr == 0.5
