"""The ``strategy`` run-config key: each name is a preset over (inner strategy, codecs).

Aggregation is Flower's own (``flwr.serverapp.strategy``); a preset only says which Flower
strategy aggregates, which wire codecs each direction uses, and whether the model is a frozen
base plus LoRA adapters or trains in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Strategy,
)

from strategies.compression import CompressionStrategy


@dataclass(frozen=True)
class Preset:
    """How one ``strategy`` name is built."""

    inner: str  # "fedavg", or "server-optimizer" (the settings pick adam or sgd)
    lora: bool
    quantized: bool = False
    sparse: bool = False
    summary: str = ""


@dataclass(frozen=True)
class StrategySettings:
    """Codec and server-optimizer knobs of the presets; field ``foo_bar`` is run-config key
    ``foo-bar``, so the app hands them over by name."""

    quant_bits: int = 8
    quant_bits_down: int = 32
    quant_granularity: str = "channel"
    quant_meta: str = "fp16"
    quant_update: bool = True
    error_feedback: bool = False
    density_up: float = 0.1
    density_down: float = 0.25
    sparsity_scope: str = "global"
    sparse_value_bits: int = 32
    server_optimizer: str = "adam"
    server_lr: float = 0.05
    density_schedule: str = "constant"
    server_eps: float = 1e-3
    server_beta1: float = 0.9
    server_beta2: float = 0.999
    server_lr_schedule: str = "decay:0.7:5"
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    max_num_examples: int = 1_000_000
    over_selection: float = 0.0


_INNER: dict[str, type[Strategy]] = {"fedavg": FedAvg}

PRESETS: dict[str, Preset] = {
    "fedavg": Preset("fedavg", lora=False, summary="the whole model, fp32 (the baseline)"),
    "fedlora": Preset("fedavg", lora=True, summary="LoRA adapters + norms + head, fp32"),
    "flocora": Preset(
        "fedavg", lora=True, quantized=True, summary="LoRA adapters, affine b-bit uplink"
    ),
    "flasc": Preset(
        "server-optimizer",
        lora=True,
        sparse=True,
        summary="LoRA adapters, top-k down and up, server optimizer on the sparse updates",
    ),
}

SERVER_OPTIMIZERS = ("adam", "sgd")

# Coordinate-wise combiners of the decoded replies: Flower's FedAvg, FedMedian, FedTrimmedAvg.
AGGREGATIONS: dict[str, type[FedAvg]] = {
    "mean": FedAvg,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
}

# Widths the quant-bits keys accept: affine 1..8 bits, or a float codec.
QUANT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def codec_spec(bits: int, granularity: str = "channel", meta: str = "fp16") -> str:
    """The codec name for a bit width: 32 -> fp32, 16 -> fp16, 1..8 -> affine."""
    if bits == 32:
        return "fp32"
    if bits == 16:
        return "fp16"
    return f"affine:bits={bits}:gran={granularity}:meta={meta}"


def build_strategy(
    name: str,
    fraction_train: float,
    fraction_evaluate: float,
    wire: StrategySettings | None = None,
    min_available_nodes: int = 2,
) -> CompressionStrategy:
    """The Flower strategy for a preset: its inner strategy wrapped by the wire codecs."""
    preset = PRESETS[name]
    wire = wire or StrategySettings()
    sampling = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if fraction_evaluate > 0 else 0,
        "min_available_nodes": min_available_nodes,
    }
    # What the wrapper does with replies, the same for every preset.
    replies = {"max_num_examples": wire.max_num_examples, "over_selection": wire.over_selection}
    if preset.sparse:
        factor = schedule_factor(wire.density_schedule)

        def codecs_for(server_round: int) -> tuple[str, str]:
            f = factor(server_round)
            return (
                sparse_spec(wire.density_down * f, wire.sparsity_scope, 32),
                sparse_spec(wire.density_up * f, wire.sparsity_scope, wire.sparse_value_bits),
            )

        down, up = codecs_for(1)
        return CompressionStrategy(
            server_optimizer(sampling, wire),
            downlink=down,
            uplink=up,
            reply="update",
            error_feedback=wire.error_feedback,
            evaluate_downlink="fp32",
            codecs_for_round=codecs_for,
            **replies,
        )
    inner = robust(_INNER[preset.inner], wire)(**sampling)
    if not preset.quantized:
        return CompressionStrategy(inner, "fp32", "fp32", **replies)
    return CompressionStrategy(
        inner,
        downlink=codec_spec(wire.quant_bits_down, wire.quant_granularity, wire.quant_meta),
        uplink=codec_spec(wire.quant_bits, wire.quant_granularity, wire.quant_meta),
        reply="update" if wire.quant_update else "weights",
        error_feedback=wire.error_feedback,
        **replies,
    )


def robust(base: type[Strategy], wire: StrategySettings) -> type[Strategy]:
    """``base`` with its mean of the replies replaced by ``wire.aggregation``'s combiner.

    Flower's FedMedian / FedTrimmedAvg override FedAvg's ``aggregate_train``, and FedAdam /
    FedAvgM call ``super().aggregate_train`` before their own step, so putting the combiner
    after ``base`` in the MRO gives, e.g., Adam over the coordinate-wise median of the updates.
    """
    combiner = AGGREGATIONS[wire.aggregation]
    if combiner is FedAvg:
        return base
    attrs = {"beta": wire.trim_fraction} if combiner is FedTrimmedAvg else {}

    def _init(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        base.__init__(self, *args, **kwargs)
        for name, value in attrs.items():
            setattr(self, name, value)

    bases = (combiner,) if issubclass(combiner, base) else (base, combiner)
    return type(f"{base.__name__}{combiner.__name__}", bases, {"__init__": _init})


def sparse_spec(density: float, scope: str, value_bits: int) -> str:
    """The top-k codec name for a density, scope and value width."""
    return f"topk:density={density!r}:scope={scope}:values={value_bits}"


class _ScheduledLr:
    """Mixin scaling a Flower optimizer's learning-rate attribute by a per-round factor.

    Flower's FedAdam / FedAvgM read their rate from an attribute at aggregation time, so
    setting it just before lets them keep their own update rule (and Adam's moments).
    """

    lr_attribute = ""

    def set_lr_schedule(self, factor: Callable[[int], float]) -> None:
        self._base_lr = float(getattr(self, self.lr_attribute))
        self._lr_factor = factor

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        setattr(self, self.lr_attribute, self._base_lr * self._lr_factor(server_round))
        self._lr_changed()
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _lr_changed(self) -> None:
        """Hook for optimizers that cache a decision taken from the rate."""


class ScheduledFedAdam(_ScheduledLr, FedAdam):
    """Flower's FedAdam with ``eta`` following a schedule."""

    lr_attribute = "eta"


class ScheduledFedAvgM(_ScheduledLr, FedAvgM):
    """Flower's FedAvgM with ``server_learning_rate`` following a schedule."""

    lr_attribute = "server_learning_rate"

    def _lr_changed(self) -> None:
        # FedAvgM decides once, at construction, whether to apply its rate at all (lr 1 and no
        # momentum is plain FedAvg, bit for bit); a scheduled rate must re-take that decision.
        self.server_opt = self.server_momentum != 0.0 or self.server_learning_rate != 1.0

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        # FedAvgM only tracks the global while its rate applies; with a schedule that can
        # start applying mid-run, so always start the round from the global it is sent.
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)


