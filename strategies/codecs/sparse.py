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
    return top_k_magnitude(np.abs(np.asarray(values).reshape(-1)), k)


_SAMPLE_STRIDE = 64  # one magnitude in 64 estimates the threshold of a large top-k
_SAMPLE_MIN = 1 << 16  # below this many values a full partition is cheap enough
_SAMPLE_MARGIN = 1.1  # candidates aimed at: 10 % more than k, so the estimate rarely falls short


def top_k_magnitude(magnitude: np.ndarray, k: int) -> np.ndarray:
    """``top_k`` of magnitudes already taken (flat, non-negative, not modified).

    A full partition of n values costs as much as the rest of the encoder. For large inputs
    a strided sample gives a threshold that keeps a little more than k candidates; the exact
    threshold is then found among the candidates only (falling back to all values when the
    sample was unlucky). The result is the same either way: exactly the k largest, ties to the
    lowest indices.
    """
    n = magnitude.size
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    candidates = None
    if n >= _SAMPLE_MIN and k * _SAMPLE_MARGIN < n:
        sample = magnitude[::_SAMPLE_STRIDE]
        rank = min(sample.size - 1, int(sample.size * (1 - _SAMPLE_MARGIN * k / n)))
        floor = np.partition(sample, rank)[rank]
        found = np.flatnonzero(magnitude >= floor)
        if found.size >= k:
            candidates = found
    if candidates is None:
        candidates = np.arange(n, dtype=np.int64)
        values = magnitude
    else:
        values = magnitude[candidates]
    m = values.size
    threshold = np.partition(values, m - k)[m - k]
    keep = values > threshold
    missing = k - int(np.count_nonzero(keep))
    if missing:  # the lowest-index ties at the threshold fill up to exactly k
        keep[np.flatnonzero(values == threshold)[:missing]] = True
    return candidates[keep]  # candidates are in index order: no sort of k indices


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
    """LEB128 bytes per value: 1 + how many of 2**7, 2**14, ... it reaches (one pass each,
    only up to the largest value: gaps of a dense-enough top-k need one or two)."""
    lengths = np.ones(values.shape, dtype=np.int64)
    top = int(values.max()) if values.size else 0
    step = 1 << 7
    while step <= top:
        lengths += values >= np.uint64(step)
        step <<= 7
    return lengths


def _gaps(indices: np.ndarray) -> np.ndarray:
    return np.diff(indices, prepend=-1).astype(np.uint64) - np.uint64(1)


def encode_gaps(
    indices: np.ndarray, gaps: np.ndarray | None = None, lengths: np.ndarray | None = None
) -> bytes:
    """LEB128 varints of (first index, then gaps - 1); loops over byte positions, not values.

    Byte 0 of every varint is written in one pass; each later byte position only touches the
    (few) gaps that long, found by narrowing the previous position's index list.
    """
    if indices.size == 0:
        return b""
    gaps = _gaps(indices) if gaps is None else gaps
    lengths = _varint_lengths(gaps) if lengths is None else lengths
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths[-1] + starts[-1]), dtype=np.uint8)
    more = lengths > 1
    out[starts] = ((gaps & np.uint64(0x7F)) | (more.astype(np.uint64) << np.uint64(7))).astype(
        np.uint8
    )
    longer = np.flatnonzero(more)
    j = 1
    while longer.size:
        byte = (gaps[longer] >> np.uint64(7 * j)) & np.uint64(0x7F)
        cont = lengths[longer] > j + 1
        out[starts[longer] + j] = (byte | (cont.astype(np.uint64) << np.uint64(7))).astype(np.uint8)
        longer = longer[cont]
        j += 1
    return out.tobytes()


def _gap_plan(indices: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(bytes ``encode_gaps`` would write, the gaps, their varint lengths), writing nothing."""
    gaps = _gaps(indices)
    lengths = _varint_lengths(gaps)
    return int(lengths.sum()), gaps, lengths


def decode_gaps(buffer: bytes | memoryview, n: int, k: int) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if k == 0:
        if raw.size:
            raise SparseIndexError("gap section is not empty for k = 0")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != k or ends[-1] != raw.size - 1:
        raise SparseIndexError(f"gap section holds {ends.size} complete varints, header says {k}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise SparseIndexError("gap varint longer than 10 bytes")
    gaps = (raw[starts] & np.uint8(0x7F)).astype(np.uint64)
    longer = np.flatnonzero(lengths > 1)
    j = 1
    while longer.size:
        gaps[longer] |= (raw[starts[longer] + j] & np.uint8(0x7F)).astype(np.uint64) << np.uint64(
            7 * j
        )
        longer = longer[lengths[longer] > j + 1]
        j += 1
    if gaps.max() >= n:  # also keeps the cumulative sum far from overflow
        raise SparseIndexError("gap points beyond the tensor")
    indices = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if indices[-1] >= n:
        raise SparseIndexError(f"index {int(indices[-1])} is out of range for {n} values")
    return indices


def encode_indices(indices: np.ndarray, n: int) -> tuple[str, bytes]:
    """("b", bitmap) or ("g", gaps), whichever is smaller (bitmap on a tie)."""
    if indices.size == 0:
        return ("g", b"") if n > 0 else ("b", b"")
    size, gaps, lengths = _gap_plan(indices)
    if size < (n + 7) // 8:
        return "g", encode_gaps(indices, gaps, lengths)
    return "b", encode_bitmap(indices, n)


def decode_indices(kind: str, buffer: bytes | memoryview, n: int, k: int) -> np.ndarray:
    if kind == "b":
        return decode_bitmap(buffer, n, k)
    if kind == "g":
        return decode_gaps(buffer, n, k)
    raise SparseIndexError(f"unknown index encoding {kind!r}")
