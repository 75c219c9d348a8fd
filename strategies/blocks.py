"""Leading blocks: a node that trains only part of each tensor is sent and sends only that part.

HetLoRA-style rank tiers (``strategies.rank_tiers``) give a weak node the first r of the r_max
LoRA components. It zeroes the others before training, so it needs only the *leading block* of
each tensor of the global, ``value[:s0, :s1, ...]``; everything beyond them is, in its reply,
exactly what it received, so the reply carries the leading blocks too, and the server puts them
back into the global's shape: the rest of an update is zero, the rest of the weights is the
global. Which block a node trains is the app's knowledge (which axis holds LoRA's components);
the wire only needs the shapes, and validates every reply against the shapes its node was asked
for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

# (node id, tensor name, the global tensor's shape) -> the shape of the block that node sends
BlockShape = Callable[[int, str, tuple[int, ...]], tuple[int, ...]]


def fits(block: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``block`` is the shape of a leading block of a tensor of ``shape``."""
    return len(block) == len(shape) and all(0 <= b <= s for b, s in zip(block, shape, strict=True))


def leading_block(value: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """``value[:block[0], :block[1], ...]`` (a view); ``ValueError`` if it does not fit."""
    if not fits(tuple(block), value.shape):
        raise ValueError(f"block {tuple(block)} does not fit in a tensor of shape {value.shape}")
    return value[tuple(slice(0, b) for b in block)]


def with_block(outside: np.ndarray, block: np.ndarray) -> np.ndarray:
    """A copy of ``outside`` whose leading block is ``block``: a node's block put back into
    the full shape, the rest taken from ``outside``."""
    out = np.array(outside, dtype=np.float32, copy=True)
    leading_block(out, block.shape)[...] = block
    return out


def update_of(
    trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]
) -> OrderedDict[str, np.ndarray]:
    """Trained minus received, tensor by tensor, where a trained tensor may be a leading
    block of the received one (a node that trained fewer components); ``ValueError`` if the
    names differ or a block does not fit."""
    if list(received) != list(trained):
        raise ValueError("reply tensors differ from the received ones; cannot form an update")
    return OrderedDict((k, v - leading_block(received[k], v.shape)) for k, v in trained.items())


def leading_blocks(
    arrays: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]
) -> OrderedDict[str, np.ndarray] | None:
    """``arrays`` cut to the shapes of ``like`` (the same names in the same order), or None
    when the names differ or a block does not fit: the part of a full copy that a node of a
    smaller rank holds."""
    if list(arrays) != list(like) or not all(fits(like[k].shape, arrays[k].shape) for k in like):
        return None
    return OrderedDict((k, leading_block(arrays[k], like[k].shape)) for k in like)
