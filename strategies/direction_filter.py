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
it is not pulled across zero on the coordinates where the honest updates agree). With
``scope='tensor'`` each tensor of a reply is compared with the same tensor of the median and the
reply's cosine is the median of those: measured on one round of real replies
(``benchmarks/defence-probe/attack_cosines.py``), the pretrained model's classifier head holds
most of an update's norm, and honest non-IID heads disagree, so over the whole update an honest
reply can score +0.35 and a flipped one +0.16; tensor by tensor the honest replies score +0.66
to +0.79 and all four flipped ones -0.18 to -0.68. No library
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
from strategies.choices import COSINE_SCOPES, NO_COSINE_BOUND
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


def _cosines_with(updates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's cosine with ``reference`` (non-zero); an all-zero row has no direction: 0."""
    norms = np.linalg.norm(updates, axis=1)
    scale = norms * float(np.linalg.norm(reference))
    return (updates @ reference) / np.maximum(scale, np.finfo(np.float32).tiny)


def median_cosines(updates: np.ndarray) -> np.ndarray:
    """Each row's cosine with the coordinate-wise median of the rows (Flower's FedMedian takes
    the same ``np.median``); 1 for every row when the median is zero (nothing to judge by)."""
    median = np.median(updates, axis=0)
    if not median.any():
        return np.ones(len(updates))
    return _cosines_with(updates, median)


def tensor_median_cosines(updates: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Each row's median, over the tensors (consecutive column blocks of ``sizes``), of its
    cosine with the same block of the coordinate-wise median.

    A block says nothing of a row's direction where the median's block is zero, or the row's
    (a sparse reply that sent none of that tensor): it is left out of that row's median. A row
    with no block left has no direction, 0, as an all-zero update in ``median_cosines``; with
    no informative block in the median at all every row scores 1, as there.
    """
    median = np.median(updates, axis=0)
    bounds = np.cumsum(sizes)[:-1]
    blocks = [
        (block, reference)
        for block, reference in zip(
            np.split(updates, bounds, axis=1), np.split(median, bounds), strict=True
        )
        if reference.any()
    ]
    if not blocks:
        return np.ones(len(updates))
    per_tensor = np.stack(
        [
            np.where(block.any(axis=1), _cosines_with(block, reference), np.nan)
            for block, reference in blocks
        ],
        axis=1,
    )
    sent = ~np.isnan(per_tensor).all(axis=1)
    out = np.zeros(len(updates))
    out[sent] = np.nanmedian(per_tensor[sent], axis=1)
    return out


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
    scope : str (default: "global")
        "global": the cosine of the whole update, all tensors as one vector, with the whole
        median. "tensor": each tensor's cosine with the median's same tensor, and the reply's
        cosine the median of those.
    """

    def __init__(self, strategy: Strategy, *, min_cosine: float, scope: str = "global") -> None:
        if not NO_COSINE_BOUND < min_cosine <= 1.0:
            raise ValueError(f"min_cosine = {min_cosine!r}: expected a number in (-1, 1]")
        if scope not in COSINE_SCOPES:
            raise ValueError(f"scope = {scope!r}: expected one of {', '.join(COSINE_SCOPES)}")
        super().__init__(strategy)
        self.min_cosine = float(min_cosine)
        self.scope = scope
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
            if self.scope == "tensor":
                cosines = tensor_median_cosines(updates, [g.size for g in self._sent.values()])
            else:
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
