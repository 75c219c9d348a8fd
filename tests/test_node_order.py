"""The partition query of ``flora_app.node_order``: it waits while answers keep coming (a
simulation answers 10,000 nodes over minutes) and stops only after ``timeout`` seconds with
none, so a node that never answers costs one timeout and is listed last."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, Metadata, MetricRecord, RecordDict

from flora_app.node_order import PartitionOrderedGrid
from flora_app.task import ASK_PARTITION
from tests.helpers import InProcessGrid


class _TricklingGrid(InProcessGrid):
    """Answers one query per pull, the way a simulation works through a backlog; the nodes in
    ``silent`` never answer."""

    def __init__(self, partitions: dict[int, int], silent: set[int]) -> None:
        self.partitions, self.silent = partitions, silent
        self.queue: list[Message] = []
        self.pulls = 0

    def get_node_ids(self) -> Iterable[int]:
        return [*self.partitions, *self.silent]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            ids.append(f"q{i}")
            if node in self.silent:
                continue
            answer = MetricRecord({ASK_PARTITION: self.partitions[node]})
            metadata = Metadata(
                run_id=1,
                message_id=f"r{i}",
                src_node_id=node,
                dst_node_id=0,
                reply_to_message_id=ids[-1],
                group_id="partition-id",
                created_at=time.time(),
                ttl=3600.0,
                message_type="query",
            )
            self.queue.append(Message(metadata=metadata, content=RecordDict({"metrics": answer})))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        wanted = set(message_ids)
        ready = [m for m in self.queue[:1] if m.metadata.reply_to_message_id in wanted]
        self.queue = self.queue[len(ready) :]
        return ready

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("the partition query must not use a fixed timeout")


def test_a_slow_backlog_is_waited_for_and_a_silent_node_is_listed_last(
    warnings_log: list[str],
) -> None:
    # 30 answers, one per pull every 10 ms: 0.3 s in all, far past the 0.05 s timeout, which
    # only counts time without any new answer.
    partitions = {100 + n: 29 - n for n in range(30)}
    grid = _TricklingGrid(partitions, silent={7})
    ordered = PartitionOrderedGrid(grid, timeout=0.05, pull_interval=0.01)
    started = time.monotonic()
    nodes = list(ordered.get_node_ids())
    waited = time.monotonic() - started

    assert [ordered.partition_of(n) for n in nodes[:30]] == list(range(30))
    assert nodes[30] == 7 and ordered.partition_of(7) is None
    assert waited >= 0.3  # it outlasted the timeout while answers came
    assert [w for w in warnings_log if "did not tell" in w] == [
        "1 of 31 nodes did not tell their partition-id (7); they are sampled last"
    ]
    # Asked once: listing the nodes again neither re-asks the silent node nor waits.
    pulls = grid.pulls
    assert list(ordered.get_node_ids()) == nodes and grid.pulls == pulls
