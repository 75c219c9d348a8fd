"""The benchmark's report: one table row per configuration and two plots, from run folders only.

Every number is read back from the files the runs wrote (``config.json``, ``rounds.jsonl``,
``summary.json``) plus the memory probe's JSON, so the report can be rebuilt at any time
(``python -m flora_tools.bench --report-only --out DIR``) and checked against the folders.
``NOTES`` (printed under the table) defines each column. The choices worth their reason:

- accuracy is a mean over seeds with a 95 % Student-t interval, not ± a standard deviation:
  with 1-3 seeds per configuration the question a reader asks is "is this difference real",
  and a t interval with n - 1 degrees of freedom answers it honestly for small n (wide at
  n = 2, where a standard deviation would look deceptively tight). The t quantiles are a
  table (``T975``) because scipy is not a dependency of the app;
- the difference to the reference row (fedlora) is paired by seed: a seed fixes the
  partitions, the client sampling and the initial model, which move accuracy by points here,
  so the per-seed difference has far less variance than the difference of two means;
- round time and codec share leave out round 1, which also pays the simulation's one-time
  start-up (Ray actors importing torch and peft, loading the data: 20-50 s here) and would
  otherwise dominate short runs;
- codec share counts the server's codec time plus *one* client's (the example-weighted mean
  of the sampled clients, as ``client_codec_seconds`` is recorded): clients encode in parallel
  in a deployment, so that is what a round waits for; summing every client's would be CPU
  time, not round time.

``headline_table`` prints a few of the same rows and cells for the docs and the README, so
those stay copies of a report rather than numbers retyped by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flora_app.results import MB, read_rounds
from flora_tools.link_model import PROFILES, LinkProfile, cumulative_seconds

LAST_ROUNDS = 5  # the "last rounds" mean: a round's accuracy moves by points with 10 clients

# Two-sided 95 % quantiles t(0.975, df) of Student's t for df = 1..30 (scipy.stats.t.ppf,
# rounded to 4 decimals); larger df use the Cornish-Fisher expansion in ``t975``.
T975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
Z975 = 1.959964  # the normal quantile the expansion starts from


def t975(df: int) -> float:
    """t(0.975, df): the table for df <= 30; above, the expansion z + (z^3 + z) / 4df + ...
    (within 2e-4 of the exact value at df = 31 and closer beyond), so no scipy is needed."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its 95 % confidence half-width (None for one seed: no interval)."""

    mean: float
    half_width: float | None
    n: int


