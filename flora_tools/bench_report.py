"""The benchmark's report: one table row per configuration and two plots, from run folders only.

Every number is read back from the files the runs wrote (``config.json``, ``rounds.jsonl``,
``summary.json``) plus the memory probe's JSON, so the report can be rebuilt at any time
(``python -m flora_tools.bench --report-only --out DIR``) and checked against the folders.
``NOTES`` (printed under the table) defines each column. Two choices worth their reason:

- round time and codec share leave out round 1, which also pays the simulation's one-time
  start-up (Ray actors importing torch and peft, loading the data: 20-50 s here) and would
  otherwise dominate short runs;
- codec share counts the server's codec time plus *one* client's (the example-weighted mean
  of the sampled clients, as ``client_codec_seconds`` is recorded): clients encode in parallel
  in a deployment, so that is what a round waits for; summing every client's would be CPU
  time, not round time.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1e6


@dataclass
class Run:
    """One run folder, read back."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Run:
        lines = (path / "rounds.jsonl").read_text().splitlines()
        return cls(
            path=path,
            config=json.loads((path / "config.json").read_text()),
            rounds=[json.loads(line) for line in lines if line.strip()],
            summary=json.loads((path / "summary.json").read_text()),
        )

    def cumulative_mb(self) -> list[float]:
        """Cumulative training MB (up + down) after each round."""
        total, out = 0.0, []
        for r in self.rounds:
            total += (r["bytes_up"] + r["bytes_down"]) / MB
            out.append(total)
        return out

    def accuracies(self) -> list[float]:
        return [float(r["accuracy"]) for r in self.rounds]

    def mb_to_reach(self, target: float) -> float | None:
        for mb, acc in zip(self.cumulative_mb(), self.accuracies(), strict=True):
            if acc >= target:
                return mb
        return None

    def steady_rounds(self) -> list[dict[str, Any]]:
        """Rounds after the first (which pays the simulation's start-up), if there are any."""
        return self.rounds[1:] if len(self.rounds) > 1 else self.rounds

    def seconds_per_round(self) -> float:
        return _mean([r["seconds"] for r in self.steady_rounds()])

    def codec_share(self) -> float:
        rounds = self.steady_rounds()
        seconds = sum(r["seconds"] for r in rounds)
        codec = sum(
            r.get("server_codec_seconds", 0.0) + r.get("client_codec_seconds", 0.0) for r in rounds
        )
        return codec / seconds if seconds else 0.0


@dataclass
class Group:
    """One configuration of the sweep: its runs (one per seed) and its memory probe."""

    name: str
    runs: list[Run]
    memory: dict[str, Any] | None = None
    row: dict[str, Any] = field(default_factory=dict)


def settings(config: dict[str, Any]) -> str:
    """The distinguishing settings of a run, from its resolved ``config.json``."""
    strategy = config["strategy"]
    if strategy == "fedavg":
        return "full model, fp32"
    rank = f"r={config['lora-r']}, alpha={config['lora-alpha']:g}"
    if strategy == "fedlora":
        return f"{rank}, fp32"
    if strategy == "flocora":
        down = config["quant-bits-down"]
        text = f"{rank}, up {config['quant-bits']}-bit, down " + (
            "fp32" if down == 32 else f"{down}-bit"
        )
        if config.get("error-feedback"):
            text += ", error feedback"
        if not config.get("quant-update", True):
            text += ", weights"
        return text
    if strategy == "flasc":
        values = config["sparse-value-bits"]
        text = f"{rank}, up density {config['density-up']:g}"
        if values != 32:
            text += f" ({values}-bit values)"
        text += (
            f", down density {config['density-down']:g}, "
            f"server {config['server-optimizer']} lr {config['server-lr']:g}"
        )
        if config.get("error-feedback"):
            text += ", error feedback"
        return text
    return strategy


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _spread(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def build_rows(groups: list[Group], target: float, reference: str = "fedavg") -> list[dict]:
    """The table's numbers, one dict per configuration (also written to ``report.json``)."""
    ref = next((g for g in groups if g.name == reference), None)
    ref_acc = _mean([r.accuracies()[-1] for r in ref.runs]) if ref else None
    ref_mb = _mean([r.cumulative_mb()[-1] for r in ref.runs]) if ref else None
    rows = []
    for group in groups:
        finals = [r.accuracies()[-1] for r in group.runs]
        totals = [r.cumulative_mb()[-1] for r in group.runs]
        reached = [mb for mb in (r.mb_to_reach(target) for r in group.runs) if mb is not None]
        mean_acc, mean_mb = _mean(finals), _mean(totals)
        memory = group.memory or {}
        group.row = {
            "config": group.name,
            "strategy": group.runs[0].config["strategy"],
            "settings": settings(group.runs[0].config),
            "seeds": len(group.runs),
            "rounds": len(group.runs[0].rounds),
            "final_accuracy": mean_acc,
            "final_accuracy_spread": _spread(finals),
            "last5_accuracy": _mean([_mean(r.accuracies()[-5:]) for r in group.runs]),
            "delta_vs_reference": None if ref_acc is None else mean_acc - ref_acc,
            "total_mb": mean_mb,
            "reduction_vs_reference": None if not ref_mb else ref_mb / mean_mb,
            "mb_to_target": _mean(reached) if reached else None,
            "seeds_reaching_target": len(reached),
            "seconds_per_round": _mean([r.seconds_per_round() for r in group.runs]),
            "codec_share": _mean([r.codec_share() for r in group.runs]),
            "memory_mb": memory.get("rss_delta_mb"),
            "cuda_memory_mb": memory.get("cuda_peak_mb"),
            "runs": [str(r.path) for r in group.runs],
        }
        rows.append(group.row)
    return rows


def _fmt_mb(mb: float) -> str:
    return f"{mb:,.1f}" if mb >= 100 else f"{mb:.3g}" if mb >= 0.01 else f"{mb:.2e}"


def _fmt_row(row: dict[str, Any], target: float) -> list[str]:
    acc = f"{100 * row['final_accuracy']:.1f}"
    if row["final_accuracy_spread"] is not None:
        acc += f" ± {100 * row['final_accuracy_spread']:.1f}"
    delta = row["delta_vs_reference"]
    reduction = row["reduction_vs_reference"]
    if row["mb_to_target"] is None:
        to_target = "not reached"
    else:
        to_target = _fmt_mb(row["mb_to_target"])
        if row["seeds_reaching_target"] < row["seeds"]:
            to_target += f" ({row['seeds_reaching_target']}/{row['seeds']} seeds)"
    memory = "n/a" if row["memory_mb"] is None else f"{row['memory_mb']:.1f}"
    if row["cuda_memory_mb"] is not None:
        memory += f" (CUDA {row['cuda_memory_mb']:.1f})"
    return [
        f"`{row['config']}`",
        row["strategy"],
        row["settings"],
        str(row["seeds"]),
        acc,
        f"{100 * row['last5_accuracy']:.1f}",
        "n/a" if delta is None else f"{100 * delta:+.1f}",
        _fmt_mb(row["total_mb"]),
        "n/a" if reduction is None else f"{reduction:.1f}x",
        to_target,
        f"{row['seconds_per_round']:.2f}",
        f"{100 * row['codec_share']:.2f} %",
        memory,
    ]


HEADER = [
    "config",
    "strategy",
    "settings",
    "seeds",
    "final accuracy %",
    "last 5 rounds %",
    "Δ vs fedavg (points)",
    "MB up+down",
    "reduction vs fedavg",
    "MB to {target}",
    "s / round",
    "codec share of round",
    "client training peak MB",
]


def markdown_table(rows: list[dict[str, Any]], target: float) -> str:
    header = [h.format(target=f"{100 * target:g} %") for h in HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt_row(row, target)) + " |" for row in rows]
    return "\n".join(lines)


