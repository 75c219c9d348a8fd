"""The ``strategy`` run-config key: each name is a preset over (inner strategy, codecs).

Aggregation is Flower's own (``flwr.serverapp.strategy``); a preset only says which Flower
strategy aggregates, which wire codecs each direction uses, and whether the model is a frozen
base plus LoRA adapters or trains in full.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import FedAvg, Strategy

from strategies.compression import CompressionStrategy


@dataclass(frozen=True)
class Preset:
    """How one ``strategy`` name is built."""

    inner: str
    lora: bool
    quantized: bool = False
    summary: str = ""


@dataclass(frozen=True)
class WireSettings:
    """Codec knobs of the quantizing presets (``quant-*`` and ``error-feedback`` keys)."""

    quant_bits: int = 8
    quant_bits_down: int = 32
    granularity: str = "channel"
    meta: str = "fp16"
    update: bool = True
    error_feedback: bool = False


_INNER: dict[str, type[Strategy]] = {"fedavg": FedAvg}

PRESETS: dict[str, Preset] = {
    "fedavg": Preset("fedavg", lora=False, summary="the whole model, fp32 (the baseline)"),
    "fedlora": Preset("fedavg", lora=True, summary="LoRA adapters + norms + head, fp32"),
    "flocora": Preset(
        "fedavg", lora=True, quantized=True, summary="LoRA adapters, affine b-bit uplink"
    ),
}

# Widths the quant-bits keys accept: affine 1..8 bits, or a float codec.
QUANT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def codec_spec(bits: int, granularity: str = "channel", meta: str = "fp16") -> str:
    """The codec name for a bit width: 32 -> fp32, 16 -> fp16, 1..8 -> affine."""
    if bits == 32:
        return "fp32"
    if bits == 16:
        return "fp16"
    return f"affine:bits={bits}:gran={granularity}:meta={meta}"


def build_strategy(
    name: str,
    fraction_train: float,
    fraction_evaluate: float,
    wire: WireSettings | None = None,
    min_available_nodes: int = 2,
) -> CompressionStrategy:
    """The Flower strategy for a preset: its inner strategy wrapped by the wire codecs."""
    preset = PRESETS[name]
    inner = _INNER[preset.inner](
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
        min_available_nodes=min_available_nodes,
    )
    if not preset.quantized:
        return CompressionStrategy(inner, "fp32", "fp32")
    wire = wire or WireSettings()
    return CompressionStrategy(
        inner,
        downlink=codec_spec(wire.quant_bits_down, wire.granularity, wire.meta),
        uplink=codec_spec(wire.quant_bits, wire.granularity, wire.meta),
        reply="update" if wire.update else "weights",
        error_feedback=wire.error_feedback,
    )
