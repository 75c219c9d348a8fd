"""The benchmark machinery: a real 2-configuration, 2-round sweep of the tiny CNN, and the
report's arithmetic on hand-written run folders.

The end-to-end test recomputes every number of ``report.md`` from the run folders' own files
(``summary.json`` for bytes, ``rounds.jsonl`` for accuracy and times, the probe's JSON for
memory) without the report code, and compares within the printed precision.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flora_app.results import read_rounds
from flora_tools import bench
from flora_tools.bench import (
    FMNIST_SWEEP,
    PRESETS,
    SWEEP,
    build_report,
    format_run_config,
    load_groups,
    main,
    memory_key,
    parse_run_config,
    plan,
    select,
)
from flora_tools.bench_report import (
    COLUMNS,
    DP_COLUMNS,
    PRIVATE_REPORT_COLUMNS,
    Group,
    Run,
    accuracy_band,
    build_rows,
    estimate,
    headline_table,
    markdown_table,
    paired_delta,
    settings,
    t975,
)

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
    for plot in (
        "accuracy_vs_mb.png",
        "accuracy_vs_round.png",
        "accuracy_vs_time_lte.png",
        "accuracy_vs_time_3g.png",
    ):
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
        rounds = read_rounds(run)
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
        assert _close(cells[4], 100 * finals[name])  # one seed: no interval
        assert _close(cells[5], 100 * sum(r["accuracy"] for r in rounds) / len(rounds))
        assert cells[6] == "n/a"  # no fedlora row in this sweep
        assert _close(cells[7], totals[name] / len(rounds))
        per_client = summary["bytes_up_per_client_per_round"]
        per_client += summary["bytes_down_per_client_per_round"]
        assert _close(cells[8], per_client / 1e6)
        cum = 0.0
        reached = None
        for r in rounds:
            cum += (r["bytes_up"] + r["bytes_down"]) / 1e6
            if reached is None and r["accuracy"] >= 0.9:
                reached = cum
        if reached is None:
            assert cells[10] == "not reached (0/1)"
        else:
            assert cells[10].endswith(" (1/1 reached)")
            assert _close(cells[10].split(" (")[0], reached)
        # simulated minutes to target over lte and 3g: reached exactly when the MB column is
        for link in (cells[11], cells[12]):
            assert link.endswith("(1/1 reached)" if reached is not None else "(0/1)")
        assert _close(cells[13], rounds[1]["seconds"])  # round 1 (start-up) left out
        codec = rounds[1]["server_codec_seconds"] + rounds[1]["client_codec_seconds"]
        assert rounds[1]["client_codec_seconds"] > 0
        assert _close(cells[14], 100 * codec / rounds[1]["seconds"])
        probes = [json.loads(p.read_text()) for p in (out / "memory").glob("*.json")]
        mine = [p for p in probes if p["strategy"] == name.split("-")[0]]
        assert len(mine) == 1 and mine[0]["rss_delta_mb"] >= 0
        assert _close(cells[15], mine[0]["rss_delta_mb"])

    assert rows["flocora-q4"][2].startswith("r=4, alpha=8, up 4-bit, down fp32")
    assert _close(rows["flocora-q4"][9], totals["fedavg"] / totals["flocora-q4"])
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


_CONFIG = {
    "dataset": "digits",
    "model": "resnet8",
    "model-width": 64,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "fraction-train": 0.1,
    "fraction-evaluate": 0.1,
    "local-epochs": 5,
    "batch-size": 32,
    "lr": 0.01,
    "lora-r": 16,
    "lora-alpha": 256.0,
    "quant-bits": 4,
    "quant-bits-down": 32,
    "density-up": 0.1,
    "density-down": 0.25,
    "sparse-value-bits": 32,
    "server-optimizer": "adam",
    "server-lr": 0.05,
}


def _fake_run(
    path: Path,
    strategy: str,
    accuracies: list[float],
    mb: float,
    seed: int = 0,
    clients: int = 10,
    **keys: object,
) -> Path:
    """A run folder as the ServerApp writes one (the fields the report reads): ``mb`` MB per
    round, half up and half down, over ``clients`` sampled clients."""
    path.mkdir(parents=True)
    config = _CONFIG | {"strategy": strategy, "seed": seed}
    config |= {"num-server-rounds": len(accuracies)} | keys
    (path / "config.json").write_text(json.dumps(config))
    rounds = [
        {
            "round": i + 1,
            "accuracy": acc,
            "bytes_up": int(mb * 1e6 / 2),
            "bytes_down": int(mb * 1e6 / 2),
            "clients": clients,
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


def _runs(root: Path, strategy: str, finals: dict[int, float], mb: float = 1.0) -> list[Run]:
    """One run per seed, accuracy 0.5 then ``finals[seed]``."""
    return [
        Run.load(_fake_run(root / f"{strategy}-s{seed}", strategy, [0.5, acc], mb, seed=seed))
        for seed, acc in finals.items()
    ]


def test_t_quantiles_match_published_values() -> None:
    assert t975(1) == pytest.approx(12.706, abs=1e-3)
    assert t975(2) == pytest.approx(4.303, abs=1e-3)
    assert t975(4) == pytest.approx(2.776, abs=1e-3)
    assert t975(9) == pytest.approx(2.262, abs=1e-3)
    assert t975(30) == pytest.approx(2.042, abs=1e-3)
    # Past the table, the expansion: t(0.975, 31) = 2.0395, 60: 2.0003, 120: 1.9799.
    assert t975(31) == pytest.approx(2.0395, abs=3e-4)
    assert t975(60) == pytest.approx(2.0003, abs=2e-4)
    assert t975(120) == pytest.approx(1.9799, abs=1e-4)
    quantiles = np.array([t975(df) for df in range(1, 200)])
    assert (np.diff(quantiles) < 0).all() and quantiles[-1] > 1.96
    with pytest.raises(ValueError):
        t975(0)


def test_interval_of_a_known_sample() -> None:
    three = estimate([0.90, 0.92, 0.94])
    assert three.mean == pytest.approx(0.92) and three.n == 3
    assert three.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    one = estimate([0.9])
    assert one.mean == 0.9 and one.half_width is None and one.n == 1


def test_delta_is_paired_over_the_shared_seeds_only(tmp_path: Path) -> None:
    fedlora = _runs(tmp_path, "fedlora", {0: 0.90, 1: 0.92, 2: 0.94})
    flasc = _runs(tmp_path, "flasc", {1: 0.95, 2: 0.93, 3: 0.50})
    delta = paired_delta(flasc, fedlora)
    assert delta is not None and delta.n == 2  # seeds 1 and 2; seed 3 has no partner
    diffs = [0.95 - 0.92, 0.93 - 0.94]
    assert delta.mean == pytest.approx(statistics.fmean(diffs))
    assert delta.half_width == pytest.approx(12.7062 * statistics.stdev(diffs) / math.sqrt(2))
    assert paired_delta(_runs(tmp_path / "x", "flasc", {7: 0.9}), fedlora) is None

    rows = build_rows([Group("fedlora", fedlora), Group("flasc", flasc)], target=0.99)
    assert rows[0]["delta_vs_reference"] == 0.0 and rows[0]["delta_seeds"] == 3
    assert rows[1]["delta_vs_reference"] == pytest.approx(0.01) and rows[1]["delta_seeds"] == 2
    cells = _cells(markdown_table(rows))
    assert cells["flasc"][6] == "+1.0 ± 25.4 (2/3 seeds)"
    assert cells["fedlora"][6] == "+0.0 ± 0.0"
    # No fedavg row: no byte reduction; a missing reference row leaves its column n/a.
    assert cells["flasc"][9] == "n/a"
    alone = build_rows([Group("flasc", flasc)], target=0.99)
    assert alone[0]["delta_vs_reference"] is None
    assert _cells(markdown_table(alone))["flasc"][6] == "n/a"


def test_mb_to_target_counts_the_seeds_that_reach_it(tmp_path: Path) -> None:
    runs = [
        Run.load(_fake_run(tmp_path / "s0", "fedlora", [0.5, 0.91, 0.95], mb=2.0, seed=0)),
        Run.load(_fake_run(tmp_path / "s1", "fedlora", [0.5, 0.8, 0.90], mb=2.0, seed=1)),
        Run.load(_fake_run(tmp_path / "s2", "fedlora", [0.5, 0.8, 0.85], mb=2.0, seed=2)),
    ]
    assert [r.mb_to_reach(0.9) for r in runs] == [pytest.approx(4.0), pytest.approx(6.0), None]
    (row,) = build_rows([Group("fedlora", runs)], target=0.9)
    assert row["mb_to_target"] == pytest.approx(5.0) and row["seeds_reaching_target"] == 2
    table = markdown_table([row])
    assert "MB to 90 % (seeds reached)" in table
    assert _cells(table)["fedlora"][10] == "5.00 (2/3 reached)"
    (never,) = build_rows([Group("fedlora", runs)], target=0.99)
    assert _cells(markdown_table([never]))["fedlora"][10] == "not reached (0/3)"


def test_report_rows_bytes_reduction_times_and_memory(tmp_path: Path) -> None:
    fedavg = [
        Run.load(_fake_run(tmp_path / "a0", "fedavg", [0.5, 0.92, 0.95], mb=10.0, seed=0)),
        Run.load(_fake_run(tmp_path / "a1", "fedavg", [0.5, 0.8, 0.91], mb=10.0, seed=1)),
    ]
    q4 = [
        Run.load(_fake_run(tmp_path / "b0", "flocora", [0.3, 0.6, 0.85], mb=1.0, seed=0)),
        Run.load(_fake_run(tmp_path / "b1", "flocora", [0.3, 0.6, 0.93], mb=1.0, seed=1)),
    ]
    groups = [Group("fedavg", fedavg), Group("flocora-q4", q4, {"rss_delta_mb": 4.5})]
    a, b = build_rows(groups, target=0.9, reference="fedavg")
    assert a["final_accuracy"] == pytest.approx(0.93)
    assert a["final_accuracy_ci"] == pytest.approx(
        12.7062 * statistics.stdev([0.95, 0.91]) / 2**0.5
    )
    last = [statistics.fmean([0.5, 0.92, 0.95]), statistics.fmean([0.5, 0.8, 0.91])]
    assert a["last5_accuracy"] == pytest.approx(statistics.fmean(last))
    assert a["mb_per_round"] == pytest.approx(10.0) and b["mb_per_round"] == pytest.approx(1.0)
    assert b["mb_per_client_round"] == pytest.approx(0.1)  # 10 clients
    assert a["total_mb"] == pytest.approx(30.0)
    assert b["reduction_vs_byte_reference"] == pytest.approx(10.0)
    assert b["delta_vs_reference"] == pytest.approx(statistics.fmean([0.85 - 0.95, 0.93 - 0.91]))
    assert a["mb_to_target"] == pytest.approx(25.0)  # rounds 2 (20 MB) and 3 (30 MB)
    assert a["seconds_per_round"] == pytest.approx(2.0)  # round 1 left out
    assert a["codec_share"] == pytest.approx(0.04 / 2.0)
    cells = _cells(markdown_table([a, b]))
    assert cells["fedavg"][4] == "93.0 ± 25.4" and cells["flocora-q4"][9] == "10.0x"
    assert cells["flocora-q4"][7] == "1.00" and cells["flocora-q4"][8] == "0.100"
    assert cells["flocora-q4"][15] == "4.5" and cells["fedavg"][15] == "n/a"
    # simulated time over edge links: fedavg's 10 MB rounds take longer than flocora's 1 MB
    assert cells["fedavg"][11].endswith("(2/2 reached)")
    minutes = {row["config"]: row["link_minutes_to_target"]["3g"]["minutes"] for row in (a, b)}
    assert minutes["fedavg"] > 0 and minutes["flocora-q4"] is not None
    assert a["link_minutes_to_target"]["lte"]["reached"] == 2
    assert cells["flocora-q4"][2] == "r=16, alpha=256, up 4-bit, down fp32"


def test_settings_name_the_model_keys_that_differ_from_the_first_row() -> None:
    base = _CONFIG | {"strategy": "fedavg", "norm": "group", "pretrained": False}
    effnet = base | {"strategy": "fedlora", "model": "efficientnet-lite0", "norm": "batch"}
    assert settings(base, base) == "full model, fp32"
    assert settings(effnet | {"pretrained": True, "lora-alpha": 16.0}, base) == (
        "efficientnet-lite0, batch norm, pretrained, r=16, alpha=16, fp32"
    )
    assert settings(effnet, base).startswith("efficientnet-lite0, batch norm, from scratch, ")
    frozen = effnet | {"pretrained": True, "batchnorm-stats": "frozen"}
    assert settings(frozen, base).startswith(
        "efficientnet-lite0, batch norm, pretrained, frozen BN statistics, r=16"
    )
    assert settings(base | {"strategy": "fedlora", "lora-mode": "full-stem"}, base) == (
        "full-stem, r=16, alpha=256, fp32"
    )


def test_settings_name_the_techniques_past_both_papers() -> None:
    """Rows that share a strategy and its widths differ in these keys; the report must show
    which, or the frontier's row reads like the plain 4-bit one."""
    q4 = _CONFIG | {"strategy": "flocora", "quant-bits": 4, "quant-bits-down": 2}
    frontier = q4 | {
        "quant-vectors": "quant",
        "lora-freeze-a": True,
        "downlink-delta": True,
        "entropy-coder": "zstd",
    }
    assert settings(q4, q4) == "r=16, alpha=256, up 4-bit, down 2-bit"
    assert settings(frontier, q4) == (
        "r=16, alpha=256, up 4-bit, down 2-bit, 1-D tensors quantized, A frozen (FFA-LoRA), "
        "down as change from the node's copy, + zstd"
    )
    tiers = q4 | {"tiers": "0.5:2,0.5:6", "uplink-budget-bytes": 408_633}
    assert settings(tiers, q4).endswith(", uplink budget 408,633 B, tiers 0.5:2,0.5:6")
    ranks = _CONFIG | {"strategy": "fedlora", "rank-tiers": "0.5:8,0.5:16"}
    assert settings(ranks, ranks) == "r=16, alpha=256, fp32, rank tiers 0.5:8,0.5:16"
    private = ranks | {"rank-tiers": "", "dp-noise-multiplier": 0.3, "dp-clipping-norm": 5.0}
    assert settings(private, ranks) == "r=16, alpha=256, fp32, DP noise 0.3 x clip 5"
    # The defaults (and folders from before the keys) add nothing.
    plain = q4 | {"quant-vectors": "fp32", "entropy-coder": "none", "dp-noise-multiplier": 0.0}
    assert settings(plain, q4) == settings(q4, q4)


