"""A Grid that delivers the ServerApp's messages to the real ClientApp, in this process.

Simulation gives every run fresh random node ids, so which partition a sampled node holds
differs between two runs of the same seed; tests that compare whole runs need the node ids (and
so Flower's sampling) to be the same every time. Messages still go through the real
``flora_app.client_app.app`` with its mods, and through ``MeteredGrid`` for the bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, Metadata, RecordDict
from flwr.serverapp import Grid

from flora_app.client_app import app as client_app


class StopRunError(Exception):
    """Raised by the grid to cut a run short, as a killed server would be."""


class LocalGrid(Grid):
    def __init__(
        self,
        run_config: dict,
        num_nodes: int,
        before_train: Callable[[int], None] | None = None,
    ) -> None:
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=run_config,
            )
            for i, node in enumerate(self.node_ids)
        }
        self.before_train = before_train
        # Messages built by strategies take their run and task from Flower's task identity,
        # which a SuperLink would set for the ServerApp process.
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.train_rounds = 0
        self.trained_nodes: set[int] = set()

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the ServerApp uses send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the ServerApp uses send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.train_rounds += 1
            if self.before_train is not None:
                self.before_train(self.train_rounds)
        replies = []
        for msg in messages:
            dst = msg.metadata.dst_node_id
            delivered = Message(
                metadata=Metadata(
                    run_id=1,
                    message_id=uuid.uuid4().hex,
                    src_node_id=0,
                    dst_node_id=dst,
                    reply_to_message_id="",
                    group_id=msg.metadata.group_id,
                    created_at=time.time(),
                    ttl=3600.0,
                    message_type=msg.metadata.message_type,
                ),
                content=msg.content,
            )
            reply = client_app(delivered, self.contexts[dst])
            reply.metadata.__dict__["_src_node_id"] = dst
            if msg.metadata.message_type == "train":
                self.trained_nodes.add(dst)
            replies.append(reply)
        return replies