def _mean_curve(runs: list[Run]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-round mean cumulative MB and mean / min / max accuracy over seeds."""
    n = min(len(r.rounds) for r in runs)
    mbs = [_mean([r.cumulative_mb()[i] for r in runs]) for i in range(n)]
    accs = [[r.accuracies()[i] for r in runs] for i in range(n)]
    return mbs, [_mean(a) for a in accs], [min(a) for a in accs], [max(a) for a in accs]


_STYLES = {"fedavg": "-", "fedlora": "--", "flocora": "-.", "flasc": ":"}


def plot(groups: list[Group], out_dir: Path, target: float) -> list[Path]:
    """``accuracy_vs_mb.png`` (log x) and ``accuracy_vs_round.png``, all configurations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[::2] + tab20[1::2]  # the ten strong colours first, then their light pairs
    paths = []
    for kind in ("mb", "round"):
        fig, ax = plt.subplots(figsize=(10, 5.5))
        for i, group in enumerate(groups):
            mbs, mean, low, high = _mean_curve(group.runs)
            xs = mbs if kind == "mb" else list(range(1, len(mean) + 1))
            style = _STYLES.get(group.runs[0].config["strategy"], "-")
            color = colors[i % len(colors)]
            ax.plot(xs, mean, style, color=color, label=group.name, linewidth=1.6)
            if len(group.runs) > 1:
                ax.fill_between(xs, low, high, color=color, alpha=0.12)
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=(0, (1, 3)))
        if kind == "mb":
            ax.set_xscale("log")
            ax.set_xlabel("cumulative training communication, up + down (MB, measured, log)")
        else:
            ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (centralised)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        fig.tight_layout()
        path = out_dir / f"accuracy_vs_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


NOTES = """\
- final accuracy: centralised test accuracy after the last round, mean ± sample standard
  deviation over seeds; Δ in percentage points against `fedavg`'s mean. With 10 of 100
  non-IID clients per round the global model's accuracy moves a few points from round to
  round, so the mean over the last 5 rounds (and seeds) is printed too.
- MB up+down: measured training traffic of the whole run (all sampled clients, both
  directions, 1 MB = 10^6 B); the evaluate phase that measures BatchNorm statistics is
  excluded (it is in each run's `summary.json` as `bytes_eval_total`). Reduction = fedavg's
  MB / this row's MB.
- MB to {target}: cumulative training MB at the first round at or above {target} test accuracy,
  mean over the seeds that reach it.
- s / round: mean wall seconds of a round (training, evaluate phase, server evaluation),
  rounds 2 onwards (round 1 also pays the simulation's start-up).
- codec share: (server codec s + one client's codec s) / round s over the same rounds; the
  client's is the example-weighted mean over the sampled clients (they encode in parallel).
- client training peak MB: peak RSS added by building the model and one local epoch on the
  largest partition, in a fresh warmed-up process (`flora_tools/memory_probe.py`)."""


def write_report(
    out_dir: Path,
    groups: list[Group],
    target: float,
    header: str,
    reference: str = "fedavg",
) -> Path:
    """Write ``report.md``, ``report.json`` and the two plots into ``out_dir``."""
    rows = build_rows(groups, target, reference)
    paths = plot(groups, out_dir, target)
    table = markdown_table(rows, target)
    notes = NOTES.format(target=f"{100 * target:g} %")
    text = (
        f"{header}\n\n{table}\n\n{notes}\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in paths)
        + "\n"
    )
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.json").write_text(
        json.dumps({"target_accuracy": target, "rows": rows}, indent=2) + "\n"
    )
    return out_dir / "report.md"
