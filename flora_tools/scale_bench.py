"""Simulation at scale: ``python -m flora_tools.scale_bench`` (a benchmark that prints).

Production federations have thousands of devices and sample a few per round. What a round
costs should then follow the sampled clients, not the federation: for 100, 1,000 and 10,000
simulated SuperNodes with 10 clients per round, this runs flora (synthetic data, the tiny CNN,
fedlora, 3 rounds) and Flower's floor (``flora_tools/floor_app``: FedAvg over a trivial
ClientApp) one after the other, each through ``flora_tools.run_simulation``, and prints the
seconds per round (rounds 2 on: round 1 pays the actors' start) and the machine's memory at
its peak above what it was before the run (sampled every half second; on a quiet machine that
is what the simulation holds), with each size's ratio to the smallest. Goal (issue 16): at
10,000 SuperNodes within 1.5x of 100, for both.

Every partition needs a sample, so the synthetic dataset grows with N (two samples a node:
each client's work stays the same), and with it flora's central test split (20 %: 400 images
at 100 nodes, 4,000 at 10,000), which the server scores every round. That cost belongs to the
test set, not to the federation, and the floor app scores nothing; so flora's round is also
printed without its central scoring (``eval_seconds`` in ``rounds.jsonl``), the figure to set
beside the floor's.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from flora_app.results import read_rounds
from flora_tools.deployment import processes

ROOT = Path(__file__).resolve().parent.parent
FLOOR_APP = Path(__file__).resolve().parent / "floor_app"
SIZES = (100, 1000, 10000)
PER_ROUND = 10


def flora_config(supernodes: int, out: Path) -> str:
    fraction = PER_ROUND / supernodes
    # Two synthetic samples per node at least: every partition needs one to train on.
    samples = max(2000, 2 * supernodes)
    return (
        f"dataset='synthetic' synthetic-samples={samples} model='cnn' model-width=16 "
        f"lora-r=4 lora-alpha=8.0 local-epochs=1 strategy='fedlora' num-server-rounds=3 "
        f"fraction-train={fraction!r} fraction-evaluate={fraction!r} "
        f"output-dir='{out}' run-name='scale-{supernodes}'"
    )


def floor_config(supernodes: int, out: Path) -> str:
    fraction = PER_ROUND / supernodes
    return (
        f"num-server-rounds=3 fraction-train={fraction!r} fraction-evaluate={fraction!r} "
        f"result='{out / f'floor-{supernodes}.json'}'"
    )


class PeakMemory:
    """The machine's used memory at its peak above a baseline, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.baseline = psutil.virtual_memory().used
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, psutil.virtual_memory().used)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def added_gb(self) -> float:
        return (self.peak - self.baseline) / 1e9


def run(app: Path, supernodes: int, run_config: str, workdir: Path, timeout: float) -> float:
    """Peak added memory (GB) of one simulation; raises if it does not complete."""
    cmd = [
        sys.executable,
        "-m",
        "flora_tools.run_simulation",
        "--supernodes",
        str(supernodes),
        "--app",
        str(app),
        "--flwr-home",
        str(workdir / "flwr-home"),
        "--run-config",
        run_config,
    ]
    log = workdir / f"{'flora' if app == ROOT else app.name}-{supernodes}.log"
    with PeakMemory() as memory, log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: the launcher then stops the SuperLink and the simulation it
            # started, which a killed launcher leaves running (measured: a 10,000-node run
            # went on training beside the next benchmark).
            processes.wait_or_kill(proc, 120.0, first=signal.SIGTERM)
            raise SystemExit(
                f"{log.stem} SuperNodes: not done in {timeout:.0f} s; see {log}"
            ) from None
    if code != 0:
        raise SystemExit(f"{log.stem} SuperNodes failed ({code}); see {log}")
    return memory.added_gb


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] or seconds)


def measure(supernodes: int, workdir: Path, timeout: float) -> dict[str, float]:
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    flora_gb = run(ROOT, supernodes, flora_config(supernodes, out), workdir, timeout)
    rows = read_rounds(out / f"scale-{supernodes}")
    flora_s = steady([r["seconds"] for r in rows])
    federation_s = steady([r["seconds"] - r["eval_seconds"] for r in rows])
    floor_gb = run(FLOOR_APP, supernodes, floor_config(supernodes, out), workdir, timeout)
    floor_s = steady(json.loads((out / f"floor-{supernodes}.json").read_text())["seconds"])
    return {
        "flora_s": flora_s,
        "flora_federation_s": federation_s,
        "flora_gb": flora_gb,
        "floor_s": floor_s,
        "floor_gb": floor_gb,
    }


def table(rows: dict[int, dict[str, float]]) -> str:
    """The Markdown table of ``measure``'s rows, each ratio against the first (smallest) size."""
    base = next(iter(rows.values()))

    def ratio(r: dict[str, float], key: str) -> str:
        return f"{r[key] / max(base[key], 1e-3):.2f}x"

    lines = [
        "| SuperNodes | flora s / round | vs smallest | without central scoring | vs smallest "
        "| flora +GB | vs smallest | floor s / round | vs smallest | floor +GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, r in rows.items():
        lines.append(
            f"| {size:,} | {r['flora_s']:.2f} | {ratio(r, 'flora_s')} | "
            f"{r['flora_federation_s']:.2f} | {ratio(r, 'flora_federation_s')} | "
            f"{r['flora_gb']:.2f} | {ratio(r, 'flora_gb')} | "
            f"{r['floor_s']:.2f} | {ratio(r, 'floor_s')} | {r['floor_gb']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workdir", type=Path, default=ROOT / ".flwr" / "scale-bench")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for size in args.sizes:
        rows[size] = measure(size, args.workdir, args.timeout)
        print(f"{size} SuperNodes: {json.dumps(rows[size])}", flush=True)
    print(f"\n{PER_ROUND} clients per round, 3 rounds; seconds per round from round 2\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
