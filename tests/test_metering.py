"""Bytes are measured from Flower's own serialization of a message."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from flora_app.metering import message_wire_bytes
from strategies.wire import numpy_to_record
from tests.helpers import make_message


def _message(*arrays: np.ndarray):
    record = numpy_to_record(OrderedDict((f"t{i}", a) for i, a in enumerate(arrays)))
    return make_message(RecordDict({"arrays": record, "config": ConfigRecord({"lr": 0.1})}))


def test_size_is_payload_plus_a_small_measured_framing() -> None:
    rng = np.random.default_rng(0)
    payload = rng.normal(size=100_000).astype(np.float32)
    size = message_wire_bytes(_message(payload))
    assert 400_000 < size < 400_000 + 2_000


def test_every_tensor_costs_framing_bytes() -> None:
    rng = np.random.default_rng(0)
    one = message_wire_bytes(_message(rng.normal(size=1000).astype(np.float32)))
    many = message_wire_bytes(
        _message(*[rng.normal(size=100).astype(np.float32) for _ in range(10)])
    )
    assert many - one > 9 * 100  # same payload, ten Arrays: hundreds of bytes more framing


def test_identical_objects_travel_once_as_in_flowers_push() -> None:
    zeros = np.zeros(50_000, np.float32)
    msg = _message(zeros, zeros.copy())
    objects = get_all_nested_objects(msg)
    assert sum(type(o).__name__ == "ArrayChunk" for o in objects.values()) == 1
    assert message_wire_bytes(msg) < 200_000 + 3_000


def test_random_ids_do_not_change_the_count_and_it_never_under_counts() -> None:
    """Run and node ids are random 64-bit draws of 1-10 varint bytes; counted at full width,
    the same message costs the same in every run, and at least what Flower serializes."""
    from flwr.app import Message
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_object_tree

    content = _message(np.ones(10, np.float32)).content
    sizes = []
    for node in (3, 2**40, 2**63 + 5):
        msg = make_message(content, src=node, dst=node + 1)
        msg.metadata.__dict__["_run_id"] = node
        sizes.append(message_wire_bytes(msg))
        real = message_to_proto(remove_content_from_message(msg)).ByteSize()
        real += get_object_tree(msg).ByteSize()
        real += sum(len(o.deflate()) for o in get_all_nested_objects(msg).values())
        assert message_wire_bytes(msg) >= real
        assert isinstance(msg, Message)
    assert len(set(sizes)) == 1
