"""Wire codecs: a named collection of tensors to one compact, self-describing blob and back.

This layer knows nothing of Flower or of models: ``{name: ndarray}`` in, ``bytes`` out. Every
codec writes the same container, so any receiver decodes any message without out-of-band
knowledge:

    b"FLC1" | uint32 LE header length | zlib(JSON header) | body

The header lists, per tensor, ``[name, shape, kind, *params]``; the body holds the tensors in
that order. Kinds: ``f32`` / ``f16`` (raw little-endian), ``q`` (affine: with fp16 metadata an
fp32 unit first, then per-row scale and offset in the metadata dtype, then the codes
bit-packed). Lengths follow from the header, so
the decoder checks the exact body length *before* allocating anything.

Codec names (the ``spec`` a message header carries): ``fp32``, ``fp16``,
``affine:bits=<1..8>:gran=<channel|tensor>:meta=<fp16|fp32>``.
"""

from __future__ import annotations

import json
import struct
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np

from strategies.bitpack import pack_bits, packed_size, unpack_bits
from strategies.quantize import META_DTYPES, channels_of, dequantize, quantize

MAGIC = b"FLC1"
MAX_HEADER_BYTES = 1 << 20  # decompressed; a ResNet-18 header is a few KB
MAX_TENSORS = 4096
MAX_DIMS = 8
_META_NAMES = {"fp16": "f16", "fp32": "f32"}


class CodecError(ValueError):
    """A payload cannot be encoded or decoded: unknown codec, wrong length, bad values."""


