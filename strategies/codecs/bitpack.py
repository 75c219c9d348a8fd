"""Dense bit packing of small unsigned integers (1..8 bits each), vectorised with numpy.

Values are written most-significant bit first, back to back, across byte boundaries: n values
of b bits take exactly ceil(n * b / 8) bytes, so 3-bit values straddle bytes.

All work is a fixed number of whole-array passes, never Python per element: 1 bit is numpy's
packbits; 2 and 4 bits pack with one multiply per output byte (constants below) and unpack
with a table or a mask; the widths that straddle bytes (3, 5, 6, 7) assemble each group of 8
codes, which is exactly b bytes, in one big-endian uint64 with 8 column shifts.
"""

from __future__ import annotations

import numpy as np

_GROUP = 8  # values per group: 8 values of b bits fill exactly b bytes
# Multiplying a little-endian word of codes by these constants moves every code to its place
# in the packed byte with no carries between them (each product term lands in its own bits;
# the terms that would collide overflow out of the word): packing is one multiply and one
# shift per output byte.
_PACK2 = (1 << 30) | (1 << 20) | (1 << 10) | 1
_PACK4 = (1 << 12) | 1
_BYTES = np.arange(256, dtype=np.uint8)
# Every packed 2-bit byte's 4 codes, as one little-endian word per byte value.
_UNPACK2 = (
    np.stack([_BYTES >> 6, (_BYTES >> 4) & 3, (_BYTES >> 2) & 3, _BYTES & 3], axis=1)
    .copy()
    .view("<u4")
    .reshape(-1)
)


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits = {bits}: expected 1..8")


def _padded(flat: np.ndarray, multiple: int) -> np.ndarray:
    """``flat`` (uint8) extended with zeros to a multiple of ``multiple``; no copy if it is one."""
    extra = -flat.size % multiple
    if not extra:
        return flat
    return np.concatenate([flat, np.zeros(extra, dtype=np.uint8)])


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack integers in [0, 2**bits) densely; the caller guarantees the range."""
    _check_bits(bits)
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return flat.tobytes()
    if bits == 1:
        return np.packbits(flat).tobytes()
    if bits == 2:  # 4 codes a, b, c, d (low byte first) -> one multiply puts them in the top byte
        words = _padded(flat, 4).view("<u4")
        return ((words * np.uint32(_PACK2)) >> np.uint32(24)).astype(np.uint8).tobytes()
    if bits == 4:  # 2 codes a, b -> (a << 4 | b) in the top byte of a 16-bit word
        words = _padded(flat, 2).view("<u2")
        return ((words * np.uint16(_PACK4)) >> np.uint16(8)).astype(np.uint8).tobytes()
    # 3, 5, 6, 7 bits: merge neighbours in three doublings (pairs in 16-bit words, quads in
    # 32, groups of 8 in 64), each a few passes over whole words; a group of 8 codes is then
    # the low b bytes of its big-endian word.
    merged = _padded(flat, _GROUP)
    width = bits
    for word, half in (("<u2", 8), ("<u4", 16), ("<u8", 32)):
        w = merged.view(word)
        low = (w & w.dtype.type((1 << half) - 1)) << w.dtype.type(width)
        merged = (low | (w >> w.dtype.type(half))).astype(word, copy=False)
        width *= 2
    packed = merged.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - bits :]
    return packed.tobytes()[: packed_size(flat.size, bits)]


def unpack_bits(buffer: bytes | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` uint8 values from exactly ``packed_size`` bytes."""
    _check_bits(bits)
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != packed_size(count, bits):
        raise ValueError(f"{raw.size} packed bytes for {count} values of {bits} bits")
    if bits == 8:
        return raw.copy()
    if bits == 1:
        return np.unpackbits(raw, count=count)
    if bits == 2:  # one table lookup widens a packed byte to its 4 codes
        return np.take(_UNPACK2, raw).view(np.uint8)[:count]
    if bits == 4:  # the byte in both halves of a 16-bit word; one mask keeps a code in each
        wide = raw.astype(np.uint16)
        codes = ((wide << np.uint16(8)) | (wide >> np.uint16(4))) & np.uint16(0x0F0F)
        return codes.view(np.uint8)[:count]
    groups = -(-count // _GROUP)
    words = np.zeros((groups, 8), dtype=np.uint8)
    words[:, 8 - bits :] = _padded(raw, bits).reshape(groups, bits)
    split = words.view(">u8").reshape(-1).astype("<u8")
    width = 4 * bits  # bits per half of the current word
    for word, half in (("<u4", 32), ("<u2", 16), (np.uint8, 8)):  # undo the three doublings
        keep = split.dtype.type((1 << width) - 1)
        wide = (split >> split.dtype.type(width)) | ((split & keep) << split.dtype.type(half))
        split = wide.astype(split.dtype, copy=False).view(word)
        width //= 2
    return split[:count]
