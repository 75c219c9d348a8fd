"""Codec throughput: ``python -m flora_tools.codec_bench`` (a benchmark that prints, not a test).

Encode + decode of a real adapter's tensors (default: CIFAR ResNet-18, r = 64, norms and head),
in MB/s of fp32 input, beside a plain copy of the same tensors as the reference, for every
affine width and the top-k codecs by default (``--codecs`` to choose; each row says whether it
reaches its goal: 2 GB/s for affine, 1 GB/s for top-k). With ``--runs``
it also reports, from finished run folders, the share of round wall time spent in codecs: the
server's (encode down, decode up) against the round's seconds, and the clients' (decode down,
encode up) against the time the client spent on the message. With ``--compressors RUN`` it
measures general-purpose lossless compressors on a *real* update, the choice behind the
entropy stage (``strategies.codecs.entropy``): one client of the finished run ``RUN`` trains one
round from the run's final global adapters, and each codec's message of that update is
compressed with zlib, bz2 (NVIDIA FLARE's), lzma and zstd.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flora_app.ml.lora import ModelSpec, build_trainable, exchanged_state
from flora_app.results import read_rounds
from strategies.codecs import codec_spec, decode_blob, get_codec, read_header, sparse_spec


def _best_seconds(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


DEFAULT_CODECS = [
    *(codec_spec(b) for b in range(8, 0, -1)),
    "fp16",
    sparse_spec(0.1, "global", 32),
    sparse_spec(0.1, "tensor", 32),
    sparse_spec(0.01, "global", 32),
    sparse_spec(0.1, "global", 8),
]
GOAL_MB_S = {"affine": 2000.0, "topk": 1000.0}  # issue 14: encode + decode, fp32 in


def goal_of(spec: str) -> float | None:
    """The throughput goal for a codec family, in MB/s (None: no goal)."""
    return GOAL_MB_S.get(spec.split(":", 1)[0])


def throughput(tensors: OrderedDict[str, np.ndarray], specs: list[str], repeat: int) -> list[dict]:
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
    for spec in specs:
        codec = get_codec(spec)
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


def real_update(run_dir: Path, partition: int = 7) -> OrderedDict[str, np.ndarray]:
    """The update one client of ``run_dir``'s federation sends after a round of local training
    from the run's final global adapters (its run-config's epochs, batch size and rate)."""
    from flora_app.checkpoint import load_checkpoint
    from flora_app.config import FloraConfig
    from flora_app.ml.lora import load_exchanged_state
    from flora_app.task import load_client_data, local_train, model_spec

    checkpoint = load_checkpoint(run_dir)
    cfg = FloraConfig.from_run_config(checkpoint.run_config)
    node = {"partition-id": partition, "num-partitions": 100}
    dataset, split, _ = load_client_data(cfg, node)
    spec = model_spec(cfg, dataset)
    model = build_trainable(spec)
    load_exchanged_state(model, spec, checkpoint.global_arrays)
    before = exchanged_state(model, spec)
    local_train(model, cfg, dataset, split, server_round=0, partition=partition)
    after = exchanged_state(model, spec)
    return OrderedDict((k, (after[k] - before[k]).astype(np.float32)) for k in after)


def compressors(tensors: Mapping[str, np.ndarray], specs: list[str]) -> list[dict]:
    """Each codec's message of ``tensors`` through each lossless compressor: bytes, ms."""
    import bz2
    import lzma
    import zlib

    import zstandard

    tools: dict[str, Callable[[bytes], bytes]] = {
        "zlib-9": lambda b: zlib.compress(b, 9),
        "bz2-9": lambda b: bz2.compress(b, 9),
        "lzma": lzma.compress,
        "zstd-3": zstandard.ZstdCompressor(level=3).compress,
        "zstd-19": zstandard.ZstdCompressor(level=19).compress,
    }
    rows = []
    for spec in specs:
        blob = get_codec(spec).encode(tensors)
        row: dict[str, Any] = {"codec": spec, "bytes": len(blob)}
        for name, tool in tools.items():
            row[name] = len(tool(blob))
            row[f"{name} ms"] = 1e3 * _best_seconds(lambda t=tool, b=blob: t(b), 3)
        rows.append(row)
    return rows


