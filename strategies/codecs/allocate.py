"""Bits per tensor under a byte budget: the affine codec's adaptive precision.

A message of many tensors at one width spends the same bits on a tensor whose values span a
tiny range as on one that spans a wide range. Given the bytes a message may take, this chooses
each tensor's width so that the summed squared quantization error is smallest: uniform
quantization of a row spanning ``r`` with ``2**b - 1`` steps errs by ``(r / (2**b - 1))**2 / 12``
per value on average, so a tensor's error at width ``b`` is ``S / (2**b - 1)**2`` with ``S`` the
sum over its rows of ``values * r**2 / 12``. Widening a tensor by one bit costs about a bit per
value and saves a quarter of its remaining error; those savings per byte shrink with every
bit, so taking the steps with the most error saved per byte first, across all tensors, while
they fit, is the classic greedy (water-filling) allocation, and each tensor's steps come in
order. (Greedy is not an exact knapsack; the codec also weighs the single width for all that
fits and keeps whichever the model rates better, so it never errs more than a fixed width.)
NVIDIA FLARE's adaptive quantizer chooses among formats per tensor; this one chooses widths
for a whole message at a stated size, in one sort.
"""

from __future__ import annotations

import numpy as np


def error_weights(counts: np.ndarray, spans: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``S`` per tensor: its rows' ``values * span**2 / 12`` summed; ``counts`` rows each,
    laid out back to back in ``spans``, ``cols`` values per row."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    per_row = spans.astype(np.float64) ** 2 / 12.0
    sums = np.add.reduceat(per_row, starts) if per_row.size else np.zeros(len(counts))
    return np.where(counts > 0, sums, 0.0) * cols


def model_error(weights: np.ndarray, widths: np.ndarray) -> float:
    """The uniform model's summed squared error of tensors at these widths."""
    levels = (1 << np.asarray(widths, np.int64)).astype(np.float64) - 1.0
    return float((np.asarray(weights, np.float64) / levels**2).sum())


def allocate_bits(
    weights: np.ndarray, sizes: np.ndarray, max_bits: int, code_bytes: int
) -> np.ndarray:
    """Widths in 1..``max_bits`` per tensor (``weights``: ``S`` from ``error_weights``,
    ``sizes``: values per tensor) whose packed codes fit ``code_bytes``.

    Every tensor gets 2 bits first when they fit: 1 bit keeps only the two ends of a row's
    range, so the bell-shaped values of an update, mostly mid-range, err 1.3x (27 values a
    row) to 2.1x (200,000) more than the uniform model the allocation ranks by, while from 2
    bits on it holds within 0.93-1.16x. When 2 bits everywhere do not fit, widths are ranked
    up from 1 bit; when not even 1 bit everywhere fits, all are 1 (the budget is exceeded, not
    refused)."""
    weights = np.asarray(weights, np.float64)
    sizes = np.asarray(sizes, np.int64)
    floor = 2 if max_bits >= 2 and int(((sizes * 2 + 7) // 8).sum()) <= code_bytes else 1
    widths = np.full(len(sizes), floor, np.int64)
    if max_bits <= floor or not len(sizes):
        return widths
    b = np.arange(floor, max_bits, dtype=np.int64)  # step b -> b + 1
    error = 1.0 / ((1 << np.arange(floor, max_bits + 1)).astype(np.float64) - 1.0) ** 2
    gain = weights[:, None] * (error[:-1] - error[1:])[None, :]
    # Steps are ordered by error saved per bit of width (the same cost for every step of a
    # tensor, while its gains fall about 4x a step, so each tensor's steps sort in order and
    # the steps taken are a prefix); what they cost is counted exactly, packing's rounding up
    # to whole bytes included.
    ratio = np.where(gain > 0, gain / np.maximum(sizes, 1)[:, None], 0.0)
    cost = ((sizes[:, None] * (b + 1) + 7) // 8) - ((sizes[:, None] * b + 7) // 8)
    left = code_bytes - int(((sizes * floor + 7) // 8).sum())
    order = np.argsort(-ratio, axis=None, kind="stable")
    taken = (np.cumsum(cost.ravel()[order]) <= left) & (ratio.ravel()[order] > 0)
    steps = np.zeros(ratio.size, bool)
    steps[order[taken]] = True
    return widths + steps.reshape(ratio.shape).sum(axis=1)
