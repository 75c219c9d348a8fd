"""Walking a stack of strategy wrappers (each holds the next as ``.strategy``, as Flower's DP
wrappers do), and the base of wrappers that change only some of the calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class Forwarding(Strategy):
    """A wrapper that passes every call to ``strategy``; subclasses override what they change
    (as Flower's own DP wrappers forward what they leave alone)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def strategy_chain(strategy: Strategy) -> Iterator[Strategy]:
    """``strategy``, then what it wraps, down to the strategy that aggregates."""
    while strategy is not None:
        yield strategy
        strategy = getattr(strategy, "strategy", None)


def innermost(strategy: Strategy) -> Strategy:
    """The strategy at the bottom of the stack (the one holding any optimizer state)."""
    *_, last = strategy_chain(strategy)
    return last


def take_round_metrics(strategy: Strategy) -> dict[str, float]:
    """Every wrapper's per-round extras (``take_round_metrics``), merged; each resets."""
    out: dict[str, float] = {}
    for part in strategy_chain(strategy):
        take = getattr(part, "take_round_metrics", None)
        if callable(take):
            out.update(take())
    return out
