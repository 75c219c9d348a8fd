"""The run configuration, resolved and validated once, before any training starts.

Flower hands both apps a flat ``run_config`` mapping (``pyproject.toml`` defaults plus
``--run-config`` overrides). Everything downstream reads the typed ``FloraConfig`` built here,
so a bad value fails in one place with one line that names the key, the value and what is
allowed, instead of deep inside a training loop on some remote node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strategies.presets import (
    AGGREGATIONS,
    PRESETS,
    QUANT_BITS,
    SERVER_OPTIMIZERS,
    StrategySettings,
    schedule_factor,
)

DATASETS = ("digits", "cifar10", "synthetic")
PARTITIONERS = ("iid", "dirichlet")
MODELS = ("resnet8", "resnet18", "cnn")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class FloraConfig(StrategySettings):
    """Every run-config key of the app, typed. Field ``foo_bar`` is run-config key ``foo-bar``.

    The strategy keys (``quant-*``, ``density-*``, ``server-*``, ...) are the inherited fields
    of ``StrategySettings``, declared once, there.
    """

    num_server_rounds: int = 20
    fraction_train: float = 0.5
    fraction_evaluate: float = 0.2
    round_timeout: float = 3600.0
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    dataset: str = "digits"
    dataset_source: str = ""
    synthetic_samples: int = 2000
    synthetic_image_size: int = 16
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.1
    model: str = "resnet8"
    model_width: int = 64
    lora_r: int = 16
    lora_alpha: float = 256.0
    lora_train_norm: bool = True
    lora_train_head: bool = True
    strategy: str = "fedlora"
    output_dir: str = "outputs"
    run_name: str = ""
    resume_from: str = ""
    chaos_clients: int = 0

    @property
    def use_lora(self) -> bool:
        """Whether the model is a frozen base plus LoRA adapters (else it trains in full)."""
        return PRESETS[self.strategy].lora

    @property
    def strategy_settings(self) -> StrategySettings:
        """The codec and server-optimizer settings handed to the strategy presets, by name."""
        names = [f.name for f in dataclasses.fields(StrategySettings)]
        return StrategySettings(**{name: getattr(self, name) for name in names})

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FloraConfig:
        """Build and validate; raise ``ConfigError`` on the first bad key."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            values[f.name] = _coerce(key, run_config[key], type(f.default))
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_run_config(self) -> dict[str, Any]:
        """The flat, dashed form, as written to ``config.json`` and accepted back."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        """Check every range and choice; the error names the key, the value and what is allowed."""
        _choice("strategy", self.strategy, tuple(PRESETS))
        _choice("dataset", self.dataset, DATASETS)
        _choice("partitioner", self.partitioner, PARTITIONERS)
        _choice("model", self.model, MODELS)
        _choice("quant-granularity", self.quant_granularity, ("channel", "tensor"))
        _choice("quant-meta", self.quant_meta, ("fp16", "fp32"))
        _choice("sparsity-scope", self.sparsity_scope, ("global", "tensor"))
        _choice("server-optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        _choice("aggregation", self.aggregation, tuple(AGGREGATIONS))
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                f"run-config 'trim-fraction' = {self.trim_fraction!r}: expected a number in "
                "[0, 0.5), the share of replies cut from each tail"
            )
        _positive("max-num-examples", self.max_num_examples)
        if not 0.0 <= self.over_selection <= 10.0:
            raise ConfigError(
                f"run-config 'over-selection' = {self.over_selection!r}: expected a number in "
                "[0, 10], the share of extra nodes sampled per training round"
            )
        _open_closed("density-up", self.density_up, 0.0, 1.0)
        _open_closed("density-down", self.density_down, 0.0, 1.0)
        _positive("server-lr", self.server_lr)
        _positive("server-eps", self.server_eps)
        _closed_open("server-beta1", self.server_beta1, 0.0, 1.0)
        _closed_open("server-beta2", self.server_beta2, 0.0, 1.0)
        for key, schedule in (
            ("density-schedule", self.density_schedule),
            ("server-lr-schedule", self.server_lr_schedule),
        ):
            try:
                schedule_factor(schedule)
            except ValueError:
                raise ConfigError(
                    f"run-config '{key}' = {schedule!r}: expected constant "
                    "or decay:F:N (0 < F <= 1, N >= 1), e.g. decay:0.5:10"
                ) from None
        if self.sparse_value_bits not in (32, 16, 8, 4):
            raise ConfigError(
                f"run-config 'sparse-value-bits' = {self.sparse_value_bits!r}: "
                "expected 32, 16, 8 or 4"
            )
        for key, bits in (
            ("quant-bits", self.quant_bits),
            ("quant-bits-down", self.quant_bits_down),
        ):
            if bits not in QUANT_BITS:
                raise ConfigError(
                    f"run-config '{key}' = {bits!r}: expected 1..8 (affine), 16 (fp16) or 32 (fp32)"
                )
        _at_least("num-server-rounds", self.num_server_rounds, 1)
        _at_least("local-epochs", self.local_epochs, 1)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("model-width", self.model_width, 1)
        _at_least("lora-r", self.lora_r, 1)
        _at_least("seed", self.seed, 0)
        _at_least("chaos-clients", self.chaos_clients, 0)
        _at_least("synthetic-samples", self.synthetic_samples, 20)
        _at_least("synthetic-image-size", self.synthetic_image_size, 4)
        _open_closed("fraction-train", self.fraction_train, 0.0, 1.0)
        if not 0.0 < self.fraction_evaluate <= 1.0:
            raise ConfigError(
                f"run-config 'fraction-evaluate' = {self.fraction_evaluate!r}: expected a number "
                "in (0.0, 1.0]; the evaluate phase measures the global model's BatchNorm statistics"
            )
        _closed_open("val-fraction", self.val_fraction, 0.0, 0.9)
        _closed_open("momentum", self.momentum, 0.0, 1.0)
        _positive("lr", self.lr)
        _positive("round-timeout", self.round_timeout)
        _positive("lora-alpha", self.lora_alpha)
        _positive("dirichlet-alpha", self.dirichlet_alpha)
        if not self.output_dir:
            raise ConfigError("run-config 'output-dir' is empty: expected a directory path")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """TOML gives ints where floats are meant (``lr=1``); accept those, refuse the rest."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{key}' = {value!r}: expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{key}' = {value!r}: expected an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"run-config '{key}' = {value!r}: expected a number")
    if isinstance(value, str):
        return value
    raise ConfigError(f"run-config '{key}' = {value!r}: expected a string")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"run-config '{key}' = {value!r}: expected one of {', '.join(allowed)}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"run-config '{key}' = {value!r}: expected an integer >= {low}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"run-config '{key}' = {value!r}: expected a number > 0")


def _open_closed(key: str, value: float, low: float, high: float) -> None:
    if not low < value <= high:
        raise ConfigError(f"run-config '{key}' = {value!r}: expected a number in ({low}, {high}]")


def _closed_open(key: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ConfigError(f"run-config '{key}' = {value!r}: expected a number in [{low}, {high})")
