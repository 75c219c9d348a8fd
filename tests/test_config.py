"""Run-config validation: defaults load, every bad value fails with one clear line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flora_app.config import ConfigError, FloraConfig
from strategies.chain import innermost
from strategies.codecs import get_codec

DEFAULTS = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"][
    "flwr"
]["app"]["config"]


def test_pyproject_defaults_are_valid_and_complete() -> None:
    cfg = FloraConfig.from_run_config(DEFAULTS)
    assert set(cfg.to_run_config()) == set(DEFAULTS)  # every key is documented and typed
    assert cfg.run.strategy == "fedlora" and cfg.data.dataset == "digits"
    assert cfg.model.model == "resnet8" and cfg.use_lora


def test_integers_are_accepted_where_numbers_are_meant() -> None:
    assert FloraConfig.from_run_config({**DEFAULTS, "lr": 1}).training.lr == 1.0


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
        ("pretrained", "yes", "expected true or false"),
        ("lora-mode", "all", "expected one of lora, lora-norm, lora-norm-head, full-stem"),
        ("norm", "layer", "expected one of batch, group"),
        ("pretrained", True, "has no pretrained weights"),
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


def test_configuration_reference_is_generated_from_the_config_definitions() -> None:
    """docs/configuration.md is exactly what the config definitions render (cannot drift)."""
    from flora_tools.config_reference import TARGET, render

    assert TARGET.read_text() == render(), "run python -m flora_tools.config_reference"
    for key in DEFAULTS:
        assert f"| `{key}` |" in render()


def test_pyproject_defaults_equal_the_config_definitions() -> None:
    """Every default is the same in pyproject.toml (what Flower hands the apps) and config.py."""
    assert FloraConfig().to_run_config() == DEFAULTS


@pytest.mark.parametrize("strategy_class", ["FedLoRA", "FLoCoRA", "FLASC"])
def test_strategy_class_defaults_equal_the_run_config_defaults(strategy_class: str) -> None:
    """A keyword argument named like a run-config key has that key's default, so a strategy
    built in another ServerApp behaves like flora's defaults."""
    import inspect

    import strategies

    run_config = FloraConfig().to_run_config()
    params = inspect.signature(getattr(strategies, strategy_class)).parameters
    # Node sampling keeps Flower's FedAvg defaults (every node, a fresh sample each run: seed
    # None); `strategy` is the class argument.
    flower_sampling = {"fraction_train", "fraction_evaluate", "seed", "strategy"}
    matched = [
        name
        for name in params
        if name.replace("_", "-") in run_config and name not in flower_sampling
    ]
    assert len(matched) >= 4
    for name in matched:
        assert params[name].default == run_config[name.replace("_", "-")], name


def test_every_strategy_keyword_is_reachable_from_the_run_config() -> None:
    from flora_app.strategy_factory import build_strategy

    cfg = FloraConfig.from_run_config(
        {**DEFAULTS, "strategy": "flasc", "density-up": 0.3, "server-lr": 0.5}
    )
    flasc = build_strategy(cfg)
    assert get_codec(flasc.uplink).density == 0.3
    assert innermost(flasc).eta == 0.5
    flocora = build_strategy(
        FloraConfig.from_run_config({**DEFAULTS, "strategy": "flocora", "quant-bits": 2})
    )
    assert flocora.uplink.startswith("affine:bits=2:")


def test_unknown_keys_are_refused_with_one_line() -> None:
    with pytest.raises(ConfigError, match="run-config 'quant-bitz' is not a flora key"):
        FloraConfig.from_run_config({**DEFAULTS, "quant-bitz": 4})
    with pytest.raises(ConfigError, match="'lora-train-norm' is not a flora key: replaced by"):
        FloraConfig.from_run_config({**DEFAULTS, "lora-train-norm": False})
