"""The ``strategy`` run-config key: each name is a preset over (inner strategy, codecs).

Aggregation is Flower's own (``flwr.serverapp.strategy``); a preset only says which Flower
strategy aggregates, what the wire codecs are in each direction, and whether the model is a
frozen base plus LoRA adapters or trains in full.
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
    downlink: str = "fp32"
    uplink: str = "fp32"
    summary: str = ""


_INNER: dict[str, type[Strategy]] = {"fedavg": FedAvg}

PRESETS: dict[str, Preset] = {
    "fedavg": Preset(
        inner="fedavg", lora=False, summary="the whole model trained and exchanged in fp32"
    ),
    "fedlora": Preset(
        inner="fedavg", lora=True, summary="LoRA adapters (+ norms, head) exchanged in fp32"
    ),
}


def build_strategy(
    name: str,
    fraction_train: float,
    fraction_evaluate: float,
    min_available_nodes: int = 2,
) -> CompressionStrategy:
    """The Flower strategy for a preset: its inner strategy wrapped by the wire codecs."""
    preset = PRESETS[name]
    inner_cls = _INNER[preset.inner]
    inner = inner_cls(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
        min_available_nodes=min_available_nodes,
    )
    return CompressionStrategy(inner, downlink=preset.downlink, uplink=preset.uplink)
