"""What combines the decoded replies: Flower's own aggregators, and FLASC's server optimizers.

Every class here is Flower's: ``FedAvg`` / ``FedMedian`` / ``FedTrimmedAvg`` combine replies
coordinate-wise, ``Krum`` / ``MultiKrum`` / ``Bulyan`` select the replies closest to the others
(assuming ``malicious_nodes`` of them are Byzantine), and ``FedAdam`` / ``FedAvgM`` take a server
step from the combined replies.
Flower's optimizers get their combined replies from ``super().aggregate_train``, so an optimizer
over a robust combiner is the two classes in one MRO (Adam over the median of the updates). The
combinations are declared below, once, so a reader sees exactly which class runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

from strategies.choices import NO_COSINE_BOUND
from strategies.direction_filter import MedianDirectionFilter
from strategies.node_sampling import NodeSampling
from strategies.privacy import PrivacyAccounting
from strategies.schedules import schedule_factor

# The ``aggregation`` choices: combiners of the decoded replies.
COMBINERS: dict[str, type[FedAvg]] = {
    "mean": FedAvg,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": Krum,
    "multi-krum": MultiKrum,
    "bulyan": Bulyan,
}
KRUM_FAMILY = ("krum", "multi-krum", "bulyan")  # the combiners that assume malicious_nodes
SERVER_OPTIMIZERS = ("adam", "sgd")


class _ScheduledLr:
    """Mixin scaling a Flower optimizer's learning-rate attribute by a per-round factor.

    Flower's FedAdam / FedAvgM read their rate from an attribute at aggregation time, so
    setting it just before lets them keep their own update rule (and Adam's moments).
    """

    lr_attribute = ""

    def set_lr_schedule(self, schedule: str) -> None:
        self._base_lr = float(getattr(self, self.lr_attribute))
        self._lr_factor: Callable[[int], float] = schedule_factor(schedule)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
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


class _TrimmedBeta:
    """``beta`` for FedTrimmedAvg when it sits below an optimizer in the MRO: the optimizer's
    ``__init__`` does not forward it, so it is set afterwards, checked as Flower checks it."""

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= beta < 0.5:
            raise ValueError("`beta` must be in the range [0, 0.5).")
        self.beta = beta


class _ByzantineSettings:
    """``num_malicious_nodes`` (and MultiKrum's ``num_nodes_to_select``) for the Krum family
    below an optimizer in the MRO: the optimizer's ``__init__`` does not forward them."""

    def __init__(
        self, *, num_malicious_nodes: int = 0, num_nodes_to_select: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_malicious_nodes = num_malicious_nodes
        if num_nodes_to_select is not None:
            self.num_nodes_to_select = num_nodes_to_select


class FedAdamMedian(ScheduledFedAdam, FedMedian):
    """Adam over the coordinate-wise median of the replies."""


class FedAdamTrimmedAvg(_TrimmedBeta, ScheduledFedAdam, FedTrimmedAvg):
    """Adam over the coordinate-wise trimmed mean of the replies."""


class FedAvgMMedian(ScheduledFedAvgM, FedMedian):
    """Server SGD over the coordinate-wise median of the replies."""


class FedAvgMTrimmedAvg(_TrimmedBeta, ScheduledFedAvgM, FedTrimmedAvg):
    """Server SGD over the coordinate-wise trimmed mean of the replies."""


class FedAdamKrum(_ByzantineSettings, ScheduledFedAdam, Krum):
    """Adam on the reply Krum selects."""


class FedAdamMultiKrum(_ByzantineSettings, ScheduledFedAdam, MultiKrum):
    """Adam on the mean of the replies MultiKrum selects."""


class FedAdamBulyan(_ByzantineSettings, ScheduledFedAdam, Bulyan):
    """Adam on Bulyan's aggregate."""


class FedAvgMKrum(_ByzantineSettings, ScheduledFedAvgM, Krum):
    """Server SGD on the reply Krum selects."""


class FedAvgMMultiKrum(_ByzantineSettings, ScheduledFedAvgM, MultiKrum):
    """Server SGD on the mean of the replies MultiKrum selects."""


class FedAvgMBulyan(_ByzantineSettings, ScheduledFedAvgM, Bulyan):
    """Server SGD on Bulyan's aggregate."""


class _GaussianMean:
    """Central DP's Gaussian mechanism on the mean of the (already clipped) replies.

    Every valid reply weighs the same, because the noise is calibrated to a uniform mean: with
    updates clipped to ``clipping_norm``, the sum of m of them changes by at most
    ``clipping_norm`` when one client's data changes, so noise of ``noise_multiplier`` x
    ``clipping_norm`` on the sum (divided by m on the mean, Flower's ``compute_stdv``) is the
    Gaussian mechanism. Sitting below FLASC's optimizer in the MRO, the noise goes on the mean
    update Adam or SGD then steps on, not on the optimizer's output. Flower's
    ``DifferentialPrivacyServerSideFixedClipping`` is not used for this: it adds its noise to
    what the wrapped strategy returns (after Adam's step), needs the sample size when it is
    built (ours follows the nodes online) and drops the whole round on one error reply (a
    rejected reply is one here); its noise and clipping primitives are used.
    """

    noise_multiplier = 0.0
    clipping_norm = 1.0

    def set_privacy(self, noise_multiplier: float, clipping_norm: float) -> None:
        if not noise_multiplier > 0.0 or not clipping_norm > 0.0:
            raise ValueError(
                f"noise_multiplier = {noise_multiplier!r}, clipping_norm = {clipping_norm!r}: "
                "expected both > 0"
            )
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error()]
        key = getattr(self, "weighted_by_key", "num-examples")
        for msg in valid:
            for record in msg.content.metric_records.values():
                if key in record:
                    record[key] = 1  # uniform mean: see the class docstring
        arrays, metrics = super().aggregate_train(server_round, valid)  # type: ignore[misc]
        if arrays is None:
            return arrays, metrics
        noisy = arrays.to_numpy_ndarrays()
        stdv = compute_stdv(self.noise_multiplier, self.clipping_norm, len(valid))
        add_gaussian_noise_inplace(noisy, stdv)
        out = ArrayRecord({k: Array(v) for k, v in zip(arrays.keys(), noisy, strict=True)})
        return out, metrics


class DPFedAvg(_GaussianMean, FedAvg):
    """Uniform mean of the clipped replies plus Gaussian noise (central DP)."""


class DPFedAdam(ScheduledFedAdam, DPFedAvg):
    """Adam on the noisy uniform mean of the clipped updates (FLASC under central DP)."""


class DPFedAvgM(ScheduledFedAvgM, DPFedAvg):
    """Server SGD on the noisy uniform mean of the clipped updates."""


_OPTIMIZER_CLASSES: dict[tuple[str, str], type[FedAvg]] = {
    ("adam", "mean"): ScheduledFedAdam,
    ("adam", "median"): FedAdamMedian,
    ("adam", "trimmed-mean"): FedAdamTrimmedAvg,
    ("sgd", "mean"): ScheduledFedAvgM,
    ("sgd", "median"): FedAvgMMedian,
    ("sgd", "trimmed-mean"): FedAvgMTrimmedAvg,
    ("adam", "krum"): FedAdamKrum,
    ("adam", "multi-krum"): FedAdamMultiKrum,
    ("adam", "bulyan"): FedAdamBulyan,
    ("sgd", "krum"): FedAvgMKrum,
    ("sgd", "multi-krum"): FedAvgMMultiKrum,
    ("sgd", "bulyan"): FedAvgMBulyan,
}


def _combiner_settings(
    aggregation: str, trim_fraction: float, malicious_nodes: int, multi_krum_select: int
) -> dict[str, Any]:
    """The keyword arguments ``aggregation``'s Flower class takes beyond sampling."""
    if malicious_nodes < 0 or multi_krum_select < 1:
        raise ValueError(
            f"malicious_nodes = {malicious_nodes}, multi_krum_select = {multi_krum_select}: "
            "expected >= 0 and >= 1"
        )
    if aggregation == "trimmed-mean":
        return {"beta": trim_fraction}
    if aggregation in KRUM_FAMILY:
        extra: dict[str, Any] = {"num_malicious_nodes": malicious_nodes}
        if aggregation == "multi-krum":
            extra["num_nodes_to_select"] = multi_krum_select
        return extra
    return {}


def _check(aggregation: str) -> None:
    if aggregation not in COMBINERS:
        raise ValueError(f"aggregation {aggregation!r}: expected one of {', '.join(COMBINERS)}")


def _private(aggregation: str, noise_multiplier: float) -> bool:
    """Whether the combiner adds DP noise; only a uniform mean has the sensitivity it needs."""
    if noise_multiplier > 0.0 and aggregation != "mean":
        raise ValueError(
            f"aggregation = {aggregation!r} with DP noise: the noise is calibrated to the mean "
            "of clipped updates; use aggregation='mean'"
        )
    return noise_multiplier > 0.0


def combiner(
    aggregation: str,
    trim_fraction: float,
    malicious_nodes: int = 0,
    multi_krum_select: int = 1,
    noise_multiplier: float = 0.0,
    clipping_norm: float = 1.0,
    **sampling: Any,
) -> FedAvg:
    """Flower's FedAvg, FedMedian, FedTrimmedAvg (cutting ``trim_fraction`` per tail), Krum,
    MultiKrum (keeping ``multi_krum_select``) or Bulyan (assuming ``malicious_nodes``); with
    ``noise_multiplier`` > 0, the uniform mean plus Gaussian noise (``DPFedAvg``)."""
    _check(aggregation)
    if _private(aggregation, noise_multiplier):
        private = DPFedAvg(**sampling)
        private.set_privacy(noise_multiplier, clipping_norm)
        return private
    settings = _combiner_settings(aggregation, trim_fraction, malicious_nodes, multi_krum_select)
    return COMBINERS[aggregation](**settings, **sampling)


def server_optimizer(
    name: str,
    *,
    lr: float,
    lr_schedule: str = "constant",
    eps: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    aggregation: str = "mean",
    trim_fraction: float = 0.2,
    malicious_nodes: int = 0,
    multi_krum_select: int = 1,
    noise_multiplier: float = 0.0,
    clipping_norm: float = 1.0,
    **sampling: Any,
) -> FedAvg:
    """Flower's FedAdam (``adam``) or FedAvgM without momentum (``sgd``) over ``aggregation``
    (over the noisy mean, ``DPFedAvg``, when ``noise_multiplier`` > 0).

    Adam's epsilon defaults to Flower's own ``tau`` (1e-3, after Reddi et al.), not PyTorch's
    1e-8: the mean sparse update is mostly far below it, so small coordinates step in
    proportion to their update and only large ones are normalised (docs/results.md, FLASC).
    ``eta_l`` is Flower's client-rate bookkeeping, unused by its update; set to ``lr``.
    sgd with lr 1 is FedAvg of the updates, bit for bit.
    """
    _check(aggregation)
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"server optimizer {name!r}: expected one of {', '.join(SERVER_OPTIMIZERS)}"
        )
    private = _private(aggregation, noise_multiplier)
    cls = _OPTIMIZER_CLASSES[(name, aggregation)]
    if private:
        cls = DPFedAdam if name == "adam" else DPFedAvgM
    extra = _combiner_settings(aggregation, trim_fraction, malicious_nodes, multi_krum_select)
    if name == "adam":
        strategy = cls(eta=lr, eta_l=lr, beta_1=beta1, beta_2=beta2, tau=eps, **extra, **sampling)
    else:
        strategy = cls(server_learning_rate=lr, server_momentum=0.0, **extra, **sampling)
    strategy.set_lr_schedule(lr_schedule)  # type: ignore[attr-defined]
    if private:
        strategy.set_privacy(noise_multiplier, clipping_norm)  # type: ignore[attr-defined]
    return strategy


def sampled_aggregator(
    strategy: Strategy | None,
    *,
    aggregation: str,
    trim_fraction: float,
    over_selection: float,
    seed: int | None = None,
    malicious_nodes: int = 0,
    multi_krum_select: int = 1,
    privacy: dict[str, Any] | None = None,
    min_update_cosine: float = NO_COSINE_BOUND,
    update_cosine_scope: str = "global",
    build: Callable[..., FedAvg] = combiner,
    **sampling: Any,
) -> Strategy:
    """The strategy beneath a compression wrapper, sampling nodes from ``seed`` and
    over-selecting: ``strategy`` if given (any Flower strategy), else
    ``build(aggregation=..., trim_fraction=..., **sampling)`` (a combiner, or FLASC's server
    optimizer over one). With ``min_update_cosine`` above -1, replies pointing away from the
    round's median update are dropped first (``MedianDirectionFilter``, its cosine taken over
    ``update_cosine_scope``), so over-selection can fill their places."""
    private = privacy is not None and privacy.get("noise_multiplier", 0.0) > 0.0
    if private and (strategy is not None or over_selection > 0.0):
        raise ValueError(
            "DP noise with strategy= or over_selection > 0: the noise is added by flora's own "
            "mean of the replies it aggregates; use neither"
        )
    filtered = min_update_cosine != NO_COSINE_BOUND
    if private and filtered:
        raise ValueError(
            f"DP noise with min_update_cosine = {min_update_cosine!r}: which replies count "
            "would depend on the others' data, outside DP's accounting; leave it at -1"
        )
    if strategy is None:
        strategy = build(
            aggregation=aggregation,
            trim_fraction=trim_fraction,
            malicious_nodes=malicious_nodes,
            multi_krum_select=multi_krum_select,
            noise_multiplier=privacy["noise_multiplier"] if private else 0.0,
            clipping_norm=privacy["clipping_norm"] if private else 1.0,
            **sampling,
        )
    elif aggregation != "mean":
        raise ValueError(
            f"aggregation = {aggregation!r} with strategy = {type(strategy).__name__}: "
            "give one of them; the given strategy already aggregates"
        )
    sampled: Strategy = NodeSampling(strategy, seed=seed, over_selection=over_selection)
    if filtered:
        sampled = MedianDirectionFilter(
            sampled, min_cosine=min_update_cosine, scope=update_cosine_scope
        )
    if not private:
        return sampled
    return PrivacyAccounting(sampled, **privacy)  # type: ignore[arg-type]
