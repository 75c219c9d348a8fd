"""Node sampling from a generator of its own, with over-selection.

Flower's FedAvg family samples with the module-level ``random``. Other threads of a ServerApp
process draw from that same generator at moments that depend on load: Flower's heartbeat
sender every 20-30 s, its object pulls when they retry. So two runs of one seed sampled
different nodes from the first round after such a draw on (seen as the same-seed FLASC test
failing at round 2 now and then). ``NodeSampling`` draws each round's sample itself, from
``numpy.random.default_rng([seed, round, kind])``: a function of the seed, the round and the
listed nodes only. A resumed run therefore samples what the uninterrupted run would have,
with no generator state to checkpoint. The inner strategy is handed a grid that lists just the
sampled nodes, and takes them all.

Over-selection: production FL samples more nodes than a round needs, so that a round keeps its
participation when some replies are rejected or never arrive. With ``over_selection`` > 0 the
training sample is that much larger, and only the first ``fraction_train``'s worth of valid
replies, in sampling order (or in simulated arrival order, when ``strategies.link_clock`` timed
them), reach the inner strategy; the others are counted as ``spare_replies``. Place this
wrapper *below* the compression wrapper, so that "valid" means
decoded and validated.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from strategies.grid_view import GridView
from strategies.links import ARRIVAL_KEY

MAX_OVER_SELECTION = 10.0
_KINDS = {"train": 0, "evaluate": 1}  # one stream per kind, so evaluation never shifts training


def sampled_positions(seed: int, server_round: int, kind: str, count: int, size: int) -> np.ndarray:
    """Which of ``count`` listed nodes round ``server_round`` samples for ``kind``, in sampling
    order: positions in the listing (partition order under ``PartitionOrderedGrid``), so that
    a tool can tell which partitions a round of a run trained."""
    rng = np.random.default_rng([seed, server_round, _KINDS[kind]])
    return rng.choice(count, size=size, replace=False)


class _Listing(GridView):
    """The grid, listing only the sampled nodes (in sampling order)."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        super().__init__(grid)
        self._nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)


