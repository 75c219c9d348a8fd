"""Dense bit packing of small unsigned integers (1..8 bits each), vectorised with numpy.

Values are written most-significant bit first, back to back, across byte boundaries: n values
of b bits take exactly ceil(n * b / 8) bytes, so 3-bit values straddle bytes.
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack integers in [0, 2**bits) densely; the caller guarantees the range."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits = {bits}: expected 1..8")
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return flat.tobytes()
    if 8 % bits == 0:  # 1, 2, 4 bits: whole values per byte, shifts on a reshaped view
        per_byte = 8 // bits
        padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: flat.size] = flat
        groups = padded.reshape(-1, per_byte)
        out = np.zeros(groups.shape[0], dtype=np.uint8)
        for i in range(per_byte):  # per_byte <= 8 column passes, each over the whole tensor
            out |= groups[:, i] << np.uint8(8 - bits * (i + 1))
        return out.tobytes()
    planes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]  # (n, bits), MSB first
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack_bits(buffer: bytes | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` uint8 values from exactly ``packed_size`` bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits = {bits}: expected 1..8")
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != packed_size(count, bits):
        raise ValueError(f"{raw.size} packed bytes for {count} values of {bits} bits")
    if bits == 8:
        return raw.copy()
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = (8 - bits * np.arange(1, per_byte + 1)).astype(np.uint8)
        codes = (raw[:, None] >> shifts[None, :]) & np.uint8((1 << bits) - 1)
        return codes.reshape(-1)[:count]
    planes = np.unpackbits(raw)[: count * bits].reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, 8 - bits :] = planes
    return np.packbits(padded, axis=1).reshape(-1)
