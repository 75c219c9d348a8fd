"""The run configuration, resolved and validated once, before any training starts.

Flower hands both apps a flat ``run_config`` mapping (``pyproject.toml`` defaults plus
``--run-config`` overrides). It is read here into sections (run, data, model, LoRA, training,
compression, server optimizer, robustness), each a frozen dataclass whose fields are its keys:
field ``foo_bar`` is run-config key ``foo-bar``. Each field carries its own help text and its
allowed values (``choices`` taken from the code that acts on them, or a numeric range), so the
generic check below, the configuration reference (``docs/configuration.md``, generated from
these definitions) and the code agree by construction. A bad value fails with one line that
names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flora_app.attacks import ATTACKS
from flora_app.ml.names import (
    BATCHNORM_STATS,
    DATASETS,
    LORA_MODES,
    MODELS,
    NORMS,
    PARTITIONERS,
    PRETRAINED_MODELS,
)
from flora_app.tiers import TiersError, parse_tiers
from strategies.choices import (
    CLIPPING_SIDES,
    COSINE_SCOPES,
    LINK_PROFILES,
    NO_COSINE_BOUND,
    UPDATE_NORM_ACTIONS,
)
from strategies.codecs.names import (
    AFFINE_BITS,
    ENTROPY_CODERS,
    GRANULARITIES,
    METAS,
    SPARSITY_SCOPES,
    VALUE_BITS,
    VECTOR_MODES,
)
from strategies.schedules import SCHEDULE_HELP, schedule_factor

# What a value width means (quant-bits, quant-bits-down, sparse-value-bits).
VALUE_BITS_MEANING = "1..8 affine, 16 fp16, 32 fp32"

# The ``strategy`` choices (``flora_app.strategy_factory`` builds each). ``fedavg`` trains and
# exchanges the whole model; the others a frozen base plus LoRA adapters.
STRATEGIES = ("fedavg", "fedlora", "flocora", "flasc")
FULL_MODEL_STRATEGIES = ("fedavg",)
# ``aggregation`` and ``server-optimizer`` choices (``strategies.aggregation`` acts on them;
# named here so that the ClientApp, which reads this module, does not import server code).
AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan")
SERVER_OPTIMIZERS = ("adam", "sgd")


# Keys that existed once, and what replaced them.
REPLACED_KEYS = {
    "lora-train-norm": "replaced by lora-mode (lora-norm / lora-norm-head include the norms)",
    "lora-train-head": "replaced by lora-mode (lora-norm-head / full-stem include the head)",
}


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Range:
    """A numeric range; ``None`` leaves a side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def text(self, integer: bool) -> str:
        if self.high is None and self.low is not None:
            kind = "an integer" if integer else "a number"
            return f"{kind} {'>' if self.low_open else '>='} {self.low!r}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"a number in {left}{self.low!r}, {self.high!r}{right}"


def range_text(f: dataclasses.Field) -> str:
    """What a key's range allows, in words ("an integer >= 1" for integer keys)."""
    integer = isinstance(f.default, int) and not isinstance(f.default, bool)
    return f.metadata["range"].text(integer)


def key(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    within: Range | None = None,
    why: str = "",
) -> Any:
    """A run-config key: its default, one line of help, and what values it allows."""
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "range": within, "why": why},
    )


POSITIVE = Range(0.0, low_open=True)
FRACTION = Range(0.0, 1.0, low_open=True)  # (0, 1]
UNIT_OPEN = Range(0.0, 1.0, high_open=True)  # [0, 1)


def at_least(low: int) -> Range:
    return Range(low)


class Section:
    """A group of keys that checks itself: every field against its ``choices`` / ``range``,
    then whatever ``check`` adds across fields."""

    title: ClassVar[str] = ""

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            name = run_config_key(f.name)
            choices, within = f.metadata.get("choices"), f.metadata.get("range")
            why = f.metadata.get("why", "")
            if choices is not None and value not in choices:
                allowed = ", ".join(str(c) for c in choices)
                raise ConfigError(
                    f"run-config '{name}' = {value!r}: expected one of {allowed}{why}"
                )
            if within is not None and not within.holds(value):
                raise ConfigError(f"run-config '{name}' = {value!r}: expected {range_text(f)}{why}")
        self.check()

    def check(self) -> None:
        """Cross-field checks of the section (none by default)."""


