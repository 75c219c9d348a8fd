"""The run folder: configuration, one JSON line per round, a summary and the comm/accuracy plot.

Files are written as the run goes (``rounds.jsonl`` is appended and flushed every round), so a
run that dies halfway still leaves everything up to its last round on disk.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

MB = 1e6
ROUNDS_FILE = "rounds.jsonl"


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """A run folder's ``rounds.jsonl``: one record per finished round, in order."""
    lines = (run_dir / ROUNDS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def resolve_output_path(path: str) -> Path:
    """A relative path is taken against ``FLORA_OUTPUT_ROOT`` (see ``make_run_dir``)."""
    out = Path(path)
    if not out.is_absolute():
        out = Path(os.environ.get("FLORA_OUTPUT_ROOT", ".")) / out
    return out


def make_run_dir(output_dir: str, run_name: str, strategy: str) -> Path:
    """``<output-dir>/<run-name>``; a default name is a timestamp plus the strategy.

    A relative ``output-dir`` is taken against ``FLORA_OUTPUT_ROOT`` when set (the Makefile sets
    it to the project root, since ``flwr run`` executes the app from its own install folder),
    else the working directory. An existing folder is never overwritten: a suffix is added.
    """
    root = resolve_output_path(output_dir)
    name = run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{strategy}"
    path = root / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{name}-{suffix}"
    path.mkdir(parents=True)
    return path


class RunRecorder:
    """Collects per-round records and writes the run folder's files."""

    def __init__(self, run_dir: Path, config: dict[str, Any], history: Any = None) -> None:
        """``history``: a checkpoint to continue (its rounds, initial score, elapsed time);
        ``rounds.jsonl`` is rewritten to exactly its rounds, dropping any line a crash left
        after the last checkpoint."""
        self.run_dir = run_dir
        self.config = config
        self.rounds: list[dict[str, Any]] = list(history.rounds) if history else []
        self.initial: dict[str, Any] | None = history.initial if history else None
        self.started = time.time() - (history.wall_seconds if history else 0.0)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self._rounds_file = run_dir / ROUNDS_FILE
        tmp = run_dir / ".rounds.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rounds))
        os.replace(tmp, self._rounds_file)

    def elapsed(self) -> float:
        """Wall seconds of the run so far, across resumptions."""
        return time.time() - self.started

    def record_initial(self, accuracy: float, loss: float) -> None:
        """The untrained global model's score: the plot's starting point at 0 bytes."""
        self.initial = {"round": 0, "accuracy": accuracy, "loss": loss}

    def record_round(self, record: dict[str, Any]) -> str:
        """Append one round; return its progress line."""
        self.rounds.append(record)
        with self._rounds_file.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        return progress_line(record, self.rounds)

    def summary(self) -> dict[str, Any]:
        n = len(self.rounds)
        up = sum(r["bytes_up"] for r in self.rounds)
        down = sum(r["bytes_down"] for r in self.rounds)
        last = self.rounds[-1] if self.rounds else {}
        privacy = {}
        if "dp_epsilon" in last:  # a private run: epsilon spent, at the configured delta
            privacy = {"dp_epsilon": last["dp_epsilon"], "dp_delta": self.config.get("dp-delta")}
        return {
            "strategy": self.config.get("strategy"),
            "rounds": n,
            "initial_accuracy": (self.initial or {}).get("accuracy"),
            "final_accuracy": last.get("accuracy"),
            "final_loss": last.get("loss"),
            "best_accuracy": max((r["accuracy"] for r in self.rounds), default=None),
            "bytes_up_total": up,
            "bytes_down_total": down,
            "bytes_up_per_round": up / n if n else 0,
            "bytes_down_per_round": down / n if n else 0,
            "bytes_up_per_client_per_round": _per_client(self.rounds, "bytes_up", "clients"),
            "bytes_down_per_client_per_round": _per_client(self.rounds, "bytes_down", "clients"),
            "bytes_eval_total": sum(
                r.get("bytes_eval_up", 0) + r.get("bytes_eval_down", 0) for r in self.rounds
            ),
            "wall_seconds": self.elapsed(),
            **privacy,
        }

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and ``accuracy_vs_comm.png``; return the summary."""
        summary = self.summary()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_accuracy_vs_comm(
            self.initial,
            self.rounds,
            self.run_dir / "accuracy_vs_comm.png",
            title=str(self.config.get("strategy")),
        )
        return summary


def _per_client(rounds: list[dict[str, Any]], key: str, count_key: str) -> float:
    messages = sum(r.get(count_key, 0) for r in rounds)
    return sum(r[key] for r in rounds) / messages if messages else 0.0


def progress_line(record: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """``round 3/20 | acc 0.912 loss 0.31 | up 0.54 MB (1.6) down 0.54 MB (1.6) | 2.1 s``,
    plus ``| replies: 5 used, 2 rejected, 0 failed, 0 spare`` in a round that lost any (with
    ``min-update-cosine``, ``1 outlier`` after the rejected ones)."""
    cum_up = sum(r["bytes_up"] for r in history) / MB
    cum_down = sum(r["bytes_down"] for r in history) / MB
    line = (
        f"round {record['round']}/{record['rounds_total']} | "
        f"acc {record['accuracy']:.4f} loss {record['loss']:.4f} | "
        f"up {record['bytes_up'] / MB:.3f} MB (cum {cum_up:.2f}) "
        f"down {record['bytes_down'] / MB:.3f} MB (cum {cum_down:.2f}) | "
        f"{record['seconds']:.1f} s"
    )
    if "dp_epsilon" in record:
        line += f" | epsilon {record['dp_epsilon']:.3g}"
    kinds = ("rejected", "outlier", "failed", "spare")  # outlier: only with its filter on
    lost = {
        k: int(record.get(f"{k}_replies", 0))
        for k in kinds
        if k != "outlier" or "outlier_replies" in record
    }
    if any(lost.values()):
        used = int(record.get("aggregated_replies", 0))
        line += " | replies: " + ", ".join([f"{used} used"] + [f"{n} {k}" for k, n in lost.items()])
    return line


def plot_accuracy_vs_comm(
    initial: dict[str, Any] | None, rounds: list[dict[str, Any]], path: Path, title: str
) -> None:
    """Accuracy against cumulative MB (up + down): the figure both papers argue with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = [], []
    if initial is not None:
        xs.append(0.0)
        ys.append(initial["accuracy"])
    total = 0.0
    for r in rounds:
        total += (r["bytes_up"] + r["bytes_down"]) / MB
        xs.append(total)
        ys.append(r["accuracy"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label=title)
    ax.set_xlabel("cumulative communication, up + down (MB, measured)")
    ax.set_ylabel("test accuracy (centralised)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
