"""Asymmetric affine quantization to b bits, per output channel or per tensor.

x ~ offset + q * scale with q in [0, 2**b - 1]. Offsets are rounded *down* and scales *up* to
the metadata dtype, so [offset, offset + scale * (2**b - 1)] always covers the data and every
element's error stays within scale / 2 of the scale actually sent. Metadata arithmetic is
float64 so huge magnitudes with tiny ranges do not lose the range.

fp16 metadata is stored relative to one fp32 ``unit`` per tensor (the largest |offset| or
scale): updates are small (1e-5..1e-7), which plain fp16 holds only as subnormals with a few
bits of precision. Measured on digits, plain fp16 cost 1-2 accuracy points at 4 bits against
fp32 metadata on every seed; relative to the unit, fp16 keeps its 11 bits at any magnitude.

The metadata is computed in float64; the passes over the elements run in float32, which adds
float32 rounding (a few ulps of the tensor's largest magnitude) to the half step.
"""

from __future__ import annotations

import numpy as np

META_DTYPES = {"f16": np.float16, "f32": np.float32}
_F32_MAX = float(np.finfo(np.float32).max)
# The largest |value| / step for which the fused float32 pass is exact enough: 2**12 steps
# keep its rounding error under 2**-12 of a step.
_FUSED_REACH = float(2**12)


def channels_of(shape: tuple[int, ...], per_channel: bool) -> int:
    """Output channels for per-channel quantization (dim 0 of 2-D and 4-D tensors), else 1."""
    return int(shape[0]) if per_channel and len(shape) >= 2 else 1


def as_rows(x: np.ndarray, per_channel: bool) -> np.ndarray:
    """``x`` as (rows, n / rows), float32 or float64 as given (other dtypes to float64)."""
    rows = np.asarray(x)
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float64)
    return rows.reshape(channels_of(rows.shape, per_channel), -1)