def _private(path: Path, epsilons: list[float], seed: int, noise: float = 1.0) -> Run:
    """A fake private run: its rounds carry the accountant's cumulative epsilon."""
    _fake_run(
        path, "fedlora", [0.5, 0.6, 0.7][: len(epsilons)], 1.0, seed=seed,
        **{"dp-noise-multiplier": noise, "dp-clipping-norm": 5.0, "dp-delta": 1e-5},
    )  # fmt: skip
    rounds = read_rounds(path)
    for record, eps in zip(rounds, epsilons, strict=True):
        record["dp_epsilon"] = eps
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    return Run.load(path)


def test_a_private_sweep_reports_the_epsilon_spent(tmp_path: Path) -> None:
    clean = _runs(tmp_path, "fedlora", {0: 0.70, 1: 0.72})
    noisy = [
        _private(tmp_path / "dp-s0", [3.0, 5.5], seed=0),
        _private(tmp_path / "dp-s1", [3.0, 6.25], seed=1),
    ]
    assert noisy[0].epsilon() == 5.5 and clean[0].epsilon() is None
    groups = [Group("fedlora", clean), Group("fedlora-dp1", noisy)]
    rows = build_rows(groups, target=0.9)
    assert rows[0]["dp_epsilon"] is None
    assert rows[1]["dp_epsilon"] == 6.25 and rows[1]["dp_delta"] == 1e-5  # the worst seed
    table = headline_table(groups, ["fedlora", "fedlora-dp1"], 0.9, columns=DP_COLUMNS)
    assert "| ε spent (at δ) |" in table.splitlines()[0]
    cells = _cells(table)
    assert cells["fedlora"][4] == "no DP" and cells["fedlora-dp1"][4] == "6.25 (δ = 1e-05)"
    assert cells["fedlora-dp1"][1].endswith("DP noise 1 x clip 5")
    assert cells["fedlora-dp1"][3] == "-11.0 ± 12.7"  # 0.6 - 0.70 and 0.6 - 0.72, paired
    # The report shows the column for a private sweep only.
    _fake_sweep(tmp_path / "plain")
    assert "ε spent" not in build_report(tmp_path / "plain").read_text()
    private = tmp_path / "private"
    _fake_sweep(private)
    _private(private / "runs" / "dp-s0", [2.0, 4.0, 8.0], seed=0)
    meta = json.loads((private / "bench.json").read_text())
    meta["configs"].append({"name": "dp", "runs": ["dp-s0"]})
    (private / "bench.json").write_text(json.dumps(meta))
    report = build_report(private).read_text()
    assert "ε spent (at δ):" in report  # the note defines it
    assert _cells(report)["dp"][COLUMNS_INDEX_EPSILON] == "8 (δ = 1e-05)"
    assert _cells(report)["fedlora"][COLUMNS_INDEX_EPSILON] == "no DP"


