"""Codec names and the values their parameters may take: the one home of those facts.

The run-config check, the strategies that build codec names and the decoder that parses them
all read these tuples, so a value is allowed everywhere or nowhere.
"""

from __future__ import annotations

AFFINE_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
FLOAT_BITS = (16, 32)
# A value width: affine 1..8 bits, or a float codec (16 -> fp16, 32 -> fp32).
VALUE_BITS = (*AFFINE_BITS, *FLOAT_BITS)
GRANULARITIES = ("channel", "tensor")
# Dtype of the affine scale and offset on the wire.
METAS = ("fp16", "fp32")
# 1-D tensors (norm weights, biases) under an affine codec: fp32 as the paper, or quantized per
# tensor like the rest ("quant": spelled ``:vec=quant`` in the codec name).
VECTOR_MODES = ("fp32", "quant")
# Top-k over all tensors flattened together (FLASC) or per tensor.
SPARSITY_SCOPES = ("global", "tensor")
# The lossless stage after any codec (strategies.codecs.entropy): none, or zstd.
ENTROPY_CODERS = ("none", "zstd")


def with_entropy(spec: str, coder: str) -> str:
    """``spec`` with the entropy stage ``coder`` appended (``none``: unchanged)."""
    if coder not in ENTROPY_CODERS:
        raise ValueError(f"entropy coder {coder!r}: expected one of {', '.join(ENTROPY_CODERS)}")
    suffix = "" if coder == "none" else f"+{coder}"
    return spec if spec.endswith(suffix) else spec + suffix


def codec_spec(
    bits: int,
    granularity: str = "channel",
    meta: str = "fp16",
    vectors: str = "fp32",
    budget: int = 0,
) -> str:
    """The codec name for a value width: 32 -> fp32, 16 -> fp16, 1..8 -> affine; with a
    ``budget`` (bytes per message) the affine width is the largest of per-tensor widths."""
    if bits == 32:
        return "fp32"
    if bits == 16:
        return "fp16"
    if vectors not in VECTOR_MODES:
        raise ValueError(f"vectors = {vectors!r}: expected one of {', '.join(VECTOR_MODES)}")
    spec = f"affine:bits={bits}:gran={granularity}:meta={meta}"
    if vectors != "fp32":
        spec += f":vec={vectors}"
    return f"{spec}:budget={budget}" if budget > 0 else spec


def sparse_spec(density: float, scope: str, value_bits: int) -> str:
    """The top-k codec name for a density, scope and value width."""
    return f"topk:density={density!r}:scope={scope}:values={value_bits}"
