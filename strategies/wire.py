"""Flower side of the codecs: one blob per ArrayRecord, and a header naming the codec.

A compressed ``ArrayRecord`` holds a single ``Array`` (``PAYLOAD_KEY``) whose bytes are a codec
container (``strategies.codecs``): one Flower object instead of one per tensor, which is where
Flower's framing cost is. Next to it, a small ``ConfigRecord`` under ``HEADER_KEY`` says:

- ``codec``: how this message's arrays are encoded;
- on the way down, ``reply-codec``: how the client must encode its reply,
  ``reply``: ``weights`` (the trained tensors) or ``update`` (trained minus received),
  ``error-feedback``: whether to carry the quantization residual over to the next round,
  ``delta-base``: with a downlink delta, the digest of the copy the payload is a change of
  (``""``: of zeros, a full copy); see ``CompressionStrategy``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from strategies.codecs import Codec, CodecError, decode_blob, entries_of, get_codec

HEADER_KEY = "flora.codec"
CODEC = "codec"
REPLY_CODEC = "reply-codec"
REPLY = "reply"
ERROR_FEEDBACK = "error-feedback"
DELTA_BASE = "delta-base"
PAYLOAD_KEY = "payload"
PAYLOAD_STYPE = "flora.container"
REPLY_MODES = ("weights", "update")


def record_to_numpy(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """``{name: ndarray}`` in the record's order (plain, numpy-serialized records)."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()})


def state_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of tensors' names, shapes and float32 bytes: how a server and a client check
    that they hold bit for bit the same copy before one sends the other a change of it."""
    h = hashlib.sha256()
    for name, value in arrays.items():
        v = np.ascontiguousarray(value, dtype=np.float32)
        h.update(f"{name}:{v.shape};".encode())
        h.update(v)
    return h.hexdigest()[:32]


def blob_to_record(blob: bytes) -> ArrayRecord:
    """An ArrayRecord carrying one codec container as raw bytes (no .npy header)."""
    return ArrayRecord(
        {PAYLOAD_KEY: Array(dtype="uint8", shape=(len(blob),), stype=PAYLOAD_STYPE, data=blob)}
    )


def record_to_blob(record: ArrayRecord) -> bytes:
    """The container bytes of a compressed ArrayRecord; anything else is refused."""
    if list(record.keys()) != [PAYLOAD_KEY]:
        raise CodecError(f"compressed record must hold exactly one {PAYLOAD_KEY!r} array")
    array = record[PAYLOAD_KEY]
    if array.stype != PAYLOAD_STYPE or array.dtype != "uint8":
        raise CodecError(f"payload array has stype {array.stype!r}, expected {PAYLOAD_STYPE!r}")
    return array.data


def make_header(codec: str, **fields: str | bool) -> ConfigRecord:
    return ConfigRecord({CODEC: codec, **{k.replace("_", "-"): v for k, v in fields.items()}})


def read_header(content: RecordDict) -> ConfigRecord | None:
    """The codec header of a message, or ``None`` for a plain Flower message."""
    record = content.config_records.get(HEADER_KEY)
    return record if isinstance(record, ConfigRecord) else None


def encode_content(content: RecordDict, codec: Codec, header: ConfigRecord) -> RecordDict:
    """A copy of ``content`` with every ArrayRecord encoded by ``codec``, plus ``header``."""
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            out[key] = blob_to_record(codec.encode(record_to_numpy(record)))
        else:
            out[key] = record
    out[HEADER_KEY] = header
    return out


def decode_content(
    content: RecordDict,
    expected_codec: str | None = None,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> RecordDict:
    """A copy of ``content`` with plain fp32 ArrayRecords and no header.

    ``expected_codec``: the codec the reader asked for; a payload in any other is refused, and
    so is any tensor that codec could not have produced. ``expected_shapes``: the tensors the
    reader's model has.
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
            tensors = decode_blob(record_to_blob(record), expected_shapes, accept=codec)
            out[key] = numpy_to_record(tensors)
        else:
            out[key] = record
    return out


def payload_stats(record: ArrayRecord) -> dict[str, float]:
    """Realised density (kept / total entries) and index encodings of a compressed record.

    Dense kinds count as fully kept; only sparse entries choose a bitmap or gaps.
    """
    entries = entries_of(record_to_blob(record))
    total = sum(e.numel for e in entries)
    kept = sum(e.k if e.kind == "s" else e.numel for e in entries)
    return {
        "density": kept / total if total else 1.0,
        "bitmap_tensors": float(sum(e.kind == "s" and e.index == "b" for e in entries)),
        "gap_tensors": float(sum(e.kind == "s" and e.index == "g" for e in entries)),
    }