COLUMNS_INDEX_EPSILON = PRIVATE_REPORT_COLUMNS.index("epsilon")


def test_bands_are_t_intervals_min_max_or_none(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "fedlora", {0: 0.90, 1: 0.92, 2: 0.94})
    mbs, mean, low, high = accuracy_band(runs)
    assert mbs.tolist() == pytest.approx([1.0, 2.0]) and mean[-1] == pytest.approx(0.92)
    assert low is not None and high is not None
    assert high[-1] - mean[-1] == pytest.approx(estimate([0.90, 0.92, 0.94]).half_width)
    _, _, low, high = accuracy_band(runs[:2])
    assert low is not None and high is not None
    assert (low[-1], high[-1]) == pytest.approx((0.90, 0.92))
    assert accuracy_band(runs[:1])[2:] == (None, None)


def test_per_configuration_seeds_in_the_plan(tmp_path: Path) -> None:
    preset = PRESETS["cpu-fmnist"]
    headline = {
        "fedavg",
        "fedlora",
        "flocora-q4",
        "flocora-q8-down8",
        "flasc-d10",
        "effnet-pt-fedlora",
        "effnet-pt-flocora-q4",
        "effnet-pt-flasc-d10",
        "effnet-pt-flocora-q4-vec",
        "effnet-pt-ffa-flocora-q4",
        "effnet-pt-flasc-d10-v8-zstd",
        "effnet-pt-flocora-adaptive-q4-bytes",
        "effnet-pt-flocora-q4-down2-delta",
        "effnet-pt-frontier",
        "effnet-pt-frontier-q2",
        "effnet-pt-frontier-q2-down1",
        "effnet-pt-frontier-q2-down4",
        "effnet-pt-frontier-adaptive-down4",
    }
    names = [c.name for c in preset.sweep]
    assert headline < set(names) and len(names) == 29

    def counts(floor: int) -> dict[str, int]:
        jobs = plan(preset, list(preset.sweep), floor, {}, tmp_path)
        # seed by seed (all seed-0 runs first), configuration order within a seed
        assert [j.seed for j in jobs] == sorted(j.seed for j in jobs)
        for seed in {j.seed for j in jobs}:
            order = [j.config.name for j in jobs if j.seed == seed]
            assert order == sorted(order, key=names.index)
        for name in names:
            assert [j.seed for j in jobs if j.config.name == name] == list(
                range(len([j for j in jobs if j.config.name == name]))
            )
        return {n: sum(j.config.name == n for j in jobs) for n in names}

    assert counts(1) == {n: 3 if n in headline else 1 for n in names}
    assert counts(2) == {n: 3 if n in headline else 2 for n in names}
    assert counts(4) == dict.fromkeys(names, 4)

    jobs = plan(preset, list(preset.sweep), 1, {}, tmp_path)
    keys = {j.config.name: j.keys for j in jobs}
    assert keys["fedlora"]["dataset"] == "fashion-mnist" and keys["fedlora"]["norm"] == "group"
    assert keys["fedlora"]["model-width"] == 16 and keys["fedlora"]["lora-alpha"] == 64.0
    assert keys["fedlora"]["lora-r"] == 4 and keys["fedlora"]["norm"] == "group"
    assert keys["fedavg"]["fraction-evaluate"] == 0.05
    for name in ("effnet-pt-fedlora", "effnet-pt-flocora-q4", "effnet-pt-flasc-d10"):
        assert keys[name]["model"] == "efficientnet-lite0" and keys[name]["pretrained"] is True
        assert keys[name]["norm"] == "batch" and keys[name]["lora-alpha"] == 16.0
        assert keys[name]["batchnorm-stats"] == "frozen"
    assert keys["effnet-pt-fedlora-bn-measured"]["batchnorm-stats"] == "measured"
    assert keys["effnet-scratch-fedlora"]["pretrained"] is False
    assert keys["effnet-scratch-fedlora"]["batchnorm-stats"] == "measured"
    assert keys["effnet-pt-flasc-d10"]["density-up"] == 0.1
    from flora_tools.preflight import run_config_problem

    for job in jobs:
        assert parse_run_config(format_run_config(job.keys)) == job.keys
        assert run_config_problem(job.keys) is None, job.config.name  # every row would start
    frontier = keys["effnet-pt-frontier"]
    assert frontier["quant-bits-down"] == 2 and frontier["downlink-delta"] is True
    assert frontier["lora-freeze-a"] is True and frontier["entropy-coder"] == "zstd"
    widths = {"quant-bits": 2, "quant-bits-down": 4, "run-name": ""}
    assert keys["effnet-pt-frontier-q2-down4"] | {"run-name": ""} == frontier | widths
    adaptive = keys["effnet-pt-frontier-adaptive-down4"]
    assert adaptive["quant-bits"] == 8 and adaptive["uplink-budget-bytes"] == 142_640
    # The other presets keep the global sweep.
    assert PRESETS["cpu-digits"].sweep is SWEEP and PRESETS["cifar10-paper"].sweep is SWEEP
    assert len(plan(PRESETS["cpu-digits"], list(SWEEP), 1, {}, tmp_path)) == len(SWEEP)


