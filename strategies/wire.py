"""Flower side of the codecs: payloads in ``ArrayRecord``s, the codec named in the message.

Every compressed message carries a small ``ConfigRecord`` under ``HEADER_KEY``: ``codec`` names
how its arrays are encoded and, on the way down, ``reply-codec`` tells the client how to encode
its reply. The client therefore needs no knowledge of the strategy that sent it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from strategies.codecs import Codec, CodecError, get_codec

HEADER_KEY = "flora.codec"
CODEC = "codec"
REPLY_CODEC = "reply-codec"


def record_to_numpy(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """``{name: ndarray}`` in the record's order."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def numpy_to_record(arrays: OrderedDict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()})


def encode_content(content: RecordDict, codec: Codec, reply_codec: str | None) -> RecordDict:
    """A copy of ``content`` whose ArrayRecords are encoded, plus the codec header."""
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            out[key] = numpy_to_record(codec.encode(record_to_numpy(record)))
        else:
            out[key] = record
    header = ConfigRecord({CODEC: codec.name})
    if reply_codec is not None:
        header[REPLY_CODEC] = reply_codec
    out[HEADER_KEY] = header
    return out


def read_header(content: RecordDict) -> ConfigRecord | None:
    """The codec header of a message, or ``None`` for a plain Flower message."""
    record = content.config_records.get(HEADER_KEY)
    return record if isinstance(record, ConfigRecord) else None


def decode_content(content: RecordDict, expected_codec: str | None = None) -> RecordDict:
    """A copy of ``content`` with plain fp32 ArrayRecords and no header.

    ``expected_codec``: the codec the reader asked for; a payload in any other is refused.
    """
    header = read_header(content)
    if header is None:
        raise CodecError(f"message has no {HEADER_KEY!r} header naming its codec")
    name = header.get(CODEC)
    if not isinstance(name, str):
        raise CodecError(f"header {HEADER_KEY!r} lacks a string {CODEC!r}")
    if expected_codec is not None and name != expected_codec:
        raise CodecError(f"payload codec {name!r} differs from the requested {expected_codec!r}")
    codec = get_codec(name)
    out = RecordDict()
    for key, record in content.items():
        if key == HEADER_KEY:
            continue
        if isinstance(record, ArrayRecord):
            out[key] = numpy_to_record(codec.decode(record_to_numpy(record)))
        else:
            out[key] = record
    return out
