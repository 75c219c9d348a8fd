"""Reject replies whose update points away from the round's coordinate-wise median update.

A sign-flipped or label-flipped update keeps an honest norm, so a norm bound cannot see it, and
with 10 non-IID replies a round Flower's coordinate-wise combiners let most of it through
(trimmed mean) or cost 3-5 points with no attacker at all (trimmed mean, multi-krum:
docs/robustness.md). What a flipped update does change is its direction: its cosine with the
median of the round's updates is negative. This filter drops such replies and leaves every
other one as it is, so a round where every cosine clears the bound aggregates exactly what the
strategy would have aggregated without it.

It is one element of FLAME's filter (Nguyen et al., USENIX Security 2022: cosine distances
between updates, clustered with HDBSCAN) cut down to a threshold against the coordinate-wise
median (the median stands for the honest majority; with fewer than half the replies Byzantine
it is not pulled across zero on the coordinates where the honest updates agree). No library
offers it as a Flower strategy, so it is written here, on Flower's message types only: it
knows nothing of codecs or models.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.chain import Forwarding
from strategies.choices import NO_COSINE_BOUND
from strategies.validation import rejected_reply

# Fewer valid replies than this give no median to judge by: with 2, the median is their mean,
# which a flipped reply cancels to zero.
MIN_REPLIES = 3


def _flat_update(msg: Message, sent: dict[str, np.ndarray]) -> np.ndarray:
    """The reply's weights minus the global it was sent, all tensors in one vector."""
    (record,) = msg.content.array_records.values()
    return np.concatenate(
        [(record[k].numpy().astype(np.float32) - g).ravel() for k, g in sent.items()]
    )


def median_cosines(updates: np.ndarray) -> np.ndarray:
    """Each row's cosine with the coordinate-wise median of the rows (Flower's FedMedian takes
    the same ``np.median``); 1 for every row when the median is zero (nothing to judge by)."""
    median = np.median(updates, axis=0)
    median_norm = float(np.linalg.norm(median))
    if median_norm == 0.0:
        return np.ones(len(updates))
    norms = np.linalg.norm(updates, axis=1)
    # An all-zero update has no direction: cosine 0.
    return (updates @ median) / np.maximum(norms * median_norm, np.finfo(np.float32).tiny)


class MedianDirectionFilter(Forwarding):
    """Turn each reply whose update has a cosine below ``min_cosine`` with the round's
    coordinate-wise median update into an error reply, which Flower's strategies skip.

    The strategy beneath aggregates the rest as it would have; each dropped reply is logged
    with its node and cosine and counted as ``outlier_replies``.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples and aggregates plain weights (a ``NodeSampling`` stack):
        over-selection then fills a dropped reply's place with a spare one.
    min_cosine : float
        In (-1, 1]. 0 drops the updates that point against the median, the sign flips.
    """

    def __init__(self, strategy: Strategy, *, min_cosine: float) -> None:
        if not NO_COSINE_BOUND < min_cosine <= 1.0:
            raise ValueError(f"min_cosine = {min_cosine!r}: expected a number in (-1, 1]")
        super().__init__(strategy)
        self.min_cosine = float(min_cosine)
        self._sent: dict[str, np.ndarray] = {}
        self._metrics: dict[str, float] = {}

    def take_round_metrics(self) -> dict[str, float]:
        """``outlier_replies`` of the round."""
        out, self._metrics = self._metrics, {}
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [i for i, m in enumerate(replies) if not m.has_error()]
        self._metrics["outlier_replies"] = 0.0
        if len(valid) >= MIN_REPLIES:
            updates = np.stack([_flat_update(replies[i], self._sent) for i in valid])
            cosines = median_cosines(updates)
            for i, cosine in zip(valid, cosines, strict=True):
                if cosine < self.min_cosine:
                    replies[i] = self._outlier(server_round, replies[i], float(cosine))
        return self.strategy.aggregate_train(server_round, replies)

    def _outlier(self, server_round: int, msg: Message, cosine: float) -> Message:
        self._metrics["outlier_replies"] += 1
        return rejected_reply(
            server_round,
            msg,
            f"update's cosine {cosine:.3g} with the round's median update is below "
            f"min-update-cosine {self.min_cosine:g}",
        )
