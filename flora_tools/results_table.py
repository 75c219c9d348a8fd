"""Markdown table of finished runs, straight from their run folders (what docs/results.md shows).

Usage: python -m flora_tools.results_table "label=outputs/a,outputs/b" "label2=outputs/c" ...
Each label is one configuration; several folders are seeds, reported as mean and spread. The
first label is the reference for the byte ratios.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from flora_app.results import read_rounds


def load(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = read_rounds(run_dir)
    last = rounds[-5:]
    return {
        "final": summary["final_accuracy"],
        "last5": sum(r["accuracy"] for r in last) / len(last),
        "up": summary["bytes_up_per_client_per_round"],
        "down": summary["bytes_down_per_client_per_round"],
        "seconds": summary["wall_seconds"],
    }


def _mean_spread(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def main(args: list[str]) -> None:
    groups = []
    for arg in args:
        label, dirs = arg.rsplit("=", 1)
        groups.append((label, [load(Path(d)) for d in dirs.split(",")]))
    ref_up = statistics.fmean(r["up"] for r in groups[0][1])
    ref_total = statistics.fmean(r["up"] + r["down"] for r in groups[0][1])
    print(
        "| configuration | seeds | final accuracy % | mean of last 5 rounds % | uplink B per "
        "client per round | downlink B per client per round | uplink vs first row "
        "| up+down vs first row |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, runs in groups:
        up = statistics.fmean(r["up"] for r in runs)
        down = statistics.fmean(r["down"] for r in runs)
        print(
            f"| {label} | {len(runs)} | {_mean_spread([r['final'] for r in runs])} | "
            f"{_mean_spread([r['last5'] for r in runs])} | {up:,.0f} | {down:,.0f} | "
            f"{ref_up / up:.1f}x | {ref_total / (up + down):.1f}x |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