@contextmanager
def _attributes(strategy: Strategy, **values: Any):  # type: ignore[no-untyped-def]
    """Set attributes of ``strategy`` for one call, then put its own settings back."""
    saved = {name: getattr(strategy, name) for name in values}
    try:
        for name, value in values.items():
            setattr(strategy, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(strategy, name, value)


def _arrival(msg: Message) -> float | None:
    """A reply's simulated arrival (``strategies.link_clock``), if it was timed."""
    for record in msg.content.metric_records.values():
        if ARRIVAL_KEY in record:
            return float(record[ARRIVAL_KEY])
    return None


class NodeSampling(Strategy):
    """Sample ``strategy``'s nodes from a seeded generator; over-select training if asked.

    Parameters
    ----------
    strategy : Strategy
        The strategy that configures and aggregates. Sampling is taken over when it samples by
        ``fraction_train`` / ``fraction_evaluate`` as Flower's FedAvg family does; any other
        strategy samples as it likes, and over-selection does not apply to it.
    seed : int | None (default: None)
        Seeds every round's sample. None draws one from the system's entropy once.
    over_selection : float (default: 0.0)
        The share of extra nodes sampled per training round, in [0, 10]: 0.4 samples 7 nodes
        where ``fraction_train`` asks for 5. 0 passes every reply through.
    """

    def __init__(
        self, strategy: Strategy, *, seed: int | None = None, over_selection: float = 0.0
    ) -> None:
        if not 0.0 <= over_selection <= MAX_OVER_SELECTION:
            raise ValueError(
                f"over_selection = {over_selection!r}: expected a number in "
                f"[0, {MAX_OVER_SELECTION:g}]"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed = {seed!r}: expected an integer >= 0 or None")
        self.strategy = strategy
        self.seed = secrets.randbits(63) if seed is None else seed
        self.over_selection = over_selection
        # How many nodes each kind's latest sample was drawn from: a wrapper that accounts
        # for the sampling (DP) reads it instead of listing the nodes again, which could
        # return another population than the one sampled.
        self.population: dict[str, int] = {}
        self._target = 0  # replies to aggregate this round; 0 = all valid ones
        self._order: dict[int, int] = {}  # node id -> position in this round's sample
        self._metrics: dict[str, float] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def take_round_metrics(self) -> dict[str, float]:
        """``aggregated_replies`` (and ``spare_replies`` when over-selecting) of the round."""
        out, self._metrics = self._metrics, {}
        return out

    # --- sampling ------------------------------------------------------------------------
    def _fraction(self, kind: str) -> float | None:
        fraction = getattr(self.strategy, f"fraction_{kind}", None)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction <= 0:
            return None
        return float(fraction)

    def _size(self, kind: str, count: int, fraction: float) -> int:
        """Flower's FedAvg sample size for ``count`` listed nodes at ``fraction``."""
        return max(
            int(count * min(1.0, fraction)), int(getattr(self.strategy, f"min_{kind}_nodes", 1))
        )

    def positions(self, server_round: int, kind: str, count: int) -> np.ndarray | None:
        """The listing positions round ``server_round`` samples for ``kind`` among ``count``
        nodes, without over-selection's extras; None when the inner strategy does not sample
        by a fraction."""
        fraction = self._fraction(kind)
        if fraction is None:
            return None
        size = self._size(kind, count, fraction)
        return sampled_positions(self.seed, server_round, kind, count, size)

    def _sample(self, server_round: int, kind: str, grid: Grid, extra: float) -> list[int] | None:
        """This round's nodes in sampling order, as many as Flower's FedAvg would sample at
        ``fraction * (1 + extra)``; None when the inner strategy does not sample by a fraction.
        Sets the round's over-selection target for training."""
        fraction = self._fraction(kind)
        if fraction is None:
            return None
        count = len(list(grid.get_node_ids()))
        self.population[kind] = count
        size = self._size(kind, count, fraction * (1.0 + extra))
        if kind == "train" and extra > 0.0:
            self._target = self._size(kind, count, fraction)
        # Flower's own wait for enough nodes (and its log line); a sample of 0 draws nothing.
        least = max(int(getattr(self.strategy, "min_available_nodes", 1)), size)
        _, nodes = sample_nodes(grid, least, 0)
        picks = sampled_positions(self.seed, server_round, kind, len(nodes), size)
        # Flower's own "Sampled k nodes (out of k)" that follows counts the listing it is given.
        log(
            INFO,
            "node sampling: %s, round %d: %d of %d nodes",
            kind,
            server_round,
            size,
            len(nodes),
        )
        return [nodes[int(i)] for i in picks]

    def _configure(
        self,
        kind: str,
        configure: Callable[..., Iterable[Message]],
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        extra: float = 0.0,
    ) -> list[Message]:
        nodes = self._sample(server_round, kind, grid, extra)
        if nodes is None:
            return list(configure(server_round, arrays, config, grid))
        # The inner strategy takes every listed node (fraction 1, no wait), then its own
        # shuffle of them is undone, so messages go out in sampling order.
        with _attributes(self.strategy, **{f"fraction_{kind}": 1.0, "min_available_nodes": 0}):
            messages = list(configure(server_round, arrays, config, _Listing(grid, nodes)))
        position = {node: i for i, node in enumerate(nodes)}
        return sorted(messages, key=lambda m: position.get(m.metadata.dst_node_id, len(nodes)))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._target, self._order = 0, {}
        messages = self._configure(
            "train",
            self.strategy.configure_train,
            server_round,
            arrays,
            config,
            grid,
            extra=self.over_selection,
        )
        if self._target:
            self._order = {m.metadata.dst_node_id: i for i, m in enumerate(messages)}
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._configure(
            "evaluate", self.strategy.configure_evaluate, server_round, arrays, config, grid
        )

    # --- aggregation ---------------------------------------------------------------------
    def _without_spares(self, replies: list[Message]) -> list[Message]:
        """The replies the round keeps: with over-selection, the first ``fraction_train``'s
        worth of valid ones in arrival order (simulated, when ``LinkClock`` timed them all;
        else sampling order). Timed replies also give the round's simulated seconds."""
        valid = [m for m in replies if not m.has_error()]
        arrivals = {id(m): _arrival(m) for m in valid}
        timed = bool(valid) and all(a is not None for a in arrivals.values())
        if self._target:
            last = len(self._order)
            if timed:
                valid.sort(key=lambda m: arrivals[id(m)])  # type: ignore[arg-type,return-value]
            else:
                valid.sort(key=lambda m: self._order.get(m.metadata.src_node_id, last))
            spare = {id(m) for m in valid[self._target :]}
            self._metrics["spare_replies"] = float(len(spare))
            valid = [m for m in valid if id(m) not in spare]
            replies = [m for m in replies if id(m) not in spare]
        if timed:
            kept = [arrivals[id(m)] for m in valid]
            self._metrics["sim_round_seconds"] = max(a for a in kept if a is not None)
        return replies

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self._without_spares(list(replies))
        self._metrics["aggregated_replies"] = float(sum(not m.has_error() for m in kept))
        return self.strategy.aggregate_train(server_round, kept)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
