"""Measured message sizes per configuration: ``python -m flora_tools.sizes``.

For each model and (rank, bits) it builds the real exchanged tensors (peft LoRA on every conv,
norms and head, alpha = 16 r), encodes them with the codec a run would use, wraps them in the
Flower message a run would send (header, config or metrics included) and measures it as Flower
serializes it. The baseline is ``fedavg``'s message: every weight of the model in fp32.

Values are random (B != 0): LoRA's zero-initialised B would otherwise be deduplicated by
Flower's content-addressed objects and flatter the first round.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from flora_app.metering import message_wire_bytes, standalone_message
from flora_app.ml.lora import ModelSpec, build_trainable, exchanged_state
from strategies.codecs import codec_spec, get_codec, read_header
from strategies.wire import HEADER_KEY, blob_to_record, make_header

_TRAIN_CONFIG = {
    "lr": 0.01,
    "local-epochs": 5,
    "batch-size": 32,
    "momentum": 0.9,
    "base-fingerprint": "0" * 16,
    "server-round": 100,
}
_METRICS = {"train-loss": 0.5, "num-examples": 500, "codec-seconds": 0.01, "client-seconds": 1.0}


@dataclass
class Size:
    """One measured message: bytes as serialized, the codec body it carries, and the bytes of
    the same message without its adapter record (Flower's envelope, config or metrics)."""

    wire: int
    payload: int
    envelope: int

    @property
    def overhead(self) -> float:
        """Whole message over payload: everything that is not the tensors' own bytes."""
        return self.wire / self.payload - 1.0

    @property
    def record_overhead(self) -> float:
        """What the adapter record costs beyond its payload: container header + Flower objects."""
        return (self.wire - self.envelope) / self.payload - 1.0


def _random_like(state: OrderedDict[str, np.ndarray], seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (k, (rng.normal(size=v.shape) * 0.05).astype(np.float32)) for k, v in state.items()
    )


def measure(tensors: OrderedDict[str, np.ndarray], spec: str, direction: str) -> Size:
    """Bytes of the message carrying ``tensors`` encoded with ``spec`` in ``direction``."""
    blob = get_codec(spec).encode(tensors)
    content = RecordDict({"arrays": blob_to_record(blob)})
    if direction == "down":
        content["config"] = ConfigRecord(_TRAIN_CONFIG)
        content[HEADER_KEY] = make_header(
            spec, reply_codec=spec, reply="update", error_feedback=False
        )
    else:
        content["metrics"] = MetricRecord(_METRICS)
        content[HEADER_KEY] = make_header(spec, reply="update")
    payload = len(blob) - read_header(blob)[1]
    wire = message_wire_bytes(standalone_message(content))
    del content["arrays"]
    return Size(wire, payload, message_wire_bytes(standalone_message(content)))


def table(
    models: list[str],
    ranks: list[int],
    bits: list[int],
    in_channels: int,
    granularity: str,
    meta: str,
) -> list[dict]:
    rows = []
    for model in models:
        base = ModelSpec(model, in_channels, 10, 64, seed=0, use_lora=False)
        full = _random_like(exchanged_state(build_trainable(base), base), 0)
        fedavg = measure(full, "fp32", "up")
        rows.append(
            {
                "model": model,
                "config": "fedavg (full model)",
                "params": sum(v.size for v in full.values()),
                "up": fedavg.wire,
                "down": fedavg.wire,
                "down_q": fedavg.wire,
                "overhead": fedavg.overhead,
                "record_overhead": fedavg.record_overhead,
                "ratio_up": 1.0,
                "ratio_total": 1.0,
            }
        )
        for r in ranks:
            spec = ModelSpec(
                model, in_channels, 10, 64, seed=0, use_lora=True, lora_r=r, lora_alpha=16.0 * r
            )
            state = _random_like(exchanged_state(build_trainable(spec), spec), r)
            down_fp32 = measure(state, "fp32", "down")
            for b in bits:
                codec = codec_spec(b, granularity, meta)
                up = measure(state, codec, "up")
                down_q = measure(state, codec, "down")
                rows.append(
                    {
                        "model": model,
                        "config": f"r={r} {'fp32' if b == 32 else f'{b}-bit'}",
                        "params": sum(v.size for v in state.values()),
                        "up": up.wire,
                        "down": down_fp32.wire,
                        "down_q": down_q.wire,
                        "overhead": up.overhead,
                        "record_overhead": up.record_overhead,
                        "ratio_up": fedavg.wire / up.wire,
                        "ratio_total": 2 * fedavg.wire / (up.wire + down_fp32.wire),
                    }
                )
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | config | values sent | up B/msg | down B/msg (fp32) | down B/msg (same bits) "
        "| framing: record / message | FedAvg / up | FedAvg / (up + fp32 down) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['config']} | {r['params']:,} | {r['up']:,} | {r['down']:,} | "
            f"{r['down_q']:,} | {100 * r['record_overhead']:.2f} % / {100 * r['overhead']:.2f} % | "
            f"{r['ratio_up']:.1f}x | "
            f"{r['ratio_total']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measured bytes per message, up and down.")
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet18"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--bits", nargs="+", type=int, default=[32, 8, 4, 2])
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--granularity", default="channel", choices=["channel", "tensor"])
    parser.add_argument("--meta", default="fp16", choices=["fp16", "fp32"])
    args = parser.parse_args(argv)
    print(
        to_markdown(
            table(args.models, args.ranks, args.bits, args.in_channels, args.granularity, args.meta)
        )
    )


if __name__ == "__main__":
    main()