def run_config_key(field_name: str) -> str:
    return field_name.replace("_", "-")


@dataclass(frozen=True)
class RunSection(Section):
    title: ClassVar[str] = "Run"
    strategy: str = key(
        "fedlora", "which strategy runs (fedavg trains the whole model)", choices=STRATEGIES
    )
    num_server_rounds: int = key(20, "rounds to run", within=at_least(1))
    fraction_train: float = key(
        0.5, "share of the nodes sampled to train each round", within=FRACTION
    )
    fraction_evaluate: float = key(
        0.2,
        "share of the nodes sampled to evaluate each round (they also measure BatchNorm "
        "statistics)",
        within=FRACTION,
        why="; the evaluate phase measures the global model's BatchNorm statistics",
    )
    round_timeout: float = key(
        3600.0, "seconds a phase waits for replies (Flower's timeout)", within=POSITIVE
    )
    seed: int = key(
        0, "seeds the frozen base, the data split, sampling and local training", within=at_least(0)
    )
    output_dir: str = key("outputs", "where the run folder goes")
    run_name: str = key("", "the run folder's name (default: time stamp and strategy)")
    resume_from: str = key("", "a run folder to continue after its last complete round")

    def check(self) -> None:
        if not self.output_dir:
            raise ConfigError("run-config 'output-dir' is empty: expected a directory path")


@dataclass(frozen=True)
class DataSection(Section):
    title: ClassVar[str] = "Data"
    dataset: str = key("digits", "the dataset (digits is embedded and offline)", choices=DATASETS)
    dataset_source: str = key(
        "",
        "where cifar10 / fashion-mnist come from: a folder (torchvision's cifar-10-batches-py, "
        "or the four Fashion-MNIST idx files), a saved copy, or a Hub id; default: the Hub for "
        "cifar10, Debian's /usr/share/datasets/fashion-mnist for fashion-mnist",
    )
    synthetic_samples: int = key(2000, "images of the synthetic dataset", within=at_least(20))
    synthetic_image_size: int = key(
        16, "side of the synthetic images in pixels", within=at_least(4)
    )
    partitioner: str = key(
        "iid", "how the training set is split over the nodes", choices=PARTITIONERS
    )
    dirichlet_alpha: float = key(
        0.5, "label skew of the dirichlet partitioner (smaller: more)", within=POSITIVE
    )
    val_fraction: float = key(
        0.1,
        "share of each node's partition kept for validation",
        within=Range(0.0, 0.9, high_open=True),
    )


@dataclass(frozen=True)
class ModelSection(Section):
    title: ClassVar[str] = "Model"
    model: str = key(
        "resnet8",
        "the network: CIFAR-style ResNets, torchvision's MobileNetV3-Small, EfficientNet-Lite0, "
        "or a tiny CNN for tests",
        choices=MODELS,
    )
    model_width: int = key(64, "channels of the first stage (ResNets, cnn)", within=at_least(1))
    norm: str = key(
        "batch",
        "normalisation layers: BatchNorm, or GroupNorm(2, C) as the FLoCoRA authors' runs",
        choices=NORMS,
    )
    pretrained: bool = key(False, "start from the model's published ImageNet weights")
    batchnorm_stats: str = key(
        "measured",
        "BatchNorm statistics: measured on each round's global model and pooled exactly "
        "(measured), or the model's initial ones kept throughout, local training included "
        "(frozen; for pretrained models on non-IID clients)",
        choices=BATCHNORM_STATS,
    )
    image_size: int = key(
        0,
        "side the input is resized to before efficientnet-lite0 (0: its default, 64; at least "
        "32); other models take inputs as they come and need 0",
        within=at_least(0),
    )

    def check(self) -> None:
        if self.pretrained and self.model not in PRETRAINED_MODELS:
            have = ", ".join(PRETRAINED_MODELS) or "none"
            raise ConfigError(
                f"run-config 'pretrained' = true: model {self.model!r} has no pretrained "
                f"weights (models with them: {have})"
            )
        if self.image_size and self.model != "efficientnet-lite0":
            raise ConfigError(
                f"run-config 'image-size' = {self.image_size}: only efficientnet-lite0 resizes "
                "its inputs; use 0"
            )
        if 0 < self.image_size < 32:
            raise ConfigError(
                f"run-config 'image-size' = {self.image_size}: expected 0 or at least 32 "
                "(EfficientNet-Lite0 has five stride-2 stages)"
            )
        if self.batchnorm_stats == "frozen" and self.norm != "batch":
            raise ConfigError(
                f"run-config 'batchnorm-stats' = 'frozen' with norm = {self.norm!r}: only "
                "BatchNorm has statistics to freeze; use norm='batch' or batchnorm-stats="
                "'measured'"
            )
        if self.pretrained and self.norm != "batch":
            raise ConfigError(
                f"run-config 'norm' = {self.norm!r}: the pretrained weights come with their "
                "BatchNorm layers; use norm='batch' with pretrained=true"
            )


