"""Top-k selection and index coding for sparse messages (FLASC), vectorised with numpy.

Selection keeps exactly k entries by magnitude; ties at the threshold go to the lowest
indices, so the same input always gives the same k. Indices travel either as a bitmap
(ceil(n / 8) bytes) or as gap-coded LEB128 varints (gap = distance to the previous kept index
minus one), whichever is smaller; decoding rejects anything that does not describe exactly k
strictly increasing indices below n.
"""

from __future__ import annotations

import numpy as np

MAX_VARINT_BYTES = 10  # a uint64 takes at most 10 LEB128 bytes


class SparseIndexError(ValueError):
    """Malformed index section: wrong count, out of range, duplicate, truncated."""


def keep_count(n: int, density: float) -> int:
    """k for n values at density d: round(d * n), at least 1 when n > 0, at most n."""
    if n == 0:
        return 0
    return int(min(n, max(1, round(density * n))))


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the k largest |values|; ties broken toward lower indices."""
    flat = np.abs(np.asarray(values).reshape(-1))
    n = flat.size
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    threshold = np.partition(flat, n - k)[n - k]
    above = np.flatnonzero(flat > threshold)
    ties = np.flatnonzero(flat == threshold)[: k - above.size]
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


def encode_bitmap(indices: np.ndarray, n: int) -> bytes:
    mask = np.zeros(n, dtype=np.uint8)
    mask[indices] = 1
    return np.packbits(mask).tobytes()


def decode_bitmap(buffer: bytes | memoryview, n: int, k: int) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise SparseIndexError(f"bitmap has {raw.size} bytes, expected {(n + 7) // 8}")
    bits = np.unpackbits(raw)
    if bits[n:].any():
        raise SparseIndexError("bitmap marks indices beyond the tensor")
    indices = np.flatnonzero(bits[:n])
    if indices.size != k:
        raise SparseIndexError(f"bitmap marks {indices.size} indices, header says {k}")
    return indices.astype(np.int64)


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    lengths = np.ones(values.shape, dtype=np.int64)
    v = values >> np.uint64(7)
    while v.any():
        lengths += v > 0
        v = v >> np.uint64(7)
    return lengths


def encode_gaps(indices: np.ndarray) -> bytes:
    """LEB128 varints of (first index, then gaps - 1); loops over byte positions, not values."""
    if indices.size == 0:
        return b""
    gaps = np.diff(indices, prepend=-1).astype(np.uint64) - np.uint64(1)
    lengths = _varint_lengths(gaps)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max())):
        has = lengths > j
        byte = (gaps[has] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[has] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + j] = (byte | more).astype(np.uint8)
    return out.tobytes()


def decode_gaps(buffer: bytes | memoryview, n: int, k: int) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if k == 0:
        if raw.size:
            raise SparseIndexError("gap section is not empty for k = 0")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero((raw & 0x80) == 0)
    if ends.size != k or ends[-1] != raw.size - 1:
        raise SparseIndexError(f"gap section holds {ends.size} complete varints, header says {k}")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise SparseIndexError("gap varint longer than 10 bytes")
    gaps = np.zeros(k, dtype=np.uint64)
    for j in range(int(lengths.max())):
        has = lengths > j
        gaps[has] |= (raw[starts[has] + j] & np.uint8(0x7F)).astype(np.uint64) << np.uint64(7 * j)
    if gaps.max() >= n:  # also keeps the cumulative sum far from overflow
        raise SparseIndexError("gap points beyond the tensor")
    indices = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if indices[-1] >= n:
        raise SparseIndexError(f"index {int(indices[-1])} is out of range for {n} values")
    return indices


def encode_indices(indices: np.ndarray, n: int) -> tuple[str, bytes]:
    """("b", bitmap) or ("g", gaps), whichever is smaller (bitmap on a tie)."""
    bitmap_size = (n + 7) // 8
    gaps = encode_gaps(indices)
    if len(gaps) < bitmap_size:
        return "g", gaps
    return "b", encode_bitmap(indices, n)


def decode_indices(kind: str, buffer: bytes | memoryview, n: int, k: int) -> np.ndarray:
    if kind == "b":
        return decode_bitmap(buffer, n, k)
    if kind == "g":
        return decode_gaps(buffer, n, k)
    raise SparseIndexError(f"unknown index encoding {kind!r}")
