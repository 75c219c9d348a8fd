"""Continue a run's round numbering after a resume.

Flower's ``Strategy.start`` counts rounds from 1 in every run. A run resumed after round ``k``
must go on as round ``k + 1``: per-round schedules, the server optimizer's bias correction and
the ``server-round`` the clients receive all read the round number. This wrapper adds ``k`` to
every round the strategy beneath sees.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class RoundOffset(Strategy):
    """Present rounds ``offset + 1, offset + 2, ...`` to ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        Any Flower strategy.
    offset : int
        Rounds completed before this ``start`` (a resumed run's checkpoint round), >= 0.
    """

    def __init__(self, strategy: Strategy, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset = {offset!r}: expected an integer >= 0")
        self.strategy = strategy
        self.offset = offset

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)