@dataclass(frozen=True)
class LoraSection(Section):
    title: ClassVar[str] = "LoRA"
    lora_r: int = key(16, "adapter rank", within=at_least(1))
    lora_alpha: float = key(256.0, "adapter scaling numerator (scale = alpha / r)", within=POSITIVE)
    lora_mode: str = key(
        "lora-norm-head",
        "what trains and travels: LoRA only; + norm layers; + norms and head; or the stem conv "
        "in full + norms + head (FLoCoRA's modes)",
        choices=LORA_MODES,
    )
    lora_freeze_a: bool = key(
        False,
        "FFA-LoRA: A stays at its seeded init everywhere, only B trains and travels (half the "
        "adapter traffic)",
    )


@dataclass(frozen=True)
class TrainingSection(Section):
    title: ClassVar[str] = "Local training"
    local_epochs: int = key(2, "epochs over the node's partition per round", within=at_least(1))
    batch_size: int = key(32, "local batch size", within=at_least(1))
    lr: float = key(0.01, "local SGD learning rate", within=POSITIVE)
    momentum: float = key(0.9, "local SGD momentum (Nesterov)", within=UNIT_OPEN)


@dataclass(frozen=True)
class CompressionSection(Section):
    title: ClassVar[str] = "Compression"
    quant_bits: int = key(
        8,
        f"flocora uplink value width: {VALUE_BITS_MEANING}",
        choices=VALUE_BITS,
        why=f" ({VALUE_BITS_MEANING})",
    )
    quant_bits_down: int = key(
        32,
        "flocora downlink value width, as quant-bits",
        choices=VALUE_BITS,
        why=f" ({VALUE_BITS_MEANING})",
    )
    quant_granularity: str = key(
        "channel", "one affine scale per output channel or per tensor", choices=GRANULARITIES
    )
    quant_meta: str = key(
        "fp16", "dtype of the affine scales and offsets on the wire", choices=METAS
    )
    quant_vectors: str = key(
        "fp32",
        "flocora: 1-D tensors (norm weights, biases) sent fp32 (the paper's) or quantized per "
        "tensor at the same width ('quant')",
        choices=VECTOR_MODES,
    )
    quant_update: bool = key(True, "flocora clients quantize their update, not their weights")
    uplink_budget_bytes: int = key(
        0,
        "flocora adaptive precision: bytes per uplink message; each tensor gets its own width "
        "up to quant-bits, for the least squared error that fits (0: quant-bits for all)",
        within=at_least(0),
    )
    error_feedback: bool = key(False, "clients carry their compression residual to next round")
    density_up: float = key(
        0.1, "flasc: share of the update's entries a client sends", within=FRACTION
    )
    density_down: float = key(
        0.25, "flasc: share of the global adapters' entries broadcast", within=FRACTION
    )
    density_schedule: str = key("constant", f"flasc densities per round: {SCHEDULE_HELP}")
    sparsity_scope: str = key(
        "global", "flasc top-k over all tensors together or per tensor", choices=SPARSITY_SCOPES
    )
    sparse_value_bits: int = key(
        32,
        "flasc uplink value width, as quant-bits",
        choices=VALUE_BITS,
        why=f" ({VALUE_BITS_MEANING})",
    )
    entropy_coder: str = key(
        "none",
        "lossless stage after the codec, both directions: zstd compresses each whole message",
        choices=ENTROPY_CODERS,
    )
    downlink_delta: bool = key(
        False,
        "send each training node the coded change from the copy of the global adapters it "
        "holds (a new node: from the run's initial adapters), not a coded copy: less error at "
        "the same bits (the server mirrors each node's copy)",
    )
    tiers: str = key(
        "",
        "heterogeneous devices, 'share:value,...': shares of the nodes (summing to 1), each "
        "asked for its own uplink (a density under flasc, a value width under flocora); "
        "empty: one uplink for all",
    )
    rank_tiers: str = key(
        "",
        "heterogeneous devices by LoRA rank, 'share:rank,...': shares of the nodes (summing to "
        "1), each receiving, training and sending only the first rank components (HetLoRA); every "
        "component is averaged over the nodes that trained it; empty: all train lora-r",
    )

    def check(self) -> None:
        _check_schedule("density-schedule", self.density_schedule)
        for name, text in (("tiers", self.tiers), ("rank-tiers", self.rank_tiers)):
            try:
                parse_tiers(text)
            except TiersError as exc:
                raise ConfigError(f"run-config '{name}' = {text!r}: {exc}") from None