def row_ranges(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (min, max) as float64; ``ValueError`` on NaN or Inf.

    min and max propagate NaN and reach Inf, so they double as the finiteness check: the
    tensor is read twice, not three times.
    """
    # reduceat over the flat rows is about twice as fast as min(axis=1) on short rows.
    flat = np.ascontiguousarray(rows).reshape(-1)
    starts = np.arange(0, flat.size, rows.shape[1])
    lo = np.minimum.reduceat(flat, starts).astype(np.float64)
    hi = np.maximum.reduceat(flat, starts).astype(np.float64)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("cannot quantize NaN or Inf")
    return lo, hi


def _round_down(x: np.ndarray, dtype: type) -> np.ndarray:
    y = x.astype(dtype)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, dtype(-np.inf)), y)


def _round_up(x: np.ndarray, dtype: type) -> np.ndarray:
    y = x.astype(dtype)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, dtype(np.inf)), y)


def affine_grid(
    lo: np.ndarray, hi: np.ndarray, rows_per_tensor: np.ndarray, bits: int, meta: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale, offset) per row in ``meta``, and the unit and whether it fits, per tensor.

    ``lo`` / ``hi`` hold the rows of many tensors back to back; ``rows_per_tensor`` says how
    many rows each has. The real grid of a row is ``offset * unit`` + q * ``scale * unit``.
    One call serves a whole message: this is arithmetic on a few thousand rows, whose cost is
    the number of numpy calls, so it must not grow with the number of tensors.
    """
    dtype = META_DTYPES[meta]
    levels = (1 << bits) - 1
    counts = np.asarray(rows_per_tensor, dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if meta == "f16":
            biggest = np.maximum(
                np.maximum.reduceat(np.abs(lo), starts),
                np.maximum.reduceat(hi - lo, starts) / levels,
            )
            unit = np.where(biggest > 0, biggest.astype(np.float32), np.float32(1.0))
            unit = unit.astype(np.float64)
        else:
            unit = np.ones(counts.size)
        unit_rows = np.repeat(unit, counts)
        offset = _round_down(lo / unit_rows, dtype)
        off64 = offset.astype(np.float64) * unit_rows
        scale = _round_up((hi - off64) / levels / unit_rows, dtype)
        # Rounding may still fall short of the span: step the scale up until it covers.
        short = scale.astype(np.float64) * unit_rows * levels + off64 < hi
        scale = np.where(short, np.nextafter(scale, dtype(np.inf)), scale)
        finite = np.isfinite(offset) & np.isfinite(scale)
    fits = np.logical_and.reduceat(finite, starts) & np.isfinite(unit) & (unit > 0)
    return scale, offset, unit, fits


def affine_codes(
    rows: np.ndarray, hi: np.ndarray, scale: np.ndarray, offset: np.ndarray, unit: float, bits: int
) -> np.ndarray:
    """round((rows - offset) / scale) per row, in [0, 2**bits - 1], as uint8 (C, n/C).

    The grid is exact float64; the passes over the elements run in float32 (half the memory
    traffic of float64, which is what bounds a codec): one multiply and one add per element,
    then the truncating cast. Tensors far from zero relative to their step (or float64 input,
    or values near float32's limits) take float64 passes with an explicit clip instead.
    """
    off64 = offset.astype(np.float64) * unit
    step = scale.astype(np.float64) * unit
    levels = (1 << bits) - 1
    with np.errstate(over="ignore", divide="ignore"):
        inv = np.where(step > 0, 1.0 / np.where(step > 0, step, 1.0), 0.0)
    reach = float(np.max(np.maximum(np.abs(off64), np.abs(hi)) * inv))  # largest |x| in steps
    if rows.dtype == np.float32 and reach < _FUSED_REACH:
        # x * inv + (0.5 - offset * inv): float32 moves each value by at most about
        # reach * 2**-24 steps (far below 0.5), so + 0.5 and the truncating cast round and the
        # result stays in [0, levels] without a clip. Beyond _FUSED_REACH the product would
        # cancel too many bits against the offset, and float64 passes take over.
        work = np.multiply(rows, inv.astype(np.float32)[:, None], dtype=np.float32)
        work += (0.5 - off64 * inv).astype(np.float32)[:, None]
        return work.astype(np.uint8)
    work = (rows.astype(np.float64) - off64[:, None]) * inv[:, None]
    np.rint(work, out=work)
    np.clip(work, 0, levels, out=work)
    return work.astype(np.uint8)


def quantize(
    x: np.ndarray, bits: int, per_channel: bool, meta: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(q as uint8 (C, n/C), scale (C,), offset (C,), unit) of one tensor, in ``meta``.

    The real scale and offset are ``scale * unit`` and ``offset * unit``; ``unit`` is 1.0 for
    fp32 metadata. Raises ``OverflowError`` when the range does not fit the metadata dtype
    (callers fall back to fp32, then refuse), ``ValueError`` on non-finite input.
    """
    rows = as_rows(x, per_channel)
    lo, hi = row_ranges(rows)
    scale, offset, unit, fits = affine_grid(lo, hi, [rows.shape[0]], bits, meta)
    if not fits[0]:
        raise OverflowError(f"value range does not fit {meta} scale/offset")
    return (
        affine_codes(rows, hi, scale, offset, float(unit[0]), bits),
        scale,
        offset,
        float(unit[0]),
    )


def dequantize(
    q: np.ndarray, scale: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], unit: float = 1.0
) -> np.ndarray:
    """float32 tensor of ``shape`` from codes (C, n/C), per-row scale / offset and the unit.

    float32 passes like ``affine_codes``, unless a step or the largest value does not fit
    float32 (only a hostile or extreme message): then float64, so the result is right either way.
    """
    s = scale.astype(np.float64) * unit
    o = offset.astype(np.float64) * unit
    top = float(q.max()) if q.size else 0.0
    if np.all(np.abs(o) + s * top < _F32_MAX / 2):
        out = q.astype(np.float32)
        out *= s.astype(np.float32)[:, None]
        out += o.astype(np.float32)[:, None]
        return out.reshape(shape)
    return (o[:, None] + q.astype(np.float64) * s[:, None]).astype(np.float32).reshape(shape)