def codec_share(run_dir: Path) -> dict:
    """Codec time as a share of round time, from a run folder's ``rounds.jsonl``."""
    rounds = read_rounds(run_dir)
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
    parser.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS, help="codec names")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    parser.add_argument(
        "--compressors", type=Path, default=None, help="a finished run: compare compressors"
    )
    parser.add_argument(
        "--adaptive",
        type=Path,
        default=None,
        help="a finished run: fixed widths against uplink-budget-bytes at equal bytes",
    )
    args = parser.parse_args(argv)
    if args.compressors is not None:
        print_compressors(args.compressors)
        return
    if args.adaptive is not None:
        print_adaptive(args.adaptive)
        return

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
    print(
        "| codec | encode ms | decode ms | MB/s (fp32 in) | vs plain copy | goal MB/s "
        "| message payload B |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in throughput(tensors, args.codecs, args.repeat):
        goal = goal_of(row["codec"])
        verdict = "" if goal is None else f"{goal:.0f} {'met' if row['mb_s'] >= goal else 'missed'}"
        print(
            f"| {row['codec']} | {1e3 * row.get('encode_s', row['seconds']):.2f} | "
            f"{1e3 * row.get('decode_s', 0.0):.2f} | {row['mb_s']:.0f} | {row['ratio']:.3f}x | "
            f"{verdict} | {row['bytes']:,} |"
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


COMPRESSED_CODECS = [
    "fp32",
    codec_spec(8),
    codec_spec(4),
    codec_spec(2),
    sparse_spec(0.1, "global", 32),
    sparse_spec(0.1, "global", 8),
]


def print_compressors(run_dir: Path) -> None:
    update = real_update(run_dir)
    values = sum(v.size for v in update.values())
    print(f"a real update from {run_dir}: {len(update)} tensors, {values:,} values\n")
    names = ["zlib-9", "bz2-9", "lzma", "zstd-3", "zstd-19"]
    timed = ["zlib-9", "bz2-9", "lzma", "zstd-3"]
    print(
        "| codec | message B | "
        + " | ".join(f"{n} (share)" for n in names)
        + " | "
        + " | ".join(f"{n} ms" for n in timed)
        + " |"
    )
    print("| --- | --- |" + " --- |" * (len(names) + len(timed)))
    for row in compressors(update, COMPRESSED_CODECS):
        cells = " | ".join(f"{row[n]:,} ({row[n] / row['bytes']:.2f})" for n in names)
        times = " | ".join(f"{row[f'{n} ms']:.2f}" for n in timed)
        print(f"| {row['codec']} | {row['bytes']:,} | {cells} | {times} |")


def adaptive_rows(
    tensors: Mapping[str, np.ndarray], widths: Sequence[int], vectors: str = "fp32"
) -> list[dict]:
    """Each fixed width against ``uplink-budget-bytes`` at that width's message size (widths
    up to 8): bytes and squared error relative to the update's own energy."""
    energy = sum(float((v.astype(np.float64) ** 2).sum()) for v in tensors.values())

    def error(blob: bytes) -> float:
        got = decode_blob(blob)
        return sum(float(((got[k] - v) ** 2).sum()) for k, v in tensors.items()) / energy

    rows = []
    for width in widths:
        fixed = get_codec(codec_spec(width, vectors=vectors)).encode(tensors)
        adaptive = get_codec(codec_spec(8, vectors=vectors, budget=len(fixed))).encode(tensors)
        chosen = [e.bits for e in read_header(adaptive)[0] if e.kind == "q"]
        rows.append(
            {
                "width": width,
                "fixed B": len(fixed),
                "adaptive B": len(adaptive),
                "fixed error": error(fixed),
                "adaptive error": error(adaptive),
                "widths": f"{min(chosen)}-{max(chosen)}" if chosen else "-",
            }
        )
    return rows


def print_adaptive(run_dir: Path) -> None:
    update = real_update(run_dir)
    print(f"a real update from {run_dir}: relative squared error at equal bytes\n")
    print("| vectors | width | fixed B | adaptive B | fixed error | adaptive error | widths |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for vectors in ("fp32", "quant"):
        for r in adaptive_rows(update, (2, 3, 4, 6), vectors):
            print(
                f"| {vectors} | {r['width']} | {r['fixed B']:,} | {r['adaptive B']:,} | "
                f"{r['fixed error']:.2e} | {r['adaptive error']:.2e} | {r['widths']} |"
            )


if __name__ == "__main__":
    main()