@dataclass(frozen=True)
class ServerOptimizerSection(Section):
    title: ClassVar[str] = "Server optimizer (flasc)"
    server_optimizer: str = key(
        "adam", "Flower's FedAdam, or FedAvgM without momentum (sgd)", choices=SERVER_OPTIMIZERS
    )
    server_lr: float = key(0.05, "server learning rate", within=POSITIVE)
    server_lr_schedule: str = key("decay:0.7:5", f"server-lr per round: {SCHEDULE_HELP}")
    server_eps: float = key(1e-3, "Adam's epsilon (Flower's tau)", within=POSITIVE)
    server_beta1: float = key(0.9, "Adam's beta1", within=UNIT_OPEN)
    server_beta2: float = key(0.999, "Adam's beta2", within=UNIT_OPEN)

    def check(self) -> None:
        _check_schedule("server-lr-schedule", self.server_lr_schedule)


@dataclass(frozen=True)
class RobustnessSection(Section):
    title: ClassVar[str] = "Robustness"
    aggregation: str = key(
        "mean",
        "combiner of the replies: Flower's FedAvg, FedMedian, FedTrimmedAvg (coordinate-wise), "
        "Krum, MultiKrum or Bulyan (select the replies closest to the others)",
        choices=AGGREGATIONS,
    )
    trim_fraction: float = key(
        0.2,
        "share of replies cut from each tail by trimmed-mean",
        within=Range(0.0, 0.5, high_open=True),
        why=", the share of replies cut from each tail",
    )
    malicious_nodes: int = key(
        0,
        "Byzantine replies per round that krum, multi-krum and bulyan assume",
        within=at_least(0),
    )
    multi_krum_select: int = key(1, "replies multi-krum keeps and averages", within=at_least(1))
    max_update_norm: float = key(
        0.0,
        "bound on the L2 norm of each reply's update (all tensors), 0 for none",
        within=at_least(0.0),
    )
    update_norm_action: str = key(
        "clip",
        "a reply above max-update-norm is scaled down to it, or rejected",
        choices=UPDATE_NORM_ACTIONS,
    )
    min_update_cosine: float = key(
        NO_COSINE_BOUND,
        "a reply whose update has a cosine below this with the round's coordinate-wise median "
        "update is rejected: 0 drops sign flips, -1 none",
        within=Range(-1.0, 1.0),
    )
    update_cosine_scope: str = key(
        "global",
        "what min-update-cosine's cosine is over: the whole update, or each tensor alone with "
        "the reply's cosine the median over its tensors (no single tensor, such as a head "
        "holding most of the norm, decides it)",
        choices=COSINE_SCOPES,
    )
    max_num_examples: int = key(
        1_000_000, "largest num-examples a reply may claim", within=Range(0, low_open=True)
    )
    link_profile: str = key(
        "none",
        "simulated clock: each node's link drawn from this profile (strategies.links); each "
        "reply is timed over it, over-selection keeps the first arrivals, and every round "
        "records its simulated seconds (none: no clock)",
        choices=LINK_PROFILES,
    )
    over_selection: float = key(
        0.0,
        "share of extra nodes sampled per training round",
        within=Range(0.0, 10.0),
        why=", the share of extra nodes sampled per training round",
    )
    chaos_clients: int = key(
        0, "test knob: nodes per round that spoil their replies", within=at_least(0)
    )
    byzantine_clients: int = key(
        0,
        "test knob: partitions 0 .. N-1 send valid but malicious replies, as 'attack' says",
        within=at_least(0),
    )
    attack: str = key(
        "sign-flip",
        "what byzantine clients do: negate their update, scale it by attack-scale, replace it "
        "by Gaussian noise of its norm, or train on flipped labels",
        choices=ATTACKS,
    )
    attack_scale: float = key(10.0, "factor of the scale attack", within=POSITIVE)


