"""Builders the tests share: hand-made Flower messages and contexts, small adapter sets, a
one-node grid to drive a strategy's ``configure_train``, well-formed and broken replies, and a
``LocalGrid`` that delivers a ServerApp's messages to the real ClientApp in this process.

Simulation gives every run fresh random node ids, so which partition a sampled node holds
differs between two runs of the same seed; tests that compare whole runs use ``LocalGrid``,
whose node ids (and so Flower's sampling) are the same every time. Messages still go through the
real ``flora_app.client_app.app`` with its mods.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flora_app.results import read_rounds
from strategies.codecs import codec_spec, decode_blob, get_codec
from strategies.compression import CompressionStrategy
from strategies.wire import (
    blob_to_record,
    encode_content,
    make_header,
    numpy_to_record,
    record_to_blob,
)


def untimed(record: dict) -> dict:
    """A round's record without its wall-clock figures (every ``*seconds`` key): the only
    fields two identical runs may disagree on."""
    return {k: v for k, v in record.items() if not k.endswith("seconds")}


def untimed_rounds(run_dir: Path) -> list[dict]:
    return [untimed(r) for r in read_rounds(run_dir)]


def make_message(
    content: RecordDict, message_type: str = "train", src: int = 0, dst: int = 7, mid: str = "m"
) -> Message:
    """A message with full metadata, as a SuperLink would deliver it (no TaskIdentity needed)."""
    metadata = Metadata(
        run_id=1,
        message_id=mid,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


def make_context(run_config: dict, partition_id: int = 0, num_partitions: int = 4) -> Context:
    return Context(
        run_id=1,
        node_id=7 + partition_id,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=run_config,
    )


def make_arrays(seed: int, scale: float = 1.0) -> OrderedDict:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        a=(rng.normal(size=(4, 3, 3, 3)) * scale).astype(np.float32),
        w=(rng.normal(size=(5, 6)) * scale).astype(np.float32),
        b=(rng.normal(size=5) * scale).astype(np.float32),
    )


class OneNodeGrid:
    """Just enough of a Grid for FedAvg's sampling; messages are built, not sent."""

    def get_node_ids(self) -> list[int]:
        return [7]


