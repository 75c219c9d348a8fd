"""Over-selection: sample more nodes than a round needs, aggregate the first valid replies.

Production FL over-selects so that a round keeps its participation when some replies are
rejected or never arrive. This wrapper holds any Flower strategy that samples by
``fraction_train`` (FedAvg and its family): it raises that fraction for the sampling call only,
and passes down only the first ``fraction_train``'s worth of valid replies in sampling order;
the others are counted as ``spare_replies``. Place it *below* the compression wrapper, so that
"valid" means decoded and validated.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class OverSelection(Strategy):
    """Sample ``over_selection`` more nodes than ``strategy`` asks for; aggregate as many as it
    asked for.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples and aggregates; it must have ``fraction_train`` and may have
        ``min_train_nodes`` (as Flower's FedAvg family does) for over-selection to apply.
    over_selection : float (default: 0.0)
        The share of extra nodes sampled per training round, in [0, 10]: 0.4 samples 7 nodes
        where ``fraction_train`` asks for 5. 0 passes every message and reply through.
    """

    def __init__(self, strategy: Strategy, over_selection: float = 0.0) -> None:
        if not 0.0 <= over_selection <= 10.0:
            raise ValueError(f"over_selection = {over_selection!r}: expected a number in [0, 10]")
        self.strategy = strategy
        self.over_selection = over_selection
        self._target = 0  # replies to aggregate this round; 0 = all valid ones
        self._order: dict[int, int] = {}  # node id -> position in this round's sample
        self._metrics: dict[str, float] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def take_round_metrics(self) -> dict[str, float]:
        """``aggregated_replies`` (and ``spare_replies`` when over-selecting) of the round."""
        out, self._metrics = self._metrics, {}
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's messages, sampled from an enlarged fraction if over-selecting.

        Flower's strategies size their sample from ``fraction_train`` when they configure,
        so it is raised for that call only, and the target is what it would have sampled."""
        fraction = getattr(self.strategy, "fraction_train", None)
        self._target, self._order = 0, {}
        if self.over_selection <= 0.0 or not isinstance(fraction, (int, float)) or fraction <= 0:
            return list(self.strategy.configure_train(server_round, arrays, config, grid))
        available = len(list(grid.get_node_ids()))
        least = int(getattr(self.strategy, "min_train_nodes", 1))
        self._target = max(int(available * fraction), least)
        self.strategy.fraction_train = min(1.0, fraction * (1.0 + self.over_selection))
        try:
            messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        finally:
            self.strategy.fraction_train = fraction
        self._order = {m.metadata.dst_node_id: i for i, m in enumerate(messages)}
        return messages

    def _without_spares(self, replies: list[Message]) -> list[Message]:
        if not self._target:
            return replies
        last = len(self._order)
        valid = sorted(
            (m for m in replies if not m.has_error()),
            key=lambda m: self._order.get(m.metadata.src_node_id, last),
        )
        spare = {id(m) for m in valid[self._target :]}
        self._metrics["spare_replies"] = float(len(spare))
        return [m for m in replies if id(m) not in spare]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self._without_spares(list(replies))
        self._metrics["aggregated_replies"] = float(sum(not m.has_error() for m in kept))
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
