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

``s`` (sparse: k kept entries, their indices as a bitmap or gap-coded varints, then their
values as ``f32``, ``f16`` or per-tensor affine ``q``).

Codec names (the ``spec`` a message header carries): ``fp32``, ``fp16``,
``affine:bits=<1..8>:gran=<channel|tensor>:meta=<fp16|fp32>[:vec=quant]`` (``vec=quant``: 1-D
tensors quantized per tensor too, instead of fp32),
``topk:density=<(0,1]>:scope=<global|tensor>:values=<32|16|1..8>``.
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

from strategies.codecs import entropy
from strategies.codecs.allocate import allocate_bits, error_weights, model_error
from strategies.codecs.bitpack import pack_bits, packed_size, unpack_bits
from strategies.codecs.names import (
    AFFINE_BITS,
    GRANULARITIES,
    METAS,
    SPARSITY_SCOPES,
    VALUE_BITS,
    VECTOR_MODES,
    codec_spec,
    sparse_spec,
)
from strategies.codecs.quantize import (
    META_DTYPES,
    affine_codes,
    affine_grid,
    as_rows,
    channels_of,
    dequantize,
    row_ranges,
)
from strategies.codecs.sparse import (
    SparseIndexError,
    decode_indices,
    encode_indices,
    keep_count,
    top_k_magnitude,
)

MAGIC = b"FLC1"
MAX_HEADER_BYTES = 1 << 20  # decompressed; a ResNet-18 header is a few KB
# Compressed header room when bounding a whole message: our entries compress to ~30 bytes.
HEADER_ALLOWANCE_BASE = 256
HEADER_ALLOWANCE_PER_TENSOR = 256
# What a compressed message may inflate to when the receiver cannot bound it by its model
# (a client decoding the server's broadcast): far above any adapter, far below the machine.
MAX_INFLATED_BYTES = 1 << 30
MAX_TENSORS = 4096
MAX_DIMS = 8
_META_NAMES = dict(zip(METAS, ("f16", "f32"), strict=True))


class CodecError(ValueError):
    """A payload cannot be encoded or decoded: unknown codec, wrong length, bad values."""