def test_configs_select_from_the_presets_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = PRESETS["cpu-fmnist"].sweep
    chosen = select("effnet-pt-fedlora, fedavg", sweep)
    assert [c.name for c in chosen] == ["effnet-pt-fedlora", "fedavg"]
    assert chosen[0].seeds == 3
    assert select("", sweep) == list(sweep)
    with pytest.raises(SystemExit, match="flasc-d10-v8"):
        select("flasc-d10-v8", sweep)  # in the global sweep, not in cpu-fmnist's
    with pytest.raises(SystemExit, match="effnet-pt-fedlora"):
        select("effnet-pt-fedlora", SWEEP)

    assert main(["--preset", "cpu-fmnist", "--list", "--seeds", "2"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(lines) == [c.name for c in sweep]
    assert " seeds 3 " in lines["effnet-pt-fedlora"] and " seeds 2 " in lines["flasc-d25"]
    assert "pretrained=false" in lines["effnet-scratch-fedlora"]


def test_a_complete_run_folder_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (job,) = plan(PRESETS["cpu-fmnist"], select("flasc-d25", FMNIST_SWEEP), 1, {}, tmp_path)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "config.json").write_text(json.dumps(job.keys))
    (job.run_dir / "summary.json").write_text("{}")

    def launch(*args: object) -> int:
        raise AssertionError("a complete run was launched again")

    monkeypatch.setattr(bench, "launch", launch)
    assert bench.run_job(job, 100, tmp_path, {}, 60.0) == 0.0


def test_a_run_folder_moved_elsewhere_or_older_than_a_key_resumes(tmp_path: Path) -> None:
    """A clone in another folder resumes the committed sweep; a key a run predates counts as
    the default it ran with; a setting that differs stops the sweep, naming the key."""
    (job,) = plan(PRESETS["cpu-fmnist"], select("flasc-d25", FMNIST_SWEEP), 1, {}, tmp_path)
    job.run_dir.mkdir(parents=True)
    made = {**job.keys, "output-dir": "/elsewhere/runs"}
    del made["batch-size"]  # as if the run predated the key: it ran with the default
    made.pop("batchnorm-stats", None)
    (job.run_dir / "config.json").write_text(json.dumps(made))
    (job.run_dir / "summary.json").write_text("{}")
    assert job.keys["batch-size"] == bench.app_defaults()["batch-size"]
    assert bench._finished(job)
    (job.run_dir / "config.json").write_text(json.dumps({**made, "density-up": 0.5}))
    with pytest.raises(SystemExit, match="density-up"):
        bench._finished(job)


def _fake_sweep(out: Path) -> None:
    """A results folder: fedavg and fedlora with 3 seeds, flocora-q4 with 1, as ``main``
    writes it (``bench.json`` and ``runs/<config>-s<seed>``)."""
    finals = {
        "fedavg": ("fedavg", 10.0, {0: 0.93, 1: 0.95, 2: 0.94}),
        "fedlora": ("fedlora", 1.0, {0: 0.90, 1: 0.92, 2: 0.94}),
        "flocora-q4": ("flocora", 0.3, {0: 0.89}),
    }
    configs = []
    for name, (strategy, mb, seeds) in finals.items():
        for seed, acc in seeds.items():
            accuracies = [0.3, 0.6, 0.8, 0.85, 0.88, acc]
            _fake_run(out / "runs" / f"{name}-s{seed}", strategy, accuracies, mb, seed=seed)
        configs.append({"name": name, "runs": [f"{name}-s{s}" for s in seeds]})
    meta = {
        "preset": "cpu-digits",
        "supernodes": 100,
        "seeds": 1,
        "target_accuracy": 0.9,
        "command": "python -m flora_tools.bench --out x",
        "machine": "test",
        "started": "now",
        "configs": configs,
        "run_seconds": {"fedavg-s0": 60.0},
    }
    (out / "bench.json").write_text(json.dumps(meta))


def test_report_and_plots_for_one_and_three_seed_rows(tmp_path: Path) -> None:
    _fake_sweep(tmp_path)
    report = build_report(tmp_path).read_text()
    for plot_file in ("accuracy_vs_mb.png", "accuracy_vs_round.png"):
        assert (tmp_path / plot_file).stat().st_size > 10_000
        assert f"]({plot_file})" in report
    rows = _cells(report)
    assert list(rows) == ["fedavg", "fedlora", "flocora-q4"]
    assert rows["fedlora"][3] == "3" and rows["flocora-q4"][3] == "1"
    half = 100 * 4.3027 * 0.02 / math.sqrt(3)
    assert rows["fedlora"][4] == f"92.0 ± {half:.1f}"
    assert rows["flocora-q4"][4] == "89.0"  # one seed: the value, no interval
    assert rows["flocora-q4"][6] == "-1.0"  # seed 0 only, which fedlora has
    fedavg_delta = estimate([0.03, 0.03, 0.0])  # seed by seed against fedlora
    assert rows["fedavg"][6] == f"+2.0 ± {100 * fedavg_delta.half_width:.1f}"
    assert rows["fedlora"][9] == "10.0x" and rows["flocora-q4"][9] == "33.3x"
    assert rows["fedlora"][10] == "6.00 (3/3 reached)"  # at round 6, 1 MB a round
    assert rows["flocora-q4"][10] == "not reached (0/1)"
    assert "seeds 0..n-1 per configuration, n = 1..3" in report
    assert "Δ vs fedlora (points, paired by seed) ± 95 % CI" in report
    for column in COLUMNS:  # NOTES defines every column
        assert COLUMNS[column].split(" ")[0].format(reference="fedlora", byte_reference="fedavg")
    for term in ("seeds:", "final accuracy:", "last 5 rounds:", "Δ vs fedlora:", "t(0.975, n-1)"):
        assert term in report
    for term in ("MB up+down / round:", "/ client / round:", "reduction vs fedavg:", "MB to 90 %:"):
        assert term in report
    for term in ("s / round:", "codec share:", "client training peak MB:", "plots:"):
        assert term in report
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["reference"] == "fedlora" and data["rows"][1]["seed_list"] == [0, 1, 2]

    # The headline table is the report's cells for the listed rows and columns.
    groups, meta = load_groups(tmp_path)
    headline = headline_table(groups, ["flocora-q4", "fedlora"], meta["target_accuracy"])
    lines = headline.splitlines()
    assert lines[0] == (
        "| config | final accuracy % ± 95 % CI | Δ vs fedlora (points, paired by seed) ± 95 % CI"
        " | MB up+down / client / round | reduction vs fedavg (up+down) "
        "| MB to 90 % (seeds reached) |"
    )
    heads = _cells(headline)
    assert list(heads) == ["flocora-q4", "fedlora"]
    for name, cells in heads.items():
        assert cells == [rows[name][i] for i in (0, 4, 6, 8, 9, 10)]
    assert headline_table(groups, ["fedlora"]) == headline_table(groups, ["fedlora"], 0.9)
    with pytest.raises(ValueError, match="nope"):
        headline_table(groups, ["nope"])


def test_committed_cpu_digits_folders_still_load_and_report(tmp_path: Path) -> None:
    committed = ROOT / "benchmarks" / "cpu-digits"
    for path in sorted((committed / "runs").iterdir()):
        run = Run.load(path)
        assert "lora-mode" not in run.config and "lora-train-norm" in run.config
        assert settings(run.config) and run.mb_per_client_round() is not None
        # The probe files were saved under the digest of the old keys; it must not move.
        assert (committed / "memory" / f"{memory_key(run.config)}.json").exists()

    out = tmp_path / "cpu-digits"
    shutil.copytree(committed, out)
    report = build_report(out).read_text()
    rows = _cells(report)
    assert len(rows) == 13 and rows["fedavg"][4] == "94.4" and rows["fedavg"][9] == "1.0x"
    assert all(cells[6] == "n/a" for cells in rows.values())  # no row named fedlora
    assert all(cells[13] != "n/a" for cells in rows.values())  # memory probes found
    assert "seeds 0..0" in report
    report = build_report(out, reference="fedlora-r16").read_text()
    rows = _cells(report)
    assert rows["fedlora-r16"][6] == "+0.0" and rows["fedavg"][6] == "-1.4"
    assert (out / "accuracy_vs_mb.png").stat().st_size > 10_000


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
    jobs = plan(PRESETS["cpu-digits"], list(SWEEP), 2, {"lr": 0.05}, tmp_path)
    assert len(jobs) == 26 and [j.seed for j in jobs[:14]] == [0] * 13 + [1]
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


def test_a_partial_sweep_reports_the_complete_runs_and_says_it_is_partial(tmp_path: Path) -> None:
    """A sweep stopped half-way (to resume later) still gets a report of what is done."""
    from flora_tools.bench import build_report, load_groups

    src = Path(__file__).resolve().parent.parent / "benchmarks" / "cpu-digits"
    out = tmp_path / "partial"
    shutil.copytree(src, out)
    meta = json.loads((out / "bench.json").read_text())
    first = meta["configs"][0]
    first["runs"].append("never-ran-s1")  # planned, not run
    meta["configs"].append({"name": "not-started", "runs": ["not-started-s0"]})
    (out / "bench.json").write_text(json.dumps(meta))
    groups, meta = load_groups(out)
    assert [g.name for g in groups] == [c["name"] for c in meta["configs"][:-1]]
    assert len(groups[0].runs) == 1
    assert meta["complete_runs"] == meta["planned_runs"] - 2
    report = build_report(out, reference="fedlora-r16").read_text()
    assert f"{meta['complete_runs']} of {meta['planned_runs']} planned runs" in report


def test_the_attack_preset_is_valid_and_its_clean_rows_are_cpu_fmnists(tmp_path: Path) -> None:
    from flora_tools.preflight import run_config_problem

    attacks, fmnist = PRESETS["cpu-fmnist-attacks"], PRESETS["cpu-fmnist"]
    jobs = plan(attacks, list(attacks.sweep), 1, {}, tmp_path)
    keys = {j.config.name: j.keys for j in jobs}
    for job in jobs:  # every configuration would start
        assert run_config_problem(job.keys) is None, job.config.name
    # The clean rows are cpu-fmnist's own configurations, so those runs stand for them.
    clean = {j.config.name: j.keys for j in plan(fmnist, list(fmnist.sweep), 1, {}, tmp_path)}
    for name in ("fedlora", "flocora-q4", "flasc-d10"):
        assert keys[name] == clean[name]
        assert sum(j.config.name == name for j in jobs) == 3
    row = keys["flasc-d10-sign-flip20-multi-krum"]
    assert row["byzantine-clients"] == 20 and row["attack"] == "sign-flip"
    assert row["aggregation"] == "multi-krum" and row["malicious-nodes"] == 2
    assert keys["fedlora-scale20-trimmed-mean"]["aggregation"] == "trimmed-mean"
    assert "malicious-nodes" not in keys["fedlora-scale20-trimmed-mean"]
    # Every seed-0 run comes before any second seed: a partial sweep is the widest table.
    first = [j.seed for j in jobs].index(1)
    assert all(j.seed == 0 for j in jobs[:first]) and first == len(attacks.sweep)


@pytest.mark.parametrize("name", ["cpu-fmnist-dp", "cpu-fmnist-tiers", "cpu-fmnist-attacks-pt"])
def test_the_pretrained_presets_pair_with_cpu_fmnists_clean_rows(tmp_path: Path, name: str) -> None:
    """Their rows without DP, tiers or attacks are cpu-fmnist's configurations (so those runs
    stand for them, and Δ is paired by seed); every other row differs from one of them in its
    own keys only."""
    from flora_tools.attack_table import ATTACK_KEYS, DEFENCE_KEYS

    def seed0(preset: str) -> dict[str, dict]:
        jobs = plan(PRESETS[preset], list(PRESETS[preset].sweep), 1, {}, tmp_path)
        where = {"run-name", "output-dir"}  # a folder of its own, per preset
        return {
            j.config.name: {k: v for k, v in j.keys.items() if k not in where}
            for j in jobs
            if j.seed == 0
        }

    clean, keys = seed0("cpu-fmnist"), seed0(name)
    references = {n for n in keys if n in clean}
    assert references == {"effnet-pt-fedlora", "effnet-pt-flocora-q4", "effnet-pt-flasc-d10"}
    for n in references:
        assert keys[n] == clean[n], n
    own = {"dp-noise-multiplier", "dp-clipping-norm", "tiers", "rank-tiers"}
    own |= {*ATTACK_KEYS, *DEFENCE_KEYS}  # what attack_table pairs across
    by_strategy = {keys[n]["strategy"]: keys[n] for n in references}
    server = {"server-optimizer", "server-lr", "server-lr-schedule"}  # FLASC's rows on SGD
    for n, row in keys.items():
        base = by_strategy[row["strategy"]]
        allowed = own | server if row.get("server-optimizer") == "sgd" else own
        assert {k for k in row.keys() | base.keys() if row.get(k) != base.get(k)} <= allowed, n


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_row_of_every_preset_would_start(tmp_path: Path, name: str) -> None:
    from flora_tools.preflight import run_config_problem

    preset = PRESETS[name]
    for job in plan(preset, list(preset.sweep), 1, {}, tmp_path):
        assert run_config_problem(job.keys) is None, job.config.name


def test_a_configs_subset_adds_to_the_folders_record_and_keeps_the_rest() -> None:
    """A sweep of a few rows into a folder that holds others (resuming, extending) must not
    drop the others from bench.json, or the report forgets runs that are on disk."""
    previous = [{"name": "fedavg", "runs": ["fedavg-s0"]}, {"name": "q4", "runs": ["q4-s0"]}]
    current = [{"name": "q4", "runs": ["q4-s0", "q4-s1"]}, {"name": "new", "runs": ["new-s0"]}]
    assert bench.merged_configs(previous, current) == [
        {"name": "fedavg", "runs": ["fedavg-s0"]},
        {"name": "q4", "runs": ["q4-s0", "q4-s1"]},
        {"name": "new", "runs": ["new-s0"]},
    ]
    assert bench.merged_configs([], current) == current


def test_the_attack_table_pairs_each_run_with_its_strategys_clean_run(tmp_path: Path) -> None:
    """Each attacked or defended row against the clean run of the same strategy and seed; a
    row that differs from every clean row in anything but attack and defence keys is left
    out rather than paired."""
    import dataclasses

    from flora_app.config import RobustnessSection, run_config_key
    from flora_tools.attack_table import ATTACK_KEYS, DEFENCE_KEYS, row_label, table

    robustness = {run_config_key(f.name) for f in dataclasses.fields(RobustnessSection)}
    assert set(ATTACK_KEYS) | set(DEFENCE_KEYS) <= robustness
    attack = {"byzantine-clients": 20, "attack": "sign-flip"}
    rows = {  # name: (strategy, {seed: final accuracy}, keys)
        "fedlora": ("fedlora", {0: 0.70, 1: 0.72}, {}),
        "fedlora-sf-mean": ("fedlora", {0: 0.60}, attack),
        "fedlora-sf-tm": ("fedlora", {0: 0.69, 1: 0.73}, attack | {"aggregation": "trimmed-mean"}),
        "flasc": ("flasc", {0: 0.65}, {}),
        "flasc-tm": ("flasc", {0: 0.60}, {"aggregation": "trimmed-mean"}),
        "fedlora-lr": ("fedlora", {0: 0.123}, attack | {"lr": 0.5}),  # pairs with nothing
    }
    configs = []
    for name, (strategy, finals, keys) in rows.items():
        runs = []
        for seed, acc in finals.items():
            run = _fake_run(tmp_path / "runs" / f"{name}-s{seed}", strategy, [0.5, acc], 1.0,
                            seed=seed, **keys)  # fmt: skip
            runs.append(run.name)
        configs.append({"name": name, "runs": runs})
    (tmp_path / "bench.json").write_text(json.dumps({"supernodes": 100, "configs": configs}))
    groups, _ = load_groups(tmp_path)
    lines = table(groups, 100).splitlines()
    assert lines[0] == "| attack, defence | fedlora | flasc |"
    clean, sf_mean, sf_tm, tm = (line.split(" | ") for line in lines[2:])
    assert [clean[0], sf_mean[0], sf_tm[0], tm[0]] == [
        "| clean",
        "| 20 % sign-flip, mean",
        "| 20 % sign-flip, trimmed-mean",
        "| no attack, trimmed-mean",
    ]
    half = t975(1) * np.std([70, 72], ddof=1) / np.sqrt(2)
    assert clean[1:] == [f"71.0 ± {half:.1f} (2 seeds)", "65.0 (1 seed) |"]
    assert sf_mean[1:] == ["60.0 (-10.0)", " |"]  # flasc has no such row
    assert sf_tm[1] == f"71.0 (+0.0 ± {half:.1f}; -1.0, +1.0)"
    assert tm[1:] == ["", "60.0 (-5.0) |"]  # nor fedlora this one
    assert len(lines) == 6 and "12.3" not in "".join(lines)  # the lr row is not in the table
    bounded = attack | {"attack": "scale", "attack-scale": 10.0, "aggregation": "mean"}
    bounded |= {"max-update-norm": 5.0, "update-norm-action": "reject"}
    assert row_label(bounded, 100) == "20 % scale x10, mean, norm ≤ 5 (reject)"
    # a bound alone is a defence: that run is not a second clean run of its strategy
    bound_only = {"aggregation": "mean", "max-update-norm": 5.0, "update-norm-action": "reject"}
    assert row_label(bound_only, 100) == "no attack, mean, norm ≤ 5 (reject)"
    filtered = attack | {"aggregation": "mean", "min-update-cosine": 0.0}
    assert row_label(filtered, 100) == "20 % sign-flip, mean, cosine ≥ 0"
    assert row_label({"min-update-cosine": 0.0}, 100) == "no attack, mean, cosine ≥ 0"
    assert row_label({"min-update-cosine": -1.0}, 100) == "clean"  # -1: no filter
    per_tensor = filtered | {"update-cosine-scope": "tensor"}
    assert row_label(per_tensor, 100) == "20 % sign-flip, mean, cosine ≥ 0 (per tensor)"
    # --last 2: each run's accuracy is the mean of its last two rounds (0.5 and its final).
    steadier = table(groups, 100, last=2).splitlines()
    assert steadier[2].split(" | ")[1].startswith("60.5 ± ")
    assert steadier[3].split(" | ")[1] == "55.0 (-5.0)"


@pytest.mark.parametrize(
    ("folder", "last"),
    [("cpu-fmnist-attacks", 1), ("cpu-fmnist-attacks-pt", 1), ("cpu-fmnist-attacks-pt", 3)],
)
def test_the_robustness_docs_show_the_attack_tables_of_the_committed_runs(
    folder: str, last: int
) -> None:
    """docs/robustness.md holds what ``attack_table`` prints for each committed attack folder,
    so the docs cannot drift from the runs (regenerate with the commands the docs give)."""
    from flora_tools.attack_table import table

    groups, meta = load_groups(ROOT / "benchmarks" / folder)
    doc = (ROOT / "docs" / "robustness.md").read_text()
    assert table(groups, int(meta["supernodes"]), last) in doc
