"""Same seed, same run: nodes are known to the server by their ``partition-id``, not their id.

Flower's strategies sample with ``random.sample(grid.get_node_ids(), k)``. The seeded global
``random`` makes the sampled *positions* reproducible, but simulation gives every run fresh
random node ids in no fixed order, so which partition sat at a position, and so which data
trained, changed between two runs of the same seed. ``PartitionOrderedGrid`` asks each node
once for its ``partition-id`` (a ``query`` message its ClientApp answers from its node config)
and lists nodes in partition order; replies come back in that order too, so the aggregate is
summed in the same order every run. Deployment keeps the rule for every node that is online
and answers; one that does not answer is listed after the others, by node id.

The query waits while answers keep coming, not for a fixed time: a simulation runs the
ClientApps a few at a time, so 10,000 nodes answer over minutes (measured: about 1,600 in the
first 120 s on a loaded 2-core machine), while a dead node in a deployment never answers.
Only ``QUERY_TIMEOUT`` seconds without any new answer end the wait.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from flora_app.task import ASK_KEY, ASK_PARTITION
from flora_app.tiers import TIER_KEY
from strategies.choices import DOWNLINK_MBPS_KEY, UPLINK_MBPS_KEY
from strategies.grid_view import GridView

QUERY_TIMEOUT = 120.0  # seconds without a new answer that end the partition query
PULL_INTERVAL = 0.5  # seconds between polls for answers


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rate(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
    )


def partition_query() -> RecordDict:
    return RecordDict({"config": ConfigRecord({ASK_KEY: ASK_PARTITION})})


class PartitionOrderedGrid(GridView):
    """A Grid that lists nodes, and returns replies, in ``partition-id`` order.

    Queries for partition ids go straight to the wrapped grid, so a ``MeteredGrid`` around this
    one does not count them as round traffic.
    """

    def __init__(
        self, grid: Grid, timeout: float = QUERY_TIMEOUT, pull_interval: float = PULL_INTERVAL
    ) -> None:
        super().__init__(grid)
        self._timeout = timeout
        self._pull_interval = pull_interval
        self._partition: dict[int, int] = {}
        self._tier: dict[int, int] = {}  # tiers nodes declared in their node config
        self._link: dict[int, tuple[float, float]] = {}  # declared (down, up) Mbit/s
        self._silent: set[int] = set()  # asked, no usable answer: ordered last, not re-asked

    def _answers(self, asks: list[Message]) -> Iterable[Message]:
        """Replies to ``asks`` until all are in or none came for ``timeout`` seconds."""
        waiting = set(self._grid.push_messages(asks))
        last_answer = time.monotonic()
        while waiting:
            replies = list(self._grid.pull_messages(waiting))
            waiting -= {reply.metadata.reply_to_message_id for reply in replies}
            yield from replies
            if replies:
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > self._timeout:
                return
            if waiting:
                time.sleep(self._pull_interval)

    def _learn(self, nodes: list[int]) -> None:
        unknown = [n for n in nodes if n not in self._partition and n not in self._silent]
        if not unknown:
            return
        asks = [
            Message(
                partition_query(), dst_node_id=node, message_type="query", group_id="partition-id"
            )
            for node in unknown
        ]
        for reply in self._answers(asks):
            node = reply.metadata.src_node_id
            value = tier = None
            metrics = {}
            if not reply.has_error():
                metrics = reply.content.get("metrics", {})
                value, tier = metrics.get(ASK_PARTITION), metrics.get(TIER_KEY)
            if _index(value):
                self._partition[node] = value
            if _index(tier):
                self._tier[node] = tier
            down, up = metrics.get(DOWNLINK_MBPS_KEY), metrics.get(UPLINK_MBPS_KEY)
            if _rate(down) and _rate(up):
                self._link[node] = (float(down), float(up))
        silent = [node for node in unknown if node not in self._partition]
        if silent:
            self._silent.update(silent)
            shown = ", ".join(str(n) for n in silent[:3]) + (", ..." if len(silent) > 3 else "")
            log(
                WARNING,
                "%d of %d nodes did not tell their partition-id (%s); they are sampled last",
                len(silent),
                len(unknown),
                shown,
            )

    def partition_of(self, node: int) -> int | None:
        return self._partition.get(node)

    def declared_tier(self, node: int) -> int | None:
        return self._tier.get(node)

    def declared_link(self, node: int) -> tuple[float, float] | None:
        """(down, up) Mbit/s the node declared in its node config, if it did."""
        return self._link.get(node)

    def known_partitions(self) -> list[int]:
        return sorted(set(self._partition.values()))

    def _key(self, node: int) -> tuple[int, int, int]:
        if node in self._partition:
            return (0, self._partition[node], node)
        return (1, 0, node)

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self._grid.get_node_ids())
        self._learn(nodes)
        return sorted(nodes, key=self._key)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        return sorted(replies, key=lambda m: self._key(m.metadata.src_node_id))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        return sorted(replies, key=lambda m: self._key(m.metadata.src_node_id))
