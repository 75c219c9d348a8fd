"""Codec throughput: ``python -m flora_tools.codec_bench`` (a benchmark that prints, not a test).

Encode + decode of a real adapter's tensors (default: CIFAR ResNet-18, r = 64, norms and head),
in MB/s of fp32 input, beside a plain copy of the same tensors as the reference. With ``--runs``
it also reports, from finished run folders, the share of round wall time spent in codecs: the
server's (encode down, decode up) against the round's seconds, and the clients' (decode down,
encode up) against the time the client spent on the message.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flora_app.ml.lora import ModelSpec, build_trainable, exchanged_state
from strategies.codecs import codec_spec, decode_blob, get_codec


def _best_seconds(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def throughput(tensors: OrderedDict[str, np.ndarray], bits: list[int], repeat: int) -> list[dict]:
    mb = sum(v.nbytes for v in tensors.values()) / 1e6
    copy_s = _best_seconds(lambda: OrderedDict((k, v.copy()) for k, v in tensors.items()), repeat)
    rows = [
        {
            "codec": "plain copy (reference)",
            "seconds": copy_s,
            "mb_s": mb / copy_s,
            "ratio": 1.0,
            "bytes": int(mb * 1e6),
        }
    ]
    for b in bits:
        codec = get_codec(codec_spec(b))
        blob = codec.encode(tensors)
        enc = _best_seconds(lambda c=codec: c.encode(tensors), repeat)
        dec = _best_seconds(lambda bl=blob: decode_blob(bl), repeat)
        rows.append(
            {
                "codec": codec.spec,
                "seconds": enc + dec,
                "mb_s": mb / (enc + dec),
                "ratio": copy_s / (enc + dec),
                "bytes": len(blob),
                "encode_s": enc,
                "decode_s": dec,
            }
        )
    return rows


def codec_share(run_dir: Path) -> dict:
    """Codec time as a share of round time, from a run folder's ``rounds.jsonl``."""
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    server = sum(r.get("server_codec_seconds", 0.0) for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    client_codec = sum(r.get("client_codec_seconds", 0.0) for r in rounds)
    client_total = sum(r.get("client_client_seconds", 0.0) for r in rounds)
    return {
        "run": run_dir.name,
        "server_share": server / seconds if seconds else 0.0,
        "client_share": client_codec / client_total if client_total else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    args = parser.parse_args(argv)

    spec = ModelSpec(
        args.model, 3, 10, 64, seed=0, use_lora=True, lora_r=args.rank, lora_alpha=16.0 * args.rank
    )
    rng = np.random.default_rng(0)
    tensors = OrderedDict(
        (k, rng.normal(size=v.shape).astype(np.float32))
        for k, v in exchanged_state(build_trainable(spec), spec).items()
    )
    mb = sum(v.nbytes for v in tensors.values()) / 1e6
    print(f"{args.model} r={args.rank}: {len(tensors)} tensors, {mb:.1f} MB fp32\n")
    print("| codec | encode+decode s | MB/s (fp32 in) | vs plain copy | message payload B |")
    print("| --- | --- | --- | --- | --- |")
    for row in throughput(tensors, args.bits, args.repeat):
        print(
            f"| {row['codec']} | {row['seconds']:.4f} | {row['mb_s']:.0f} | "
            f"{row['ratio']:.3f}x | {row['bytes']:,} |"
        )
    if args.runs:
        print("\n| run | server codec share of round | client codec share of its work |")
        print("| --- | --- | --- |")
        for run in args.runs:
            share = codec_share(run)
            print(
                f"| {share['run']} | {100 * share['server_share']:.2f} % | "
                f"{100 * share['client_share']:.2f} % |"
            )


if __name__ == "__main__":
    main()
