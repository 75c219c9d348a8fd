"""The attack table of docs/robustness.md, from the results folder of an attack preset.

    python -m flora_tools.attack_table benchmarks/cpu-fmnist-attacks-pt

One column per strategy, one row per attack (share and kind) and defence the folder holds
(rows, not columns: a grid of a dozen defences reads down a page, not across it).
A cell is the final accuracy (``--last N``: the mean of the last N rounds, steadier where one
round's accuracy swings by points), mean over its seeds, and in brackets its change against the same
strategy's clean run (no attackers, plain mean) of the same seed: one seed's difference, or over
several the paired mean ± the 95 % t interval, then each seed's difference. A run is paired by
its ``config.json``: the clean run is the one whose configuration equals it but for the attack
and defence keys below, so the table cannot pair runs that differ in anything else.

Written to generate the table rather than copy numbers from summaries by hand: the bench report
pairs every row with one reference row, and here each strategy has its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flora_tools.bench import load_groups
from flora_tools.bench_report import Group, Run, estimate
from flora_tools.preflight import app_defaults
from strategies.choices import NO_COSINE_BOUND

# What an attacked or defended run changes against its clean run (flora_app.config's
# robustness section; tests check that each is a key there).
ATTACK_KEYS = ("byzantine-clients", "attack", "attack-scale")
DEFENCE_KEYS = (
    "aggregation",
    "trim-fraction",
    "malicious-nodes",
    "multi-krum-select",
    "max-update-norm",
    "update-norm-action",
    "min-update-cosine",
    "update-cosine-scope",
)
# Where and as which seed a run was made: never part of what pairs it.
_RUN_KEYS = ("seed", "run-name", "output-dir", "resume-from")
CLEAN = "clean"


def _setting(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The configuration a run shares with its clean run."""
    drop = {*ATTACK_KEYS, *DEFENCE_KEYS, *_RUN_KEYS}
    return tuple(sorted((k, v) for k, v in config.items() if k not in drop))


def _defence(config: dict[str, Any]) -> str:
    """How a run combines its replies, e.g. ``mean, norm ≤ 5 (reject)`` or
    ``mean, cosine ≥ 0 (per tensor)``."""
    aggregation = str(config.get("aggregation", "mean"))
    bound = float(config.get("max-update-norm", 0.0))
    if bound > 0:
        aggregation += f", norm ≤ {bound:g} ({config.get('update-norm-action', '')})"
    cosine = float(config.get("min-update-cosine", NO_COSINE_BOUND))
    if cosine != NO_COSINE_BOUND:
        aggregation += f", cosine ≥ {cosine:g}"
        if config.get("update-cosine-scope", "global") == "tensor":
            aggregation += " (per tensor)"
    return aggregation


def _is_clean(config: dict[str, Any]) -> bool:
    return int(config.get("byzantine-clients", 0)) == 0 and _defence(config) == "mean"


def row_label(config: dict[str, Any], supernodes: int) -> str:
    """The table row a run belongs to, e.g. ``20 % sign-flip, trimmed-mean``."""
    if _is_clean(config):
        return CLEAN
    attackers = int(config.get("byzantine-clients", 0))
    if attackers == 0:
        return f"no attack, {_defence(config)}"
    attack = config.get("attack", "")
    if attack == "scale":
        attack = f"scale x{config.get('attack-scale', 0):g}"
    return f"{round(100 * attackers / supernodes)} % {attack}, {_defence(config)}"


def _cell(runs: Sequence[Run], clean: dict[int, float], last: int) -> str:
    accuracy = 100 * estimate([r.last_accuracy(last) for r in runs]).mean
    deltas = [100 * (r.last_accuracy(last) - clean[r.seed]) for r in runs if r.seed in clean]
    if not deltas:
        return f"{accuracy:.1f}"
    if len(deltas) == 1:
        return f"{accuracy:.1f} ({deltas[0]:+.1f})"
    delta = estimate(deltas)
    each = ", ".join(f"{d:+.1f}" for d in deltas)
    return f"{accuracy:.1f} ({delta.mean:+.1f} ± {delta.half_width:.1f}; {each})"


def table(groups: Sequence[Group], supernodes: int, last: int = 1) -> str:
    """The markdown table: attacks and defences (in folder order) by strategies (their clean
    rows, in folder order); the accuracy of a run is the mean of its last ``last`` rounds
    (1: the final round's)."""
    # A key a run predates counts as the default it ran with (as when a sweep resumes).
    defaults = app_defaults()
    configs = {g.name: {**defaults, **g.runs[0].config} for g in groups if g.runs}
    cleans = [g for g in groups if g.runs and _is_clean(configs[g.name])]
    by_setting = {_setting(configs[g.name]): g for g in cleans}
    clean_accuracy = {
        g.name: {r.seed: r.last_accuracy(last) for r in g.runs if r.seed is not None}
        for g in cleans
    }
    cells: dict[str, dict[str, str]] = {g.name: {} for g in cleans}
    rows = [CLEAN]
    for group in groups:
        if not group.runs:
            continue
        config = configs[group.name]
        base = by_setting.get(_setting(config))
        if base is None:
            continue  # no clean row to pair with: not this table's
        name = row_label(config, supernodes)
        if name not in rows:
            rows.append(name)
        if group is base:
            accuracy = estimate([r.last_accuracy(last) for r in group.runs])
            half = "" if accuracy.half_width is None else f" ± {100 * accuracy.half_width:.1f}"
            seeds = f"{accuracy.n} seed{'s' if accuracy.n > 1 else ''}"
            cells[base.name][name] = f"{100 * accuracy.mean:.1f}{half} ({seeds})"
        else:
            cells[base.name][name] = _cell(group.runs, clean_accuracy[base.name], last)
    lines = [
        "| attack, defence | " + " | ".join(g.name for g in cleans) + " |",
        "| --- |" + " --- |" * len(cleans),
    ]
    for c in rows:
        lines.append(f"| {c} | " + " | ".join(cells[g.name].get(c, "") for g in cleans) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a results folder of an attack preset")
    parser.add_argument(
        "--last",
        type=int,
        default=1,
        help="a run's accuracy is the mean of its last N rounds (default 1: the final round's)",
    )
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last {args.last}: expected a number of rounds >= 1")
    groups, meta = load_groups(args.out)
    print(table(groups, int(meta["supernodes"]), args.last))
    print(f"\n{meta['complete_runs']} of {meta['planned_runs']} planned runs complete")


if __name__ == "__main__":
    main()
