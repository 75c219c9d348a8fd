"""Bytes on the wire, measured the way Flower serializes a message, never estimated.

Since Flower 1.20 a message travels as its metadata (a protobuf ``Message`` with empty
content), its object tree, and every nested object (RecordDict, ArrayRecord, Array,
ArrayChunk, ConfigRecord, ...) deflated to bytes and addressed by content hash. Identical
objects inside one message are sent once, exactly as Flower's push/pull does. The sum of those
three parts is what one SuperNode's link carries for that message.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from flwr.app import Message, Metadata, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

from strategies.grid_view import GridView

# Run, node and task ids are random 64-bit numbers: as protobuf varints they take 1-10 bytes
# depending on the draw, and a message carries them twice (its header and its own serialized
# object), so the same message differed by a few bytes between two runs of one seed. They are
# counted at their full width (10 bytes, what half of all ids take): counts are reproducible,
# and over-count a message by at most a few bytes, never under-count it.
FULL_WIDTH_ID = 2**64 - 1


def _with_full_width_ids(message: Message) -> Message:
    md = message.metadata
    metadata = Metadata(
        run_id=FULL_WIDTH_ID,
        message_id=md.message_id,
        src_node_id=FULL_WIDTH_ID,
        dst_node_id=FULL_WIDTH_ID,
        reply_to_message_id=md.reply_to_message_id,
        group_id=md.group_id,
        created_at=md.created_at,
        ttl=md.ttl,
        message_type=md.message_type,
        src_task_id=None if md.src_task_id is None else FULL_WIDTH_ID,
        dst_task_id=None if md.dst_task_id is None else FULL_WIDTH_ID,
    )
    if message.has_error():
        return Message(metadata=metadata, error=message.error)
    return Message(metadata=metadata, content=message.content)


def message_wire_bytes(message: Message) -> int:
    """Serialized size of one message: metadata + object tree + every distinct object (ids at
    full width, see ``FULL_WIDTH_ID``)."""
    message = _with_full_width_ids(message)
    header = message_to_proto(remove_content_from_message(message)).ByteSize()
    if message.has_error():
        return header
    tree = get_object_tree(message).ByteSize()
    objects = sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
    return header + tree + objects


def standalone_message(content: RecordDict, message_type: str = "train") -> Message:
    """A message with full metadata outside a running app, for offline size measurements.

    The metadata fields have the sizes a SuperLink gives them (64-hex message ids), so its
    serialized size is that of a real message with the same content.
    """
    metadata = Metadata(
        run_id=2**63 - 1,
        message_id="f" * 64,
        src_node_id=2**63 - 1,
        dst_node_id=2**63 - 1,
        reply_to_message_id="f" * 64,
        group_id="1000",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


def _category(message: Message) -> str:
    """``train`` / ``evaluate`` / ``query`` from a message type like ``train.custom``."""
    return message.metadata.message_type.split(".", 1)[0]


class MeteredGrid(GridView):
    """A Grid that delegates everything and counts the bytes of every message both ways.

    Counts accumulate per (category, direction) until ``take()`` returns and resets them; the
    ServerApp takes them once per round. Measuring after the send means outgoing messages
    carry the message id Flower assigned, as on the wire.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._bytes: dict[tuple[str, str], int] = defaultdict(int)
        self._count: dict[tuple[str, str], int] = defaultdict(int)
        # node -> [bytes sent to it, bytes of its reply] in the latest training exchange
        self._train: dict[int, list[int]] = {}

    def _add(self, messages: Iterable[Message], direction: str) -> None:
        messages = list(messages)
        if direction == "down" and any(_category(m) == "train" for m in messages):
            self._train.clear()  # a new training exchange
        for msg in messages:
            key = (_category(msg), direction)
            size = message_wire_bytes(msg)
            self._bytes[key] += size
            self._count[key] += 1
            if key[0] == "train":
                if direction == "down":
                    self._train[msg.metadata.dst_node_id] = [size, 0]
                else:
                    self._train.setdefault(msg.metadata.src_node_id, [0, 0])[1] = size

    def train_bytes(self, node: int) -> tuple[int, int]:
        """(bytes sent to ``node``, bytes of its reply) in the latest training exchange."""
        down, up = self._train.get(node, (0, 0))
        return down, up

    def take(self) -> dict[str, int]:
        """Bytes and message counts since the last call, as ``{"train_up_bytes": ..., ...}``."""
        out = {f"{c}_{d}_bytes": n for (c, d), n in self._bytes.items()}
        out.update({f"{c}_{d}_messages": n for (c, d), n in self._count.items()})
        self._bytes.clear()
        self._count.clear()
        return out

    # --- what is counted; the rest of the Grid API is forwarded by GridView ----------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = self._grid.push_messages(messages)
        self._add(messages, "down")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        self._add(replies, "up")
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._add(messages, "down")
        self._add(replies, "up")
        return replies
