"""Asymmetric affine quantization to b bits, per output channel or per tensor.

x ~ offset + q * scale with q in [0, 2**b - 1]. Offsets are rounded *down* and scales *up* to
the metadata dtype (fp16 or fp32), so [offset, offset + scale * (2**b - 1)] always covers the
data and every element's error stays within scale / 2 of the scale actually sent. Arithmetic
is float64 so huge magnitudes with tiny ranges do not lose the range.
"""

from __future__ import annotations

import numpy as np

META_DTYPES = {"f16": np.float16, "f32": np.float32}


def channels_of(shape: tuple[int, ...], per_channel: bool) -> int:
    """Output channels for per-channel quantization (dim 0 of 2-D and 4-D tensors), else 1."""
    return int(shape[0]) if per_channel and len(shape) >= 2 else 1


def _round_down(x: np.ndarray, dtype: type) -> np.ndarray:
    y = x.astype(dtype)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, dtype(-np.inf)), y)


def _round_up(x: np.ndarray, dtype: type) -> np.ndarray:
    y = x.astype(dtype)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, dtype(np.inf)), y)


def quantize(
    x: np.ndarray, bits: int, per_channel: bool, meta: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q as uint8 of shape (C, n/C), scale (C,), offset (C,)) in the ``meta`` dtype.

    Raises ``OverflowError`` when the range does not fit the metadata dtype (callers fall back
    to fp32 metadata, then refuse), ``ValueError`` on non-finite input.
    """
    dtype = META_DTYPES[meta]
    levels = (1 << bits) - 1
    with np.errstate(over="ignore", invalid="ignore"):
        rows = np.asarray(x, dtype=np.float64).reshape(channels_of(x.shape, per_channel), -1)
        if not np.all(np.isfinite(rows)):
            raise ValueError("cannot quantize NaN or Inf")
        offset = _round_down(rows.min(axis=1), dtype)
        span = rows.max(axis=1) - offset.astype(np.float64)
        scale = _round_up(span / levels, dtype)
        # Rounding the scale to nearest may still fall short of the span: step up until it covers.
        short = scale.astype(np.float64) * levels + offset.astype(np.float64) < rows.max(axis=1)
        scale = np.where(short, np.nextafter(scale, dtype(np.inf)), scale)
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))):
        raise OverflowError(f"value range does not fit {meta} scale/offset")
    s = scale.astype(np.float64)[:, None]
    safe = np.where(s > 0, s, 1.0)
    q = np.rint((rows - offset.astype(np.float64)[:, None]) / safe)
    q = np.clip(np.where(s > 0, q, 0.0), 0, levels).astype(np.uint8)
    return q, scale, offset


def dequantize(
    q: np.ndarray, scale: np.ndarray, offset: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """float32 tensor of ``shape`` from codes (C, n/C) and per-row scale / offset."""
    rows = (
        offset.astype(np.float64)[:, None]
        + q.astype(np.float64) * scale.astype(np.float64)[:, None]
    )
    return rows.astype(np.float32).reshape(shape)
