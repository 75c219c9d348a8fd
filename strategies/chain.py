"""Walking a stack of strategy wrappers (each holds the next as ``.strategy``, as Flower's DP
wrappers do)."""

from __future__ import annotations

from collections.abc import Iterator

from flwr.serverapp.strategy import Strategy


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