def server_optimizer(sampling: dict, wire: StrategySettings) -> Strategy:
    """Flower's FedAdam or FedAvgM (``server-optimizer``) over the mean update.

    The wrapper hands them dense global + update per client, so their pseudo-gradient
    (aggregate minus current) is the weighted mean of the sparse updates, as in FLASC. Adam
    uses PyTorch's betas (FLASC's AdamW, without weight decay) and Flower's own default
    epsilon, 1e-3 (``tau``, after Reddi et al.): the mean sparse update is mostly far below it,
    so small coordinates step in proportion to their update and only large ones are
    normalised (README, FLASC); ``server-beta1`` / ``server-beta2`` / ``server-eps`` change
    them. sgd is plain (no momentum), so lr = 1 is FedAvg of the updates.
    ``server-lr-schedule`` scales the rate round by round.
    """
    name, lr = wire.server_optimizer, wire.server_lr
    if name == "adam":
        strategy = robust(ScheduledFedAdam, wire)(
            eta=lr,
            eta_l=lr,
            beta_1=wire.server_beta1,
            beta_2=wire.server_beta2,
            tau=wire.server_eps,
            **sampling,
        )
    elif name == "sgd":
        strategy = robust(ScheduledFedAvgM, wire)(
            server_learning_rate=lr, server_momentum=0.0, **sampling
        )
    else:
        raise ValueError(
            f"server optimizer {name!r}: expected one of {', '.join(SERVER_OPTIMIZERS)}"
        )
    strategy.set_lr_schedule(schedule_factor(wire.server_lr_schedule))
    return strategy


def schedule_factor(schedule: str) -> Callable[[int], float]:
    """``constant`` -> 1; ``decay:F:N`` -> F ** ((round - 1) // N): multiplicative decay.

    One grammar for every per-round schedule (densities, server learning rate)."""
    if schedule == "constant":
        return lambda _round: 1.0
    try:
        kind, factor_text, every_text = schedule.split(":")
        factor, every = float(factor_text), int(every_text)
    except ValueError:
        kind, factor, every = "", 0.0, 0
    if kind != "decay" or not 0.0 < factor <= 1.0 or every < 1:
        raise ValueError(
            f"schedule {schedule!r}: expected constant or decay:F:N with 0 < F <= 1 and N >= 1"
        )
    return lambda server_round: factor ** ((server_round - 1) // every)