def estimate(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean ± t(0.975, n - 1) * s / sqrt(n), s the sample standard deviation (ddof 1)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("an estimate needs at least one value")
    half = None
    if x.size > 1:
        half = float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(float(x.mean()), half, int(x.size))


@dataclass
class Run:
    """One run folder, read back."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Run:
        return cls(
            path=path,
            config=json.loads((path / "config.json").read_text()),
            rounds=read_rounds(path),
            summary=json.loads((path / "summary.json").read_text()),
        )

    @property
    def seed(self) -> int | None:
        """The run's seed, which pairs it with the reference row's run of the same seed."""
        seed = self.config.get("seed")
        return None if seed is None else int(seed)

    def _column(self, key: str) -> np.ndarray:
        return np.array([float(r.get(key, 0.0)) for r in self.rounds])

    def round_mb(self) -> np.ndarray:
        """Training MB (up + down, all sampled clients) of each round."""
        return (self._column("bytes_up") + self._column("bytes_down")) / MB

    def cumulative_mb(self) -> np.ndarray:
        """Cumulative training MB (up + down) after each round."""
        return np.cumsum(self.round_mb())

    def accuracies(self) -> np.ndarray:
        return self._column("accuracy")

    def final_accuracy(self) -> float:
        return float(self.accuracies()[-1])

    def last_accuracy(self, rounds: int = LAST_ROUNDS) -> float:
        """Mean accuracy of the last ``rounds`` rounds (less round-to-round noise than one)."""
        return float(self.accuracies()[-rounds:].mean())

    def mb_to_reach(self, target: float) -> float | None:
        """Cumulative MB at the first round at or above ``target``; None if none is."""
        reached = np.flatnonzero(self.accuracies() >= target)
        return float(self.cumulative_mb()[reached[0]]) if reached.size else None

    def mb_per_round(self) -> float:
        return float(self.round_mb().mean())

    def link_seconds(self, profile: LinkProfile) -> np.ndarray:
        """Simulated wall seconds after each round over ``profile`` (``link_model``)."""
        return cumulative_seconds(self.rounds, profile, self.seed or 0)

    def link_time_to_reach(self, target: float, profile: LinkProfile) -> float | None:
        """Simulated seconds at the first round at or above ``target``; None if none is."""
        reached = np.flatnonzero(self.accuracies() >= target)
        return float(self.link_seconds(profile)[reached[0]]) if reached.size else None

    def mb_per_client_round(self) -> float | None:
        """Training MB per client message per round: the ServerApp's own definition of
        ``bytes_*_per_client_per_round`` (bytes over sampled-client count, summed over rounds);
        None for folders whose rounds do not record ``clients``."""
        clients = self._column("clients").sum()
        return float(self.round_mb().sum() / clients) if clients else None

    def epsilon(self) -> float | None:
        """The privacy spent by the end of a private run (cumulative ``dp_epsilon`` of its
        last round, at the run's ``dp-delta``); None for a run without DP."""
        return self.rounds[-1].get("dp_epsilon") if self.rounds else None

    def steady_rounds(self) -> list[dict[str, Any]]:
        """Rounds after the first (which pays the simulation's start-up), if there are any."""
        return self.rounds[1:] if len(self.rounds) > 1 else self.rounds

    def seconds_per_round(self) -> float:
        return float(np.mean([r["seconds"] for r in self.steady_rounds()]))

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


# Keys that tell configurations of one sweep apart beyond the strategy's own (the pretrained
# rows of cpu-fmnist change model, normalisation and initialisation). ``settings`` shows them
# only where a row differs from the sweep's first, which the report's header describes.
_MODEL_KEYS = ("model", "model-width", "norm", "lora-mode")


def _model_settings(config: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    base = config if base is None else base
    lora = config.get("strategy") != "fedavg"
    parts = []
    for key in _MODEL_KEYS:
        value = config.get(key)
        if value is None or value == base.get(key) or (key == "lora-mode" and not lora):
            continue
        parts.append(
            {"model-width": f"width {value}", "norm": f"{value} norm"}.get(key, str(value))
        )
    # "from scratch" only where it is news: another model than the first row's, or that row
    # pretrained; otherwise every ResNet row would say it.
    if config.get("pretrained"):
        parts.append("pretrained")
    elif config.get("pretrained") is False and (
        config.get("model") != base.get("model") or base.get("pretrained")
    ):
        parts.append("from scratch")
    if config.get("batchnorm-stats") == "frozen":
        parts.append("frozen BN statistics")
    return parts


def _technique_settings(config: dict[str, Any]) -> list[str]:
    """The techniques past both papers a run used (absent keys: folders from before them,
    which ran without): what tells apart rows that share a strategy, bits and densities."""
    parts = []
    if config.get("quant-vectors", "fp32") != "fp32" and config["strategy"] == "flocora":
        parts.append("1-D tensors quantized")
    if config.get("lora-freeze-a"):
        parts.append("A frozen (FFA-LoRA)")
    if config.get("uplink-budget-bytes", 0) > 0:
        parts.append(f"uplink budget {config['uplink-budget-bytes']:,} B")
    if config.get("downlink-delta"):
        parts.append("down as change from the node's copy")
    if config.get("tiers"):
        parts.append(f"tiers {config['tiers']}")
    if config.get("rank-tiers"):
        parts.append(f"rank tiers {config['rank-tiers']}")
    if config.get("entropy-coder", "none") != "none":
        parts.append(f"+ {config['entropy-coder']}")
    if config.get("dp-noise-multiplier", 0.0) > 0:
        parts.append(
            f"DP noise {config['dp-noise-multiplier']:g} x clip {config['dp-clipping-norm']:g}"
        )
    return parts


def settings(config: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """The distinguishing settings of a run (``_settings``), then the techniques past both
    papers it used (``_technique_settings``)."""
    return ", ".join([_settings(config, base), *_technique_settings(config)])


def _settings(config: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """The strategy's own settings, from the run's resolved ``config.json``; model keys
    (model, width, norm, LoRA mode, pretrained, frozen BatchNorm statistics) where they differ
    from ``base``. Keys are read with ``.get`` so folders from before ``norm`` /
    ``pretrained`` / ``lora-mode`` still load."""
    strategy = config["strategy"]
    prefix = ", ".join(_model_settings(config, base))
    prefix = f"{prefix}, " if prefix else ""
    if strategy == "fedavg":
        return f"{prefix}full model, fp32"
    rank = f"{prefix}r={config['lora-r']}, alpha={config['lora-alpha']:g}"
    if strategy == "fedlora":
        return f"{rank}, fp32"
    if strategy == "flocora":
        down = config.get("quant-bits-down", 32)
        text = f"{rank}, up {config['quant-bits']}-bit, down " + (
            "fp32" if down == 32 else f"{down}-bit"
        )
        if config.get("error-feedback"):
            text += ", error feedback"
        if not config.get("quant-update", True):
            text += ", weights"
        return text
    if strategy == "flasc":
        values = config.get("sparse-value-bits", 32)
        text = f"{rank}, up density {config['density-up']:g}"
        if values != 32:
            text += f" ({values}-bit values)"
        text += f", down density {config['density-down']:g}"
        if "server-optimizer" in config:
            text += f", server {config['server-optimizer']} lr {config['server-lr']:g}"
        if config.get("error-feedback"):
            text += ", error feedback"
        return text
    return f"{prefix}{strategy}"


def paired_delta(runs: Sequence[Run], reference: Sequence[Run]) -> Estimate | None:
    """Final accuracy minus the reference's, seed by seed, over the seeds both have; None
    when they share no seed (an unpaired difference would mix seed noise into the delta)."""
    mine = {r.seed: r.final_accuracy() for r in runs if r.seed is not None}
    theirs = {r.seed: r.final_accuracy() for r in reference if r.seed is not None}
    shared = sorted(mine.keys() & theirs.keys())
    if not shared:
        return None
    return estimate(np.array([mine[s] for s in shared]) - np.array([theirs[s] for s in shared]))


def _group(groups: Sequence[Group], name: str) -> Group | None:
    return next((g for g in groups if g.name == name), None)


def _optional_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values, None if any is None (a partial mean would mislead)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _optional_max(values: Sequence[float | None]) -> float | None:
    """Max of the values, None if any is None (a run without DP has spent no epsilon)."""
    return None if any(v is None for v in values) else float(max(values))


def build_rows(
    groups: list[Group],
    target: float,
    reference: str = "fedlora",
    byte_reference: str = "fedavg",
) -> list[dict[str, Any]]:
    """The table's numbers, one dict per configuration (also written to ``report.json``).

    ``reference`` is the row accuracy deltas are paired against, ``byte_reference`` the row
    byte reductions divide; a missing one leaves its column None (printed "n/a")."""
    ref = _group(groups, reference)
    byte_ref = _group(groups, byte_reference)
    ref_bytes = float(np.mean([r.mb_per_round() for r in byte_ref.runs])) if byte_ref else None
    base = groups[0].runs[0].config if groups else None
    rows = []
    for group in groups:
        runs = group.runs
        final = estimate([r.final_accuracy() for r in runs])
        last = estimate([r.last_accuracy() for r in runs])
        delta = paired_delta(runs, ref.runs) if ref else None
        reached = [mb for mb in (r.mb_to_reach(target) for r in runs) if mb is not None]
        per_round = float(np.mean([r.mb_per_round() for r in runs]))
        memory = group.memory or {}
        group.row = {
            "config": group.name,
            "strategy": runs[0].config["strategy"],
            "settings": settings(runs[0].config, base),
            "seeds": len(runs),
            "seed_list": [r.seed for r in runs],
            "rounds": len(runs[0].rounds),
            "final_accuracy": final.mean,
            "final_accuracy_ci": final.half_width,
            "last5_accuracy": last.mean,
            "last5_accuracy_ci": last.half_width,
            "reference": reference,
            "delta_vs_reference": None if delta is None else delta.mean,
            "delta_vs_reference_ci": None if delta is None else delta.half_width,
            "delta_seeds": 0 if delta is None else delta.n,
            "byte_reference": byte_reference,
            "mb_per_round": per_round,
            "mb_per_client_round": _optional_mean([r.mb_per_client_round() for r in runs]),
            "total_mb": float(np.mean([r.cumulative_mb()[-1] for r in runs])),
            "reduction_vs_byte_reference": ref_bytes / per_round if ref_bytes else None,
            "target_accuracy": target,
            "mb_to_target": float(np.mean(reached)) if reached else None,
            "seeds_reaching_target": len(reached),
            "seconds_per_round": float(np.mean([r.seconds_per_round() for r in runs])),
            "link_minutes_to_target": {
                name: _link_minutes(runs, target, profile) for name, profile in PROFILES.items()
            },
            "codec_share": float(np.mean([r.codec_share() for r in runs])),
            # The largest over seeds: the accountant's epsilon depends on the sampling each
            # run really had (nodes online), so seeds may differ; the bound is the worst.
            "dp_epsilon": _optional_max([r.epsilon() for r in runs]),
            "dp_delta": runs[0].config.get("dp-delta"),
            "memory_mb": memory.get("rss_delta_mb"),
            "cuda_memory_mb": memory.get("cuda_peak_mb"),
            "runs": [str(r.path) for r in runs],
        }
        rows.append(group.row)
    return rows


def _link_minutes(runs: Sequence[Run], target: float, profile: LinkProfile) -> dict[str, Any]:
    """Mean simulated minutes to ``target`` over the seeds that reach it, and how many do."""
    reached = [s for s in (r.link_time_to_reach(target, profile) for r in runs) if s is not None]
    return {"minutes": float(np.mean(reached)) / 60 if reached else None, "reached": len(reached)}


def _fmt_mb(mb: float) -> str:
    """Three significant figures, trailing zeros kept (so the printed precision is visible)."""
    return f"{mb:,.1f}" if mb >= 100 else f"{mb:#.3g}" if mb >= 0.01 else f"{mb:.2e}"


def _fmt_points(mean: float | None, half: float | None, sign: bool = False) -> str:
    """A fraction as percent (points), with ± its half-width when there is one."""
    if mean is None:
        return "n/a"
    text = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return text if half is None else f"{text} ± {100 * half:.1f}"


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """Every column's text for one row; the report and the headline table pick from these,
    so a headline cell is always the report's cell."""
    reduction = row["reduction_vs_byte_reference"]
    n, reached = row["seeds"], row["seeds_reaching_target"]
    if row["mb_to_target"] is None:
        to_target = f"not reached (0/{n})"
    else:
        to_target = f"{_fmt_mb(row['mb_to_target'])} ({reached}/{n} reached)"
    memory = "n/a" if row["memory_mb"] is None else f"{row['memory_mb']:.1f}"
    if row["cuda_memory_mb"] is not None:
        memory += f" (CUDA {row['cuda_memory_mb']:.1f})"
    per_client = row["mb_per_client_round"]
    delta = _fmt_points(row["delta_vs_reference"], row["delta_vs_reference_ci"], sign=True)
    if row["delta_vs_reference"] is not None and row["delta_seeds"] < n:
        delta += f" ({row['delta_seeds']}/{n} seeds)"
    links = {}
    for name, value in row.get("link_minutes_to_target", {}).items():
        minutes = value["minutes"]
        links[f"link_{name}"] = (
            f"not reached (0/{n})"
            if minutes is None
            else f"{minutes:.1f} ({value['reached']}/{n} reached)"
        )
    return {
        **links,
        "config": f"`{row['config']}`",
        "strategy": row["strategy"],
        "settings": row["settings"],
        "seeds": str(n),
        "final": _fmt_points(row["final_accuracy"], row["final_accuracy_ci"]),
        "last5": _fmt_points(row["last5_accuracy"], row["last5_accuracy_ci"]),
        "delta": delta,
        "mb_round": _fmt_mb(row["mb_per_round"]),
        "mb_client_round": "n/a" if per_client is None else _fmt_mb(per_client),
        "reduction": "n/a" if reduction is None else f"{reduction:.1f}x",
        "to_target": to_target,
        "seconds": f"{row['seconds_per_round']:.2f}",
        "codec": f"{100 * row['codec_share']:.2f} %",
        "epsilon": "no DP"
        if row.get("dp_epsilon") is None
        else f"{row['dp_epsilon']:.3g} (δ = {row['dp_delta']:g})",
        "memory": memory,
    }


# Column key -> header; ``{reference}``, ``{byte_reference}`` and ``{target}`` come from the rows.
COLUMNS: dict[str, str] = {
    "config": "config",
    "strategy": "strategy",
    "settings": "settings",
    "seeds": "seeds",
    "final": "final accuracy % ± 95 % CI",
    "last5": f"last {LAST_ROUNDS} rounds % ± 95 % CI",
    "delta": "Δ vs {reference} (points, paired by seed) ± 95 % CI",
    "epsilon": "ε spent (at δ)",
    "mb_round": "MB up+down / round",
    "mb_client_round": "MB up+down / client / round",
    "reduction": "reduction vs {byte_reference} (up+down)",
    "to_target": "MB to {target} (seeds reached)",
    **{
        f"link_{name}": f"simulated minutes to {{target}} over {name} (seeds reached)"
        for name in PROFILES
    },
    "seconds": "s / round",
    "codec": "codec share of round",
    "memory": "client training peak MB",
}
# The report of a sweep without DP leaves the ε column out (it would say "no DP" on every row).
PRIVATE_REPORT_COLUMNS: tuple[str, ...] = tuple(COLUMNS)
REPORT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "epsilon")
HEADLINE_COLUMNS: tuple[str, ...] = (
    "config",
    "final",
    "delta",
    "mb_client_round",
    "reduction",
    "to_target",
)
DP_COLUMNS: tuple[str, ...] = ("config", "settings", "final", "delta", "epsilon", "mb_client_round")
LINK_COLUMNS: tuple[str, ...] = (
    "config",
    "final",
    "mb_client_round",
    *(f"link_{name}" for name in PROFILES),
)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    """A markdown table of ``rows`` (from ``build_rows``) with the given ``COLUMNS`` keys."""
    first = rows[0] if rows else {}
    names = {
        "reference": first.get("reference", "fedlora"),
        "byte_reference": first.get("byte_reference", "fedavg"),
        "target": f"{100 * first.get('target_accuracy', 0.0):g} %",
    }
    header = [COLUMNS[c].format(**names) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = _cells(row)
        lines.append("| " + " | ".join(cells[c] for c in columns) + " |")
    return "\n".join(lines)


def headline_table(
    groups: list[Group],
    names: Sequence[str],
    target: float | None = None,
    reference: str = "fedlora",
    byte_reference: str = "fedavg",
    columns: Sequence[str] = HEADLINE_COLUMNS,
) -> str:
    """The listed rows with the headline columns (final accuracy, Δ vs the reference, MB per
    client per round, reduction, MB to target), for the docs and the README.

    The rows are computed over *all* ``groups`` (the references must be among them) with the
    report's own formatting, so the cells equal the report's. ``target`` defaults to the one
    the groups' rows were last built with (``build_rows`` / ``write_report``)."""
    if target is None:
        built = [g.row["target_accuracy"] for g in groups if g.row]
        if not built:
            raise ValueError("pass target, or build the rows first (build_rows/write_report)")
        target = built[0]
    rows = {row["config"]: row for row in build_rows(groups, target, reference, byte_reference)}
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; known: {', '.join(rows)}")
    return markdown_table([rows[n] for n in names], columns)


def accuracy_band(
    runs: Sequence[Run], x: Callable[[Run], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per round: mean x (cumulative MB unless ``x`` says otherwise: e.g. simulated time),
    mean accuracy, and the band's low / high edges.

    The band is the 95 % t interval of the mean for 3+ seeds, min..max for 2 (where t(0.975, 1)
    = 12.7 would draw a band wider than the axis) and absent (None) for one seed. Rounds past
    the shortest run are dropped, so every point averages the same seeds."""
    x = x or Run.cumulative_mb
    n_rounds = min(len(r.rounds) for r in runs)
    acc = np.stack([r.accuracies()[:n_rounds] for r in runs])
    xs = np.stack([x(r)[:n_rounds] for r in runs]).mean(axis=0)
    mean = acc.mean(axis=0)
    if len(runs) == 1:
        return xs, mean, None, None
    if len(runs) == 2:
        return xs, mean, acc.min(axis=0), acc.max(axis=0)
    half = t975(len(runs) - 1) * acc.std(axis=0, ddof=1) / math.sqrt(len(runs))
    return xs, mean, mean - half, mean + half


_STYLES = {"fedavg": "-", "fedlora": "--", "flocora": "-.", "flasc": ":"}


def plot(groups: list[Group], out_dir: Path, target: float) -> list[Path]:
    """``accuracy_vs_mb.png`` (log x), ``accuracy_vs_round.png`` and, per link profile,
    ``accuracy_vs_time_<profile>.png``: each configuration's mean curve over seeds with its
    shaded band (``accuracy_band``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[::2] + tab20[1::2]  # the ten strong colours first, then their light pairs
    axes: dict[str, tuple[Callable[[Run], np.ndarray], str]] = {
        "mb": (
            Run.cumulative_mb,
            "cumulative training communication, up + down (MB, measured, log)",
        ),
        "round": (lambda r: np.arange(1, len(r.rounds) + 1), "round"),
    }
    for name, profile in PROFILES.items():
        axes[f"time_{name}"] = (
            lambda r, p=profile: r.link_seconds(p) / 60,
            f"simulated wall time over {name} links (minutes, flora_tools/link_model.py)",
        )
    paths = []
    for kind, (x, label_x) in axes.items():
        fig, ax = plt.subplots(figsize=(10, 5.5))
        for i, group in enumerate(groups):
            xs, mean, low, high = accuracy_band(group.runs, x)
            style = _STYLES.get(group.runs[0].config["strategy"], "-")
            color = colors[i % len(colors)]
            label = f"{group.name} (n={len(group.runs)})"
            ax.plot(xs, mean, style, color=color, label=label, linewidth=1.6)
            if low is not None and high is not None:
                ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=(0, (1, 3)))
        if kind == "mb":
            ax.set_xscale("log")
        if kind == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label_x)
        ax.set_title("mean over seeds; band: 95 % CI of the mean (n = 2: min..max)", fontsize=9)
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


EPSILON_NOTE = """\
- ε spent (at δ): the accountant's cumulative epsilon after the last round (`dp_epsilon` in
  `rounds.jsonl`, at the run's `dp-delta`), the largest over seeds; "no DP" for a clean row.
"""
NOTES = """\
- seeds: the number of seeds (runs) of the row, n; seeds are 0..n-1, and the same seed gives
  every configuration the same partitions, client sampling and initial model.
- final accuracy: centralised test accuracy after the last round, mean over seeds ± the half-width
  of its 95 % confidence interval, t(0.975, n-1) * s / sqrt(n) with s the sample standard
  deviation and t Student's quantile with n-1 degrees of freedom (e.g. 4.303 for n = 3, 12.71
  for n = 2); one seed prints the value alone, no interval. last {last} rounds: the same for
  each seed's mean over its last {last} rounds (with 10 of 100 non-IID clients per round the
  global model's accuracy moves a few points from round to round).
- Δ vs {reference}: this row's final accuracy minus `{reference}`'s, in percentage points,
  computed seed by seed over the seeds both rows ran, then mean ± the same t interval over those
  differences ("(k/n seeds)" when only k of this row's n seeds are shared); n/a when the sweep
  has no `{reference}` row or they share no seed.
{epsilon_note}- MB up+down / round: measured training traffic per round, all sampled clients,
  both directions (1 MB = 10^6 B), mean over rounds and seeds; the evaluate phase that measures
  BatchNorm statistics is excluded (it is in each run's `summary.json` as `bytes_eval_total`).
  / client / round: the same traffic divided by the sampled clients (the ServerApp's
  `bytes_*_per_client_per_round`, up + down), what one client sends and receives in a round.
- reduction vs {byte_reference}: `{byte_reference}`'s MB up+down / round over this row's (means
  over each row's seeds); n/a without a `{byte_reference}` row.
- MB to {target}: cumulative training MB at the first round at or above {target} test accuracy,
  mean over the seeds that reach it; "(k/n reached)" counts them.
- simulated minutes to {target} over <profile>: the rounds replayed over edge links
  (`flora_tools/link_model.py`: per client, two round trips + broadcast / its downlink + the
  measured client time + its reply / its uplink; a round waits for its slowest client; each
  client's bandwidths drawn log-normally around the profile's medians, the same draws for every
  configuration of a seed): cumulative simulated time at the first round at or above {target},
  mean over the seeds that reach it. Profiles: lte 20 / 5 Mbit/s, 50 ms; 3g 2 / 0.5 Mbit/s,
  200 ms. Training traffic only; server time left out.
- s / round: mean wall seconds of a round (training, evaluate phase, server evaluation),
  rounds 2 onwards (round 1 also pays the simulation's start-up), mean over seeds.
- codec share: (server codec s + one client's codec s) / round s over the same rounds; the
  client's is the example-weighted mean over the sampled clients (they encode in parallel).
- client training peak MB: peak RSS added by building the model and one local epoch on the
  largest partition, in a fresh warmed-up process (`flora_tools/memory_probe.py`).
- plots: each configuration's mean accuracy over seeds per round, against cumulative MB (log x)
  and against the round, shaded ± the 95 % interval above for 3+ seeds, min..max for 2 seeds,
  no band for 1."""


def write_report(
    out_dir: Path,
    groups: list[Group],
    target: float,
    header: str,
    reference: str = "fedlora",
    byte_reference: str = "fedavg",
) -> Path:
    """Write ``report.md``, ``report.json`` and the two plots into ``out_dir``."""
    rows = build_rows(groups, target, reference, byte_reference)
    paths = plot(groups, out_dir, target)
    private = any(row["dp_epsilon"] is not None for row in rows)
    table = markdown_table(rows, PRIVATE_REPORT_COLUMNS if private else REPORT_COLUMNS)
    notes = NOTES.format(
        target=f"{100 * target:g} %",
        reference=reference,
        byte_reference=byte_reference,
        last=LAST_ROUNDS,
        epsilon_note=EPSILON_NOTE if private else "",
    )
    text = (
        f"{header}\n\n{table}\n\n{notes}\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in paths)
        + "\n"
    )
    (out_dir / "report.md").write_text(text)
    report = {
        "target_accuracy": target,
        "reference": reference,
        "byte_reference": byte_reference,
        "rows": rows,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out_dir / "report.md"