def _magnitudes(named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """|x| of flat arrays, back to back in one float32 buffer (the copy and the abs are one
    pass); refuses NaN and Inf (and what overflows float32), which the largest magnitude
    reaches, so the check costs one reduction instead of a pass per tensor."""
    out = np.empty(sum(x.size for _, x in named), dtype=np.float32)
    at = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for _, x in named:
            np.abs(x, out=out[at : at + x.size])
            at += x.size
        if out.size and not np.isfinite(out.max()):
            bad = next(n for n, x in named if not np.all(np.isfinite(x.astype(np.float32))))
            raise CodecError(f"tensor {bad!r} contains NaN or Inf")
    return out


def _require_finite(name: str, x: np.ndarray) -> None:
    if x.size and not np.all(np.isfinite(x)):
        raise CodecError(f"tensor {name!r} contains NaN or Inf")


@dataclass(frozen=True)
class Entry:
    """One tensor's header line."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "f32" | "f16" | "q" | "s"
    bits: int = 0
    per_channel: bool = False
    meta: str = "f32"
    k: int = 0  # sparse: kept entries
    index: str = ""  # sparse: "b" bitmap | "g" gaps
    index_bytes: int = 0
    values: str = ""  # sparse: "f32" | "f16" | "q"

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def body_size(self) -> int:
        """Bytes this tensor occupies in the body."""
        if self.kind == "s":
            return self.index_bytes + _values_size(self.values, self.k, 1, self.bits, self.meta)
        channels = channels_of(self.shape, self.per_channel)
        return _values_size(self.kind, self.numel, channels, self.bits, self.meta)

    def to_json(self) -> list:
        line: list = [self.name, list(self.shape), self.kind]
        if self.kind == "q":
            line += [self.bits, "c" if self.per_channel else "t", self.meta]
        if self.kind == "s":
            line += [self.k, self.index, self.index_bytes, self.values, self.bits, self.meta]
        return line


def _values_size(kind: str, n: int, channels: int, bits: int, meta: str) -> int:
    """Body bytes of n values stored as f32, f16 or affine q (``channels`` scale rows)."""
    if kind == "f32":
        return 4 * n
    if kind == "f16":
        return 2 * n
    if n == 0:
        return 0
    meta_size = np.dtype(META_DTYPES[meta]).itemsize
    unit = 4 if meta == "f16" else 0
    return unit + 2 * channels * meta_size + packed_size(n, bits)


@dataclass(frozen=True)
class _Grid:
    """One tensor's quantization: its rows, the grid chosen for them and its metadata dtype."""

    rows: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    unit: float
    meta: str
    bits: int


def _grids(
    rows: dict[str, np.ndarray],
    ranges: dict[str, tuple[np.ndarray, np.ndarray]],
    bits: int,
    meta: str,
) -> dict[str, _Grid]:
    """Grids for many tensors in one ``affine_grid`` call; tensors whose range does not fit
    fp16 metadata get fp32 metadata (a second call for just those), and beyond fp32, an error."""
    grids: dict[str, _Grid] = {}
    todo = list(rows)
    for attempt in (meta, "f32") if meta == "f16" else (meta,):
        if not todo:
            break
        lo = np.concatenate([ranges[n][0] for n in todo])
        hi = np.concatenate([ranges[n][1] for n in todo])
        counts = np.array([rows[n].shape[0] for n in todo])
        scale, offset, unit, fits = affine_grid(lo, hi, counts, bits, attempt)
        cut = np.cumsum(counts)[:-1]
        for i, (name, s, o) in enumerate(
            zip(todo, np.split(scale, cut), np.split(offset, cut), strict=True)
        ):
            if fits[i]:
                grids[name] = _Grid(
                    rows[name], ranges[name][1], s, o, float(unit[i]), attempt, bits
                )
        todo = [n for n in todo if n not in grids]
    if todo:
        raise CodecError(f"tensor {todo[0]!r}: value range too large to quantize")
    return grids


def _affine_bytes(grid: _Grid) -> bytes:
    """Body of an affine tensor: [fp32 unit with fp16 metadata], scales, offsets, codes."""
    le = np.dtype(META_DTYPES[grid.meta]).newbyteorder("<")
    bits = grid.bits
    q = affine_codes(grid.rows, grid.hi, grid.scale, grid.offset, grid.unit, bits)
    head = struct.pack("<f", grid.unit) if grid.meta == "f16" else b""
    return b"".join(
        [
            head,
            grid.scale.astype(le).tobytes(),
            grid.offset.astype(le).tobytes(),
            pack_bits(q, bits),
        ]
    )


def _affine_values(
    name: str, chunk: memoryview, shape: tuple[int, ...], channels: int, bits: int, meta: str
) -> np.ndarray:
    """Inverse of ``_affine_bytes``, validating the metadata."""
    n = prod(shape)
    if n == 0:
        return np.zeros(shape, np.float32)
    dtype = np.dtype(META_DTYPES[meta]).newbyteorder("<")
    unit = 1.0
    if meta == "f16":
        (unit,) = struct.unpack("<f", chunk[:4])
        chunk = chunk[4:]
        if not (np.isfinite(unit) and unit > 0):
            raise CodecError(f"tensor {name!r}: non-finite or non-positive metadata unit")
    m = channels * dtype.itemsize
    scale = np.frombuffer(chunk[:m], dtype=dtype)
    offset = np.frombuffer(chunk[m : 2 * m], dtype=dtype)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset)) and np.all(scale >= 0)):
        raise CodecError(f"tensor {name!r}: non-finite or negative scale/offset")
    q = unpack_bits(chunk[2 * m :], bits, n).reshape(channels, -1)
    return dequantize(q, scale, offset, shape, unit)