@dataclass(frozen=True)
class Entry:
    """One tensor's header line."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "f32" | "f16" | "q"
    bits: int = 0
    per_channel: bool = False
    meta: str = "f32"

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def body_size(self) -> int:
        """Bytes this tensor occupies in the body."""
        n = self.numel
        if self.kind == "f32":
            return 4 * n
        if self.kind == "f16":
            return 2 * n
        if n == 0:
            return 0
        channels = channels_of(self.shape, self.per_channel)
        meta_size = np.dtype(META_DTYPES[self.meta]).itemsize
        unit = 4 if self.meta == "f16" else 0
        return unit + 2 * channels * meta_size + packed_size(n, self.bits)

    def to_json(self) -> list:
        line: list = [self.name, list(self.shape), self.kind]
        if self.kind == "q":
            line += [self.bits, "c" if self.per_channel else "t", self.meta]
        return line


class Codec(ABC):
    """Encodes tensors into the shared container; decoding is the container's own."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The name a message header carries for this codec."""

    @abstractmethod
    def _encode_tensor(self, name: str, x: np.ndarray) -> tuple[Entry, bytes]:
        """Header entry and body bytes of one tensor."""

    @abstractmethod
    def accepts(self, entry: Entry) -> bool:
        """Whether a received entry is one this codec could have produced."""

    def encode(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        """The blob for these tensors, in their order."""
        entries, bodies = [], []
        for name, value in tensors.items():
            x = np.asarray(value)
            if x.size and not np.all(np.isfinite(x)):
                raise CodecError(f"tensor {name!r} contains NaN or Inf")
            entry, body = self._encode_tensor(name, x)
            entries.append(entry)
            bodies.append(body)
        header = zlib.compress(
            json.dumps({"t": [e.to_json() for e in entries]}, separators=(",", ":")).encode(), 9
        )
        return b"".join([MAGIC, struct.pack("<I", len(header)), header, *bodies])

    def decode(
        self, blob: bytes, expected: Mapping[str, tuple[int, ...]] | None = None
    ) -> OrderedDict[str, np.ndarray]:
        """Tensors of a blob this codec may have produced; see ``decode_blob``."""
        return decode_blob(blob, expected, accept=self)


class FloatCodec(Codec):
    """Dense fp32 or fp16: fp32 is the lossless baseline, fp16 halves it."""

    def __init__(self, dtype: str = "f32") -> None:
        if dtype not in ("f32", "f16"):
            raise CodecError(f"float codec dtype {dtype!r}: expected f32 or f16")
        self.dtype = dtype

    @property
    def spec(self) -> str:
        return "fp32" if self.dtype == "f32" else "fp16"

    def _encode_tensor(self, name: str, x: np.ndarray) -> tuple[Entry, bytes]:
        np_dtype = np.dtype("<f4") if self.dtype == "f32" else np.dtype("<f2")
        with np.errstate(over="ignore"):
            data = x.astype(np_dtype)
        if data.size and not np.all(np.isfinite(data)):
            raise CodecError(f"tensor {name!r} overflows {self.spec}")
        return Entry(name, tuple(int(d) for d in x.shape), self.dtype), data.tobytes()

    def accepts(self, entry: Entry) -> bool:
        return entry.kind == self.dtype


class AffineCodec(Codec):
    """FLoCoRA's affine b-bit quantization; 1-D tensors (norms, biases) stay fp32 by default."""

    def __init__(
        self, bits: int, per_channel: bool = True, meta: str = "fp16", keep_1d: bool = True
    ) -> None:
        if not 1 <= bits <= 8:
            raise CodecError(f"affine codec bits = {bits}: expected 1..8")
        if meta not in _META_NAMES:
            raise CodecError(f"affine codec meta = {meta!r}: expected fp16 or fp32")
        self.bits, self.per_channel, self.meta, self.keep_1d = bits, per_channel, meta, keep_1d

    @property
    def spec(self) -> str:
        gran = "channel" if self.per_channel else "tensor"
        return f"affine:bits={self.bits}:gran={gran}:meta={self.meta}"

    def _encode_tensor(self, name: str, x: np.ndarray) -> tuple[Entry, bytes]:
        shape = tuple(int(d) for d in x.shape)
        if x.size == 0 or (self.keep_1d and x.ndim <= 1):
            return Entry(name, shape, "f32"), x.astype("<f4").tobytes()
        meta = _META_NAMES[self.meta]
        try:
            q, scale, offset, unit = quantize(x, self.bits, self.per_channel, meta)
        except OverflowError:
            try:  # fp16 metadata cannot hold this range; fp32 may
                meta = "f32"
                q, scale, offset, unit = quantize(x, self.bits, self.per_channel, meta)
            except OverflowError:
                raise CodecError(f"tensor {name!r}: value range too large to quantize") from None
        le = np.dtype(META_DTYPES[meta]).newbyteorder("<")
        head = struct.pack("<f", unit) if meta == "f16" else b""
        body = head + scale.astype(le).tobytes() + offset.astype(le).tobytes()
        body += pack_bits(q, self.bits)
        return Entry(name, shape, "q", self.bits, self.per_channel, meta), body

    def accepts(self, entry: Entry) -> bool:
        if entry.kind == "f32":
            return entry.numel == 0 or (self.keep_1d and len(entry.shape) <= 1)
        return (
            entry.kind == "q"
            and entry.bits == self.bits
            and entry.per_channel == self.per_channel
            and entry.meta in ("f32", _META_NAMES[self.meta])
        )


def get_codec(spec: str) -> Codec:
    """The codec a message names; unknown or malformed names are refused, never guessed."""
    if spec == "fp32":
        return FloatCodec("f32")
    if spec == "fp16":
        return FloatCodec("f16")
    if spec.startswith("affine:"):
        try:
            params = dict(part.split("=", 1) for part in spec.split(":")[1:])
            bits = int(params.pop("bits"))
            gran = params.pop("gran")
            meta = params.pop("meta")
        except (KeyError, ValueError):
            raise CodecError(f"malformed codec {spec!r}") from None
        if params or gran not in ("channel", "tensor"):
            raise CodecError(f"malformed codec {spec!r}")
        return AffineCodec(bits, per_channel=gran == "channel", meta=meta)
    raise CodecError(f"unknown codec {spec!r}: expected fp32, fp16 or affine:bits=B:gran=G:meta=M")


def _parse_entry(line: object) -> Entry:
    if not isinstance(line, list) or len(line) not in (3, 6):
        raise CodecError("malformed tensor entry in header")
    name, shape, kind = line[0], line[1], line[2]
    if not isinstance(name, str) or not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise CodecError("malformed tensor name or shape in header")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise CodecError(f"tensor {name!r}: shape {shape} is not a list of sizes")
    if kind in ("f32", "f16") and len(line) == 3:
        return Entry(name, tuple(shape), kind)
    if kind == "q" and len(line) == 6:
        bits, gran, meta = line[3], line[4], line[5]
        if not (isinstance(bits, int) and 1 <= bits <= 8) or gran not in ("c", "t"):
            raise CodecError(f"tensor {name!r}: bad quantization parameters")
        if meta not in META_DTYPES:
            raise CodecError(f"tensor {name!r}: unknown metadata dtype {meta!r}")
        return Entry(name, tuple(shape), "q", bits, gran == "c", meta)
    raise CodecError(f"tensor {name!r}: unknown kind {kind!r}")


def read_header(blob: bytes) -> tuple[list[Entry], int]:
    """Entries and the body's start offset; validates magic, lengths and every entry."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise CodecError("payload is not a flora container (bad magic)")
    (header_len,) = struct.unpack("<I", blob[4:8])
    if header_len > len(blob) - 8:
        raise CodecError(f"header length {header_len} exceeds the payload")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blob[8 : 8 + header_len], MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise CodecError(f"corrupt header: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise CodecError("header is truncated or larger than allowed")
    try:
        lines = json.loads(raw)["t"]
    except (ValueError, KeyError, TypeError):
        raise CodecError("header is not valid JSON with a tensor list") from None
    if not isinstance(lines, list) or len(lines) > MAX_TENSORS:
        raise CodecError("header tensor list is malformed or too long")
    entries = [_parse_entry(line) for line in lines]
    if len({e.name for e in entries}) != len(entries):
        raise CodecError("duplicate tensor names in header")
    return entries, 8 + header_len


def decode_blob(
    blob: bytes,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    accept: Codec | None = None,
) -> OrderedDict[str, np.ndarray]:
    """Decode a container into float32 tensors, refusing anything malformed.

    ``expected``: names and shapes the receiver's model has; any difference is an error.
    ``accept``: the codec the receiver asked for; entries it could not produce are refused.
    """
    blob = bytes(blob)
    entries, start = read_header(blob)
    if expected is not None:
        got = {e.name: e.shape for e in entries}
        if set(got) != set(expected):
            missing = sorted(set(expected) - set(got))[:2]
            extra = sorted(set(got) - set(expected))[:2]
            raise CodecError(
                f"tensor names differ from the model: missing {missing}, extra {extra}"
            )
        for name, shape in got.items():
            if tuple(expected[name]) != shape:
                raise CodecError(
                    f"tensor {name!r} has shape {shape}, model expects {tuple(expected[name])}"
                )
    if accept is not None:
        for e in entries:
            if not accept.accepts(e):
                raise CodecError(
                    f"tensor {e.name!r} is encoded as {e.to_json()[2:]}, not as {accept.spec} would"
                )
    need = sum(e.body_size() for e in entries)
    if need != len(blob) - start:
        raise CodecError(f"body is {len(blob) - start} bytes, header describes {need}")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    view = memoryview(blob)
    pos = start
    for e in entries:
        size = e.body_size()
        chunk = view[pos : pos + size]
        pos += size
        out[e.name] = _decode_entry(e, chunk)
    return out


def _decode_entry(e: Entry, chunk: memoryview) -> np.ndarray:
    if e.kind == "f32":
        return np.frombuffer(chunk, dtype="<f4").astype(np.float32).reshape(e.shape)
    if e.kind == "f16":
        return np.frombuffer(chunk, dtype="<f2").astype(np.float32).reshape(e.shape)
    if e.numel == 0:
        return np.zeros(e.shape, np.float32)
    channels = channels_of(e.shape, e.per_channel)
    meta = np.dtype(META_DTYPES[e.meta]).newbyteorder("<")
    unit = 1.0
    if e.meta == "f16":
        (unit,) = struct.unpack("<f", chunk[:4])
        chunk = chunk[4:]
        if not (np.isfinite(unit) and unit > 0):
            raise CodecError(f"tensor {e.name!r}: non-finite or non-positive metadata unit")
    m = channels * meta.itemsize
    scale = np.frombuffer(chunk[:m], dtype=meta)
    offset = np.frombuffer(chunk[m : 2 * m], dtype=meta)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset)) and np.all(scale >= 0)):
        raise CodecError(f"tensor {e.name!r}: non-finite or negative scale/offset")
    q = unpack_bits(chunk[2 * m :], e.bits, e.numel).reshape(channels, -1)
    return dequantize(q, scale, offset, e.shape, unit)
