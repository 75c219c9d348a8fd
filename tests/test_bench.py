"""The benchmark machinery: a real 2-configuration, 2-round sweep of the tiny CNN, and the
report's arithmetic on hand-written run folders.

The end-to-end test recomputes every number of ``report.md`` from the run folders' own files
(``summary.json`` for bytes, ``rounds.jsonl`` for accuracy and times, the probe's JSON for
memory) without the report code, and compares within the printed precision.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from flora_tools.bench import SWEEP, format_run_config, parse_run_config, plan
from flora_tools.bench_report import Group, Run, build_rows, markdown_table

ROOT = Path(__file__).resolve().parent.parent
TINY = "model='cnn' model-width=16 lora-r=4 lora-alpha=8.0 local-epochs=1 fraction-train=1.0"


def _cells(report: str) -> dict[str, list[str]]:
    """Table rows of ``report.md`` by configuration name."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def _close(cell: str, value: float) -> bool:
    """``cell`` shows ``value`` to the precision it is printed with (half a last digit)."""
    text = cell.replace(",", "").replace("x", "").replace("%", "").strip()
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tolerance = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    return abs(float(text) - value) <= tolerance * 1.0001


def _superlinks_using(home: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "flower-superlink" in cmd and str(home) in cmd:
                found.append(cmd)
    return found


@pytest.mark.e2e
def test_bench_sweep_writes_a_report_that_matches_its_run_folders(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "flora_tools.bench",
        "--configs",
        "fedavg,flocora-q4",
        "--rounds",
        "2",
        "--supernodes",
        "3",
        "--set",
        TINY,
        "--out",
        str(out),
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not _superlinks_using(out / ".flwr-home"), "a SuperLink of the sweep still runs"

    report = (out / "report.md").read_text()
    for plot in ("accuracy_vs_mb.png", "accuracy_vs_round.png"):
        assert (out / plot).stat().st_size > 10_000
        assert f"]({plot})" in report
    assert "3 SuperNodes" in report and "cnn width 16" in report
    rows = _cells(report)
    assert list(rows) == ["fedavg", "flocora-q4"]

    totals, finals = {}, {}
    for name, cells in rows.items():
        run = out / "runs" / f"{name}-s0"
        config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
        assert config["strategy"] == cells[1] == name.split("-")[0]
        assert config["model"] == "cnn" and config["num-server-rounds"] == 2 and config["seed"] == 0
        assert [r["round"] for r in rounds] == [1, 2]
        finals[name] = rounds[-1]["accuracy"]
        assert summary["final_accuracy"] == finals[name]
        totals[name] = (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6
        assert totals[name] == pytest.approx(
            sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / 1e6
        )
        assert cells[3] == "1"  # seeds
        assert _close(cells[4], 100 * finals[name])
        assert _close(cells[5], 100 * sum(r["accuracy"] for r in rounds) / len(rounds))
        assert _close(cells[7], totals[name])
        cum = 0.0
        reached = None
        for r in rounds:
            cum += (r["bytes_up"] + r["bytes_down"]) / 1e6
            if reached is None and r["accuracy"] >= 0.9:
                reached = cum
        if reached is None:
            assert cells[9] == "not reached"
        else:
            assert _close(cells[9], reached)
        assert _close(cells[10], rounds[1]["seconds"])  # round 1 (start-up) left out
        codec = rounds[1]["server_codec_seconds"] + rounds[1]["client_codec_seconds"]
        assert rounds[1]["client_codec_seconds"] > 0
        assert _close(cells[11], 100 * codec / rounds[1]["seconds"])
        probes = [json.loads(p.read_text()) for p in (out / "memory").glob("*.json")]
        mine = [p for p in probes if p["strategy"] == name.split("-")[0]]
        assert len(mine) == 1 and mine[0]["rss_delta_mb"] >= 0
        assert _close(cells[12], mine[0]["rss_delta_mb"])

    assert rows["flocora-q4"][2].startswith("r=4, alpha=8, up 4-bit, down fp32")
    assert _close(rows["flocora-q4"][6], 100 * (finals["flocora-q4"] - finals["fedavg"]))
    assert _close(rows["flocora-q4"][8], totals["fedavg"] / totals["flocora-q4"])
    assert totals["flocora-q4"] < totals["fedavg"]  # 4-bit LoRA uplink beats the full model

    # The report is rebuilt from the folders alone, identically.
    before = (out / "report.json").read_text()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "flora_tools.bench", "--report-only", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert "report.md" in rebuilt.stdout
    assert (out / "report.json").read_text() == before


def _fake_run(path: Path, strategy: str, accuracies: list[float], mb: float) -> Path:
    """A run folder as the ServerApp writes one (the fields the report reads)."""
    path.mkdir(parents=True)
    config = {"strategy": strategy, "lora-r": 16, "lora-alpha": 256.0, "quant-bits": 4}
    config |= {"quant-bits-down": 32, "model": "resnet8", "model-width": 64}
    (path / "config.json").write_text(json.dumps(config))
    rounds = [
        {
            "round": i + 1,
            "accuracy": acc,
            "bytes_up": int(mb * 1e6 / 2),
            "bytes_down": int(mb * 1e6 / 2),
            "seconds": 10.0 if i == 0 else 2.0,
            "server_codec_seconds": 0.02,
            "client_codec_seconds": 0.02,
        }
        for i, acc in enumerate(accuracies)
    ]
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    summary = {"final_accuracy": accuracies[-1], "bytes_up_total": 0, "bytes_down_total": 0}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_report_rows_mean_spread_target_and_codec_share(tmp_path: Path) -> None:
    fedavg = [
        Run.load(_fake_run(tmp_path / "a0", "fedavg", [0.5, 0.92, 0.95], mb=10.0)),
        Run.load(_fake_run(tmp_path / "a1", "fedavg", [0.5, 0.8, 0.91], mb=10.0)),
    ]
    q4 = [
        Run.load(_fake_run(tmp_path / "b0", "flocora", [0.3, 0.6, 0.85], mb=1.0)),
        Run.load(_fake_run(tmp_path / "b1", "flocora", [0.3, 0.6, 0.93], mb=1.0)),
    ]
    groups = [Group("fedavg", fedavg), Group("flocora-q4", q4, {"rss_delta_mb": 4.5})]
    rows = build_rows(groups, target=0.9)
    a, b = rows
    assert a["final_accuracy"] == pytest.approx(0.93)
    assert a["final_accuracy_spread"] == pytest.approx(statistics.stdev([0.95, 0.91]))
    assert a["last5_accuracy"] == pytest.approx((0.5 + 0.92 + 0.95 + 0.5 + 0.8 + 0.91) / 6)
    assert a["total_mb"] == pytest.approx(30.0) and b["total_mb"] == pytest.approx(3.0)
    assert b["reduction_vs_reference"] == pytest.approx(10.0)
    assert b["delta_vs_reference"] == pytest.approx(0.89 - 0.93)
    assert a["mb_to_target"] == pytest.approx(25.0)  # rounds 2 (20 MB) and 3 (30 MB)
    assert b["mb_to_target"] == pytest.approx(3.0) and b["seeds_reaching_target"] == 1
    assert a["seconds_per_round"] == pytest.approx(2.0)  # round 1 left out
    assert a["codec_share"] == pytest.approx(0.04 / 2.0)
    table = markdown_table(rows, 0.9)
    assert "| 93.0 ± 2.8 |" in table and "| 10.0x |" in table
    assert "3 (1/2 seeds)" in table and "| 4.5 |" in table and "| n/a |" in table


def test_the_sweep_is_the_issues_list_and_its_run_config_round_trips(tmp_path: Path) -> None:
    names = [c.name for c in SWEEP]
    assert names == [
        "fedavg",
        "fedlora-r8",
        "fedlora-r16",
        "fedlora-r32",
        "flocora-q8",
        "flocora-q4",
        "flocora-q2",
        "flocora-q8-down8",
        "flasc-d25",
        "flasc-d10",
        "flasc-d05",
        "flasc-d10-v8",
        "flocora-q2-ef",
    ]
    from flora_tools.bench import PRESETS

    jobs = plan(PRESETS["cpu-digits"], list(SWEEP), 2, {"lr": 0.05}, tmp_path)
    assert len(jobs) == 26 and [j.seed for j in jobs[:2]] == [0, 1]
    for job in jobs:
        assert parse_run_config(format_run_config(job.keys)) == job.keys
        assert job.keys["lr"] == 0.05 and job.keys["dataset"] == "digits"
        assert job.run_dir == tmp_path / "runs" / f"{job.config.name}-s{job.seed}"
    ranks = {j.config.name: (j.keys["lora-r"], j.keys["lora-alpha"]) for j in jobs}
    assert ranks["fedlora-r8"] == (8, 128.0) and ranks["fedlora-r32"] == (32, 512.0)


def test_training_runs_where_flora_device_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU preset relies on this: CUDA when torch sees one, ``FLORA_DEVICE`` overrides."""
    import torch

    from flora_app.ml.training import select_device

    monkeypatch.delenv("FLORA_DEVICE", raising=False)
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("FLORA_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