def _header_bytes(entries: list[Entry]) -> bytes:
    return zlib.compress(
        json.dumps({"t": [e.to_json() for e in entries]}, separators=(",", ":")).encode(), 9
    )


class Codec(ABC):
    """Encodes tensors into the shared container; decoding is ``decode_blob``, for all codecs."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The name a message header carries for this codec."""

    @abstractmethod
    def _encode_tensor(self, name: str, x: np.ndarray, plan: object) -> tuple[Entry, bytes]:
        """Header entry and body bytes of one tensor (``plan``: see ``_plan``)."""

    @abstractmethod
    def accepts(self, entry: Entry) -> bool:
        """Whether a received entry is one this codec could have produced."""

    def accepts_message(self, entries: list[Entry]) -> bool:
        """Whether the entries together are a message this codec could have produced."""
        return True

    @abstractmethod
    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        """The most body bytes this codec writes for one tensor of ``shape``."""

    def max_message_bytes(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """An upper bound on the blob this codec produces for tensors of these shapes.

        A receiver checks a payload against it before parsing anything, so a reply can never
        make the server read or allocate more than the model's own message could need.
        """
        header = HEADER_ALLOWANCE_BASE + HEADER_ALLOWANCE_PER_TENSOR * len(shapes)
        return len(MAGIC) + 4 + header + sum(self.max_body_bytes(s) for s in shapes.values())

    def _plan(self, tensors: Mapping[str, np.ndarray]) -> object:
        """Decisions that need the whole message (e.g. a global top-k); None by default."""
        return None

    def _check_finite(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Refuse NaN and Inf before anything is encoded (codecs that see every value's range
        anyway, like the affine one, check there instead of paying another pass)."""
        for name, value in tensors.items():
            _require_finite(name, np.asarray(value))

    def encode(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        """The blob for these tensors, in their order."""
        self._check_finite(tensors)
        plan = self._plan(tensors)
        entries, bodies = [], []
        for name, value in tensors.items():
            entry, body = self._encode_tensor(name, np.asarray(value), plan)
            entries.append(entry)
            bodies.append(body)
        header = _header_bytes(entries)
        return b"".join([MAGIC, struct.pack("<I", len(header)), header, *bodies])


class FloatCodec(Codec):
    """Dense fp32 or fp16: fp32 is the lossless baseline, fp16 halves it."""

    def __init__(self, dtype: str = "f32") -> None:
        if dtype not in ("f32", "f16"):
            raise CodecError(f"float codec dtype {dtype!r}: expected f32 or f16")
        self.dtype = dtype

    @property
    def spec(self) -> str:
        return "fp32" if self.dtype == "f32" else "fp16"

    def _encode_tensor(self, name: str, x: np.ndarray, plan: object) -> tuple[Entry, bytes]:
        np_dtype = np.dtype("<f4") if self.dtype == "f32" else np.dtype("<f2")
        with np.errstate(over="ignore"):
            data = x.astype(np_dtype)
        if data.size and not np.all(np.isfinite(data)):
            raise CodecError(f"tensor {name!r} overflows {self.spec}")
        return Entry(name, tuple(int(d) for d in x.shape), self.dtype), data.tobytes()

    def accepts(self, entry: Entry) -> bool:
        return entry.kind == self.dtype

    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        return _values_size(self.dtype, prod(shape), 1, 0, "f32")


class AffineCodec(Codec):
    """FLoCoRA's affine b-bit quantization; 1-D tensors (norms, biases) stay fp32 by default.

    With ``budget`` > 0 (bytes per message) each quantized tensor gets its own width in
    1..``bits``, chosen for the least squared error that fits the budget
    (``strategies.codecs.allocate``); below 1 bit per value the budget is exceeded.
    """

    def __init__(
        self,
        bits: int,
        per_channel: bool = True,
        meta: str = "fp16",
        keep_1d: bool = True,
        budget: int = 0,
    ) -> None:
        if bits not in AFFINE_BITS:
            raise CodecError(f"affine codec bits = {bits}: expected 1..8")
        if meta not in METAS:
            raise CodecError(f"affine codec meta = {meta!r}: expected fp16 or fp32")
        if budget < 0:
            raise CodecError(f"affine codec budget = {budget}: expected bytes >= 0")
        self.bits, self.per_channel, self.meta, self.keep_1d = bits, per_channel, meta, keep_1d
        self.budget = budget

    @property
    def spec(self) -> str:
        return codec_spec(
            self.bits,
            "channel" if self.per_channel else "tensor",
            self.meta,
            "fp32" if self.keep_1d else "quant",
            self.budget,
        )

    def _stays_float(self, x: np.ndarray) -> bool:
        return x.size == 0 or (self.keep_1d and x.ndim <= 1)

    def _check_finite(self, tensors: Mapping[str, np.ndarray]) -> None:
        for name, value in tensors.items():  # quantized ones are checked by their ranges
            if self._stays_float(np.asarray(value)):
                _require_finite(name, np.asarray(value))

    def _plan(self, tensors: Mapping[str, np.ndarray]) -> dict[str, _Grid]:
        """Every quantized tensor's grid, from one batched computation for the message."""
        rows, ranges = {}, {}
        for name, value in tensors.items():
            x = np.asarray(value)
            if self._stays_float(x):
                continue
            rows[name] = as_rows(x, self.per_channel)
            try:
                ranges[name] = row_ranges(rows[name])
            except ValueError:
                raise CodecError(f"tensor {name!r} contains NaN or Inf") from None
        meta = _META_NAMES[self.meta]
        if not self.budget:
            return _grids(rows, ranges, self.bits, meta)
        # Widths for the requested metadata; a tensor whose range needs fp32 metadata takes
        # more bytes, so the widths are chosen again knowing which do.
        metas = dict.fromkeys(rows, meta)
        for _ in range(2):
            widths = self._widths(tensors, rows, ranges, metas)
            grids: dict[str, _Grid] = {}
            for bits in sorted(set(widths.values())):
                group = [n for n in rows if widths[n] == bits]
                grids.update(
                    _grids({n: rows[n] for n in group}, {n: ranges[n] for n in group}, bits, meta)
                )
            if all(grids[n].meta == metas[n] for n in rows):
                break
            metas = {n: grids[n].meta for n in rows}
        return grids

    def _widths(
        self,
        tensors: Mapping[str, np.ndarray],
        rows: dict[str, np.ndarray],
        ranges: dict[str, tuple[np.ndarray, np.ndarray]],
        metas: dict[str, str],
    ) -> dict[str, int]:
        """Each quantized tensor's width under the budget. What the rest of the message takes
        (fp32 tensors, scales and offsets, the header) comes off first; the header is then
        measured for the chosen widths, and any excess is taken off the codes again."""
        names = list(rows)
        counts = np.array([rows[n].shape[0] for n in names], np.int64)
        cols = np.array([rows[n].shape[1] for n in names], np.int64)
        spans = np.concatenate([ranges[n][1] - ranges[n][0] for n in names]) if names else []
        weights = error_weights(counts, np.asarray(spans, np.float64), cols)
        sizes = counts * cols
        fixed = len(MAGIC) + 4
        for name, value in tensors.items():
            x = np.asarray(value)
            if name in rows:  # the metadata only: the codes are what is allocated
                meta_bytes = _values_size("q", x.size, rows[name].shape[0], 1, metas[name])
                fixed += meta_bytes - packed_size(x.size, 1)
            else:
                fixed += 4 * x.size

        def header(widths: dict[str, int]) -> int:
            entries = [
                Entry(
                    n,
                    tuple(int(d) for d in np.shape(v)),
                    "q",
                    widths[n],
                    self.per_channel,
                    metas[n],
                )
                if n in rows
                else Entry(n, tuple(int(d) for d in np.shape(v)), "f32")
                for n, v in tensors.items()
            ]
            return len(_header_bytes(entries))

        # The header's compressed size depends a little on the widths it lists: adjust the
        # codes' share by what the last choice missed or overshot, a few times at most, and
        # keep the fullest choice that fits.
        widths = dict.fromkeys(names, self.bits)
        code_bytes = self.budget - fixed - header(widths)
        best: tuple[int, dict[str, int]] | None = None
        slack = 8
        for _ in range(6):
            chosen = allocate_bits(weights, sizes, self.bits, code_bytes)
            widths = dict(zip(names, (int(w) for w in chosen), strict=True))
            codes = sum(packed_size(int(n), int(w)) for n, w in zip(sizes, chosen, strict=True))
            total = fixed + header(widths) + codes
            if total <= self.budget and (best is None or codes > best[0]):
                best = (codes, widths)
            if total == self.budget:
                break
            if total < self.budget:
                code_bytes += self.budget - total
            else:  # overshot: step back by more each time, so the search cannot cycle
                code_bytes -= total - self.budget + slack
                slack *= 2
        # A greedy fill is not an exact knapsack: with the header's few bytes of play it can
        # miss the one width for all that a fixed-width codec sends at these bytes. That one
        # competes too, so the choice never errs more (in the model) than the fixed width.
        for width in range(self.bits, 0, -1):
            uniform = dict.fromkeys(names, width)
            codes = sum(packed_size(int(n), width) for n in sizes)
            if fixed + header(uniform) + codes <= self.budget:
                if best is None or model_error(weights, np.full(len(names), width)) < (
                    model_error(weights, np.array([best[1][n] for n in names]))
                ):
                    best = (codes, uniform)
                break
        # Over budget even at 1 bit everywhere: the least there is (``accepts_message``).
        return best[1] if best is not None else widths

    def _encode_tensor(self, name: str, x: np.ndarray, plan: object) -> tuple[Entry, bytes]:
        shape = tuple(int(d) for d in x.shape)
        if self._stays_float(x):
            return Entry(name, shape, "f32"), x.astype("<f4").tobytes()
        grid = plan[name]  # type: ignore[index]
        entry = Entry(name, shape, "q", grid.bits, self.per_channel, grid.meta)
        return entry, _affine_bytes(grid)

    def accepts(self, entry: Entry) -> bool:
        if entry.kind == "f32":
            return entry.numel == 0 or (self.keep_1d and len(entry.shape) <= 1)
        width_ok = 1 <= entry.bits <= self.bits if self.budget else entry.bits == self.bits
        return (
            entry.kind == "q"
            and not (self.keep_1d and len(entry.shape) <= 1)  # those travel fp32
            and width_ok
            and entry.per_channel == self.per_channel
            and entry.meta in ("f32", _META_NAMES[self.meta])
        )

    def accepts_message(self, entries: list[Entry]) -> bool:
        """Under a budget: within it, or every quantized tensor at 1 bit (the least there is)."""
        if not self.budget:
            return True
        return sum(e.body_size() for e in entries) <= self.budget or all(
            e.bits == 1 for e in entries if e.kind == "q"
        )

    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        n = prod(shape)
        if n == 0 or (self.keep_1d and len(shape) <= 1):
            return 4 * n
        channels = channels_of(shape, self.per_channel)
        return _values_size("q", n, channels, self.bits, "f32")  # f32 metadata is the larger


class SparseCodec(Codec):
    """FLASC's top-k by magnitude at ``density``: one global k over the whole message, or per
    tensor; exactly k entries survive, the rest decode to zero. Kept values travel as fp32,
    fp16 or per-tensor affine ``value_bits``; indices as a bitmap or gaps, whichever is smaller
    for each tensor (recorded per tensor in the header)."""

    def __init__(self, density: float, per_tensor: bool = False, value_bits: int = 32) -> None:
        if not 0.0 < density <= 1.0:
            raise CodecError(f"top-k density = {density!r}: expected a number in (0, 1]")
        if value_bits not in VALUE_BITS:
            raise CodecError(f"top-k values = {value_bits!r}: expected 32, 16 or 1..8")
        self.density, self.per_tensor, self.value_bits = density, per_tensor, value_bits

    @property
    def spec(self) -> str:
        return sparse_spec(self.density, "tensor" if self.per_tensor else "global", self.value_bits)

    def _values_kind(self) -> str:
        return {32: "f32", 16: "f16"}.get(self.value_bits, "q")

    def _check_finite(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Nothing here: the plan checks the largest magnitude, which NaN and Inf reach."""

    def _plan(self, tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, object]]:
        """Per tensor: the kept indices and, for affine values, their grid (all grids from one
        batched computation, as in the affine codec)."""
        names = list(tensors)
        arrays = [np.asarray(tensors[n]).reshape(-1) for n in names]
        if self.per_tensor:
            chosen = {
                name: top_k_magnitude(_magnitudes([(name, x)]), keep_count(x.size, self.density))
                for name, x in zip(names, arrays, strict=True)
            }
        else:
            magnitude = _magnitudes(list(zip(names, arrays, strict=True)))
            flat = top_k_magnitude(magnitude, keep_count(magnitude.size, self.density))
            bounds = np.concatenate([[0], np.cumsum([x.size for x in arrays])])
            cut = np.searchsorted(flat, bounds)
            chosen = {n: flat[cut[i] : cut[i + 1]] - bounds[i] for i, n in enumerate(names)}
        grids: dict[str, _Grid] = {}
        if self._values_kind() == "q":
            kept = {
                n: x[chosen[n]].astype(np.float32).reshape(1, -1)
                for n, x in zip(names, arrays, strict=True)
                if chosen[n].size
            }
            ranges = {n: row_ranges(rows) for n, rows in kept.items()}
            grids = _grids(kept, ranges, self.value_bits, "f16")
        return {n: (chosen[n], grids.get(n)) for n in names}

    def _encode_tensor(self, name: str, x: np.ndarray, plan: object) -> tuple[Entry, bytes]:
        shape = tuple(int(d) for d in x.shape)
        indices, grid = plan[name]  # type: ignore[index]
        index_kind, index_body = encode_indices(indices, x.size)
        kind, meta = self._values_kind(), "f32"
        if kind == "q":
            body = b"" if grid is None else _affine_bytes(grid)
            meta = "f32" if grid is None else grid.meta
        else:
            kept = x.reshape(-1)[indices]
            with np.errstate(over="ignore"):
                body_values = kept.astype("<f4" if kind == "f32" else "<f2")
            if kind == "f16" and not np.all(np.isfinite(body_values)):
                raise CodecError(f"tensor {name!r} overflows fp16 values")
            body = body_values.tobytes()
        entry = Entry(
            name,
            shape,
            "s",
            self.value_bits if kind == "q" else 0,
            False,
            meta,
            k=int(indices.size),
            index=index_kind,
            index_bytes=len(index_body),
            values=kind,
        )
        return entry, index_body + body

    def accepts(self, entry: Entry) -> bool:
        if entry.kind != "s" or entry.values != self._values_kind() or entry.k > entry.numel:
            return False
        if entry.values == "q" and entry.bits != self.value_bits:
            return False
        return not self.per_tensor or entry.k == keep_count(entry.numel, self.density)

    def accepts_message(self, entries: list[Entry]) -> bool:
        if self.per_tensor:
            return True
        return sum(e.k for e in entries) == keep_count(sum(e.numel for e in entries), self.density)

    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        # A global top-k may keep a whole tensor; indices never exceed the bitmap (the encoder
        # uses gaps only when they are smaller).
        n = prod(shape)
        return -(-n // 8) + _values_size(self._values_kind(), n, 1, self.value_bits, "f32")


class EntropyCodec(Codec):
    """Any codec's container, then the lossless zstd stage (``strategies.codecs.entropy``):
    its name is the inner codec's with ``+zstd``; what it accepts is what the inner accepts."""

    def __init__(self, inner: Codec) -> None:
        if isinstance(inner, EntropyCodec):
            raise CodecError(f"codec {inner.spec!r} already has the entropy stage")
        self.inner = inner

    @property
    def spec(self) -> str:
        return self.inner.spec + entropy.SUFFIX

    def _plan(self, tensors: Mapping[str, np.ndarray]) -> object:
        return self.inner._plan(tensors)

    def _encode_tensor(self, name: str, x: np.ndarray, plan: object) -> tuple[Entry, bytes]:
        return self.inner._encode_tensor(name, x, plan)

    def encode(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        return entropy.compress(self.inner.encode(tensors))

    def accepts(self, entry: Entry) -> bool:
        return self.inner.accepts(entry)

    def accepts_message(self, entries: list[Entry]) -> bool:
        return self.inner.accepts_message(entries)

    def max_body_bytes(self, shape: tuple[int, ...]) -> int:
        return self.inner.max_body_bytes(shape)

    def max_message_bytes(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        return entropy.bound(self.inner.max_message_bytes(shapes))


def get_codec(spec: str) -> Codec:
    """The codec a message names; unknown or malformed names are refused, never guessed."""
    if spec.endswith(entropy.SUFFIX):
        return EntropyCodec(get_codec(spec[: -len(entropy.SUFFIX)]))
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
            vectors = params.pop("vec", VECTOR_MODES[0])
            budget = int(params.pop("budget", "0"))
        except (KeyError, ValueError):
            raise CodecError(f"malformed codec {spec!r}") from None
        # One name per codec: the canonical one, in order, defaults (fp32 vectors, no budget)
        # never spelled out. (Widths outside 1..8 and unknown metas get their own error below.)
        if (
            params
            or gran not in GRANULARITIES
            or vectors not in VECTOR_MODES
            or (bits in AFFINE_BITS and spec != codec_spec(bits, gran, meta, vectors, budget))
        ):
            raise CodecError(f"malformed codec {spec!r}")
        return AffineCodec(
            bits,
            per_channel=gran == "channel",
            meta=meta,
            keep_1d=vectors == VECTOR_MODES[0],
            budget=budget,
        )
    if spec.startswith("topk:"):
        try:
            params = dict(part.split("=", 1) for part in spec.split(":")[1:])
            density = float(params.pop("density"))
            scope = params.pop("scope")
            values = int(params.pop("values"))
        except (KeyError, ValueError):
            raise CodecError(f"malformed codec {spec!r}") from None
        if params or scope not in SPARSITY_SCOPES:
            raise CodecError(f"malformed codec {spec!r}")
        return SparseCodec(density, per_tensor=scope == "tensor", value_bits=values)
    raise CodecError(
        f"unknown codec {spec!r}: expected fp32, fp16, affine:bits=B:gran=G:meta=M or "
        f"topk:density=D:scope=S:values=V, each optionally followed by {entropy.SUFFIX}"
    )


def _parse_entry(line: object) -> Entry:
    if not isinstance(line, list) or len(line) not in (3, 6, 9):
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
    if kind == "s" and len(line) == 9:
        k, index, index_bytes, values, bits, meta = line[3:]
        n = prod(shape)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (k, index_bytes, bits))
        if (
            not ints
            or not 0 <= k <= n
            or index not in ("b", "g")
            or values not in ("f32", "f16", "q")
        ):
            raise CodecError(f"tensor {name!r}: bad sparse parameters")
        bitmap = (n + 7) // 8
        if (index == "b" and index_bytes != bitmap) or (
            index == "g" and not k <= index_bytes <= min(bitmap, 10 * k)
        ):
            raise CodecError(f"tensor {name!r}: index section of {index_bytes} bytes is impossible")
        if (values == "q" and not 1 <= bits <= 8) or meta not in META_DTYPES:
            raise CodecError(f"tensor {name!r}: bad sparse value parameters")
        return Entry(
            name,
            tuple(shape),
            "s",
            bits,
            False,
            meta,
            k=k,
            index=index,
            index_bytes=index_bytes,
            values=values,
        )
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


def entries_of(blob: bytes) -> list[Entry]:
    """The header entries of a message, with or without the entropy stage; a compressed
    message is inflated only as far as its header (the body can be megabytes)."""
    blob = bytes(blob)
    if blob[: len(entropy.MAGIC)] != entropy.MAGIC:
        return read_header(blob)[0]
    try:
        start = entropy.head(blob, 8)
        if len(start) == 8 and start[:4] == MAGIC:
            (header_len,) = struct.unpack("<I", start[4:8])
            start = entropy.head(blob, 8 + min(header_len, 2 * MAX_HEADER_BYTES))
    except entropy.EntropyError as exc:
        raise CodecError(str(exc)) from None
    return read_header(start)[0]


def decode_blob(
    blob: bytes,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    accept: Codec | None = None,
) -> OrderedDict[str, np.ndarray]:
    """Decode a container into float32 tensors, refusing anything malformed.

    ``expected``: names and shapes the receiver's model has; any difference is an error.
    ``accept``: the codec the receiver asked for; entries it could not produce are refused.
    """
    blob, accept = _inflated(bytes(blob), expected, accept)
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
        if not accept.accepts_message(entries):
            raise CodecError(
                f"message is not one {accept.spec} produces (kept-entry count, byte budget)"
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


def _inflated(
    blob: bytes, expected: Mapping[str, tuple[int, ...]] | None, accept: Codec | None
) -> tuple[bytes, Codec | None]:
    """The plain container of ``blob`` and the codec its entries must satisfy. A receiver
    that asked for the entropy stage gets it or an error, and so does one that did not."""
    compressed = blob[: len(entropy.MAGIC)] == entropy.MAGIC
    wanted = isinstance(accept, EntropyCodec)
    if accept is not None and compressed != wanted:
        raise CodecError(
            f"payload is {'' if compressed else 'not '}zstd-compressed, unlike {accept.spec}"
        )
    if not compressed:
        return blob, accept
    inner = accept.inner if isinstance(accept, EntropyCodec) else None
    limit = MAX_INFLATED_BYTES
    if inner is not None and expected is not None:
        limit = inner.max_message_bytes(expected)
    try:
        return entropy.decompress(blob, limit), inner
    except entropy.EntropyError as exc:
        raise CodecError(str(exc)) from None


def _decode_entry(e: Entry, chunk: memoryview) -> np.ndarray:
    if e.kind == "f32":
        return np.frombuffer(chunk, dtype="<f4").astype(np.float32).reshape(e.shape)
    if e.kind == "f16":
        return np.frombuffer(chunk, dtype="<f2").astype(np.float32).reshape(e.shape)
    if e.kind == "q":
        channels = channels_of(e.shape, e.per_channel)
        return _affine_values(e.name, chunk, e.shape, channels, e.bits, e.meta)
    try:
        indices = decode_indices(e.index, chunk[: e.index_bytes], e.numel, e.k)
    except SparseIndexError as exc:
        raise CodecError(f"tensor {e.name!r}: {exc}") from None
    kept = _decode_entry(
        Entry(e.name, (e.k,), e.values, e.bits, False, e.meta), chunk[e.index_bytes :]
    )
    dense = np.zeros(e.numel, dtype=np.float32)
    dense[indices] = kept
    return dense.reshape(e.shape)