def send_round(strategy: CompressionStrategy, global_arrays: OrderedDict) -> OrderedDict:
    """Run the real configure_train once; return what the client receives (decoded)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    (msg,) = strategy.configure_train(
        1, numpy_to_record(global_arrays), ConfigRecord({"lr": 0.1}), OneNodeGrid()
    )
    return decode_blob(record_to_blob(msg.content["arrays"]))


def make_reply(arrays: OrderedDict, n: int, src: int, codec: str, mode: str = "weights"):
    content = RecordDict(
        {"arrays": numpy_to_record(arrays), "metrics": MetricRecord({"num-examples": n})}
    )
    encoded = encode_content(content, get_codec(codec), make_header(codec, reply=mode))
    return make_message(encoded, src=src, mid=str(src))


def weighted_mean(clients: list[tuple[OrderedDict, int]]) -> dict:
    total = sum(n for _, n in clients)
    return {k: sum(a[k].astype(np.float64) * n for a, n in clients) / total for k in clients[0][0]}


def make_content(
    arrays: OrderedDict, metrics: dict, codec: str, mode: str = "weights"
) -> RecordDict:
    content = RecordDict({"arrays": numpy_to_record(arrays), "metrics": MetricRecord(metrics)})
    return encode_content(content, get_codec(codec), make_header(codec, reply=mode))


def with_blob(content: RecordDict, edit: Callable[[bytearray], bytes | bytearray]) -> RecordDict:
    """The same reply with its payload bytes edited."""

    blob = bytearray(record_to_blob(content["arrays"]))
    content["arrays"] = blob_to_record(bytes(edit(blob)))
    return content


def nan_in_body(blob: bytearray) -> bytearray:
    """Overwrite the last fp32 value of the body with NaN (the encoder itself refuses NaN)."""
    blob[-4:] = struct.pack("<f", float("nan"))
    return blob


def bad_reply(kind: str, codec: str) -> RecordDict:
    good = make_arrays(3)
    metrics = {"num-examples": 1000, "train-loss": 0.5}
    if kind == "wrong-codec":
        return make_content(good, metrics, "fp32" if codec != "fp32" else "fp16")
    if kind == "wrong-bits":
        return make_content(good, metrics, codec_spec(2))
    if kind == "wrong-mode":
        return make_content(good, metrics, codec, mode="update")
    if kind == "wrong-shape":
        good["a"] = good["a"][:2]
        return make_content(good, metrics, codec)
    if kind == "missing-tensor":
        del good["b"]
        return make_content(good, metrics, codec)
    if kind == "extra-tensor":
        good["z"] = np.ones(3, np.float32)
        return make_content(good, metrics, codec)
    if kind == "nan-value":
        return with_blob(make_content(good, metrics, codec), nan_in_body)
    if kind == "truncated":
        return with_blob(make_content(good, metrics, codec), lambda b: b[: len(b) // 2])
    if kind == "bad-magic":
        return with_blob(make_content(good, metrics, codec), lambda b: b"XXXX" + b[4:])
    if kind == "oversized":
        return with_blob(make_content(good, metrics, codec), lambda b: b + bytes(1 << 20))
    if kind.startswith("examples="):
        value = {"zero": 0, "negative": -5, "fraction": 2.5, "huge": 10**9}[kind.split("=")[1]]
        return make_content(good, {**metrics, "num-examples": value}, codec)
    if kind == "no-examples":
        return make_content(good, {"train-loss": 0.5}, codec)
    if kind == "nan-metric":
        return make_content(good, {**metrics, "train-loss": float("nan")}, codec)
    if kind == "two-array-records":
        content = make_content(good, metrics, codec)
        content["extra"] = numpy_to_record(good)
        return content
    if kind == "no-metrics":
        content = make_content(good, metrics, codec)
        del content["metrics"]
        return content
    if kind == "unexpected-config":
        content = make_content(good, metrics, codec)
        content["sneaky"] = ConfigRecord({"x": 1})
        return content
    raise AssertionError(kind)


class StopRunError(Exception):
    """Raised by the grid to cut a run short, as a killed server would be."""


class InProcessGrid(Grid):
    """What every test grid shares: the run, and messages made as Flower's Grid makes them."""

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)


class LocalGrid(InProcessGrid):
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
        self._replies: dict[str, Message] = {}  # pushed messages' replies, by their ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delivers each message to the real ClientApp now; ``pull_messages`` hands out the
        replies (what the ServerApp's partition query uses)."""
        ids = []
        for reply in self.send_and_receive(messages):
            ids.append(reply.metadata.reply_to_message_id)
            self._replies[ids[-1]] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        from flora_app.client_app import app as client_app

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


def global_state(run_config: dict):  # type: ignore[no-untyped-def]
    """The model spec and the initial exchanged state the server would send for ``run_config``."""
    from flora_app.config import FloraConfig
    from flora_app.ml.data import load_dataset
    from flora_app.ml.lora import build_trainable, exchanged_state
    from flora_app.task import data_spec, model_spec

    cfg = FloraConfig.from_run_config(run_config)
    spec = model_spec(cfg, load_dataset(data_spec(cfg)))
    return spec, exchanged_state(build_trainable(spec), spec)


def train_content(run_config: dict, fingerprint: str | None = None) -> RecordDict:
    """A round-1 train message's content, as the server builds it (plain fp32)."""
    from flora_app.ml.lora import base_fingerprint_of

    spec, state = global_state(run_config)
    config = ConfigRecord(
        {
            "lr": 0.05,
            "local-epochs": 1,
            "batch-size": 16,
            "momentum": 0.9,
            "server-round": 1,
            "base-fingerprint": fingerprint or base_fingerprint_of(spec),
        }
    )
    return RecordDict({"arrays": numpy_to_record(state), "config": config})