@dataclass(frozen=True)
class PrivacySection(Section):
    title: ClassVar[str] = "Differential privacy (central)"
    dp_noise_multiplier: float = key(
        0.0,
        "Gaussian noise on the mean of clipped updates, as a multiple of dp-clipping-norm; "
        "0: no DP",
        within=at_least(0.0),
    )
    dp_clipping_norm: float = key(
        1.0, "L2 bound of each client's update (all tensors), under DP", within=POSITIVE
    )
    dp_clipping: str = key(
        "server",
        "where updates are clipped: the server, on what it decodes; or the clients too, before "
        "encoding (Flower's fixedclipping_mod)",
        choices=CLIPPING_SIDES,
    )
    dp_delta: float = key(
        1e-5, "the delta at which epsilon is reported", within=Range(0.0, 1.0, True, True)
    )


SECTIONS: dict[str, type[Section]] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "lora": LoraSection,
    "training": TrainingSection,
    "compression": CompressionSection,
    "server": ServerOptimizerSection,
    "robustness": RobustnessSection,
    "privacy": PrivacySection,
}


@dataclass(frozen=True)
class FloraConfig:
    """Every run-config key of the app, typed and grouped."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    compression: CompressionSection = field(default_factory=CompressionSection)
    server: ServerOptimizerSection = field(default_factory=ServerOptimizerSection)
    robustness: RobustnessSection = field(default_factory=RobustnessSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)

    def _check_rank_tiers(self) -> None:
        """Ranks are whole numbers up to lora-r, on a LoRA strategy whose aggregate is linear
        in the updates (the masked mean of ``strategies.rank_tiers`` rescales them)."""
        text = self.compression.rank_tiers
        ranks = [v for _, v in parse_tiers(text)]
        if not ranks:
            return
        r = self.lora.lora_r
        bad = [v for v in ranks if v != int(v) or not 1 <= v <= r]
        problem = (
            f"ranks {bad}: expected whole numbers in 1..lora-r = {r}"
            if bad
            else f"with strategy = {self.run.strategy!r}: only LoRA strategies have ranks"
            if self.run.strategy == "fedavg"
            else f"with aggregation = {self.robustness.aggregation!r}: expected 'mean' (each "
            "component is a mean over the nodes that trained it)"
            if self.robustness.aggregation != "mean"
            else "with dp-noise-multiplier > 0: the rescaled updates break DP's sensitivity"
            if self.privacy.dp_noise_multiplier > 0.0
            else None
        )
        if problem:
            raise ConfigError(f"run-config 'rank-tiers' = {text!r}: {problem}")

    def check_across(self) -> None:
        """What one section cannot check alone: the meaning of ``tiers`` values depends on
        the strategy; DP needs the mean of every sampled reply and its own clipping."""
        if self.privacy.dp_noise_multiplier > 0.0:
            r = self.robustness
            clash = (
                ("aggregation", r.aggregation, "'mean' (the noise is calibrated to a mean)")
                if r.aggregation != "mean"
                else ("over-selection", r.over_selection, "0 (every sampled reply counts)")
                if r.over_selection > 0.0
                else ("max-update-norm", r.max_update_norm, "0 (dp-clipping-norm bounds updates)")
                if r.max_update_norm > 0.0
                else ("min-update-cosine", r.min_update_cosine, f"{NO_COSINE_BOUND:g} (no filter)")
                if r.min_update_cosine != NO_COSINE_BOUND
                else None
            )
            if clash:
                name, value, expected = clash
                raise ConfigError(
                    f"run-config '{name}' = {value!r} with dp-noise-multiplier > 0: expected "
                    f"{expected}"
                )
        self._check_rank_tiers()
        c = self.compression
        if c.uplink_budget_bytes > 0 and (
            self.run.strategy != "flocora" or c.quant_bits not in AFFINE_BITS or c.tiers
        ):
            raise ConfigError(
                f"run-config 'uplink-budget-bytes' = {c.uplink_budget_bytes}: expected "
                "strategy='flocora' with an affine quant-bits (1..8, the widest width) and no "
                "tiers, or 0"
            )
        tiers = parse_tiers(self.compression.tiers)
        if not tiers:
            return
        values = [v for _, v in tiers]
        strategy = self.run.strategy
        if strategy == "flasc":
            bad = [v for v in values if not 0.0 < v <= 1.0]
            expected = "uplink densities in (0, 1]"
        elif strategy == "flocora":
            bad = [v for v in values if v not in VALUE_BITS]
            expected = f"uplink value widths, one of {', '.join(map(str, VALUE_BITS))}"
        else:
            raise ConfigError(
                f"run-config 'tiers' = {self.compression.tiers!r} with strategy = "
                f"{strategy!r}: tiers choose flasc densities or flocora bits; use one of those "
                "or tiers=''"
            )
        if bad:
            raise ConfigError(
                f"run-config 'tiers' = {self.compression.tiers!r}: values {bad} under "
                f"{strategy}; expected {expected}"
            )

    @property
    def use_lora(self) -> bool:
        """Whether the model is a frozen base plus LoRA adapters (else it trains in full)."""
        return self.run.strategy not in FULL_MODEL_STRATEGIES

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FloraConfig:
        """Build and validate; raise ``ConfigError`` on the first bad key (unknown keys too)."""
        known = {
            run_config_key(f.name)
            for section in SECTIONS.values()
            for f in dataclasses.fields(section)
        }
        unknown = sorted(set(run_config) - known)
        if unknown:
            hint = REPLACED_KEYS.get(unknown[0], "see docs/configuration.md")
            raise ConfigError(f"run-config '{unknown[0]}' is not a flora key: {hint}")
        sections = {}
        for attr, section in SECTIONS.items():
            values = {}
            for f in dataclasses.fields(section):
                name = run_config_key(f.name)
                if name in run_config:
                    values[f.name] = _coerce(name, run_config[name], type(f.default))
            built = section(**values)
            built.validate()
            sections[attr] = built
        config = cls(**sections)
        config.check_across()
        return config

    def to_run_config(self) -> dict[str, Any]:
        """The flat, dashed form, as written to ``config.json`` and accepted back."""
        out: dict[str, Any] = {}
        for attr in SECTIONS:
            section = getattr(self, attr)
            for f in dataclasses.fields(section):
                out[run_config_key(f.name)] = getattr(section, f.name)
        return out


def _check_schedule(name: str, schedule: str) -> None:
    try:
        schedule_factor(schedule)
    except ValueError:
        raise ConfigError(f"run-config '{name}' = {schedule!r}: expected {SCHEDULE_HELP}") from None


def _coerce(name: str, value: Any, kind: type) -> Any:
    """TOML gives ints where floats are meant (``lr=1``); accept those, refuse the rest."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{name}' = {value!r}: expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{name}' = {value!r}: expected an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"run-config '{name}' = {value!r}: expected a number")
    if isinstance(value, str):
        return value
    raise ConfigError(f"run-config '{name}' = {value!r}: expected a string")
