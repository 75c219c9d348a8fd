"""End-to-end: the real ``flwr run`` on a local simulation SuperLink, as ``make run`` does it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flora_app.results import read_rounds
from tests.helpers import untimed_rounds

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _run(
    tmp_path: Path, run_config: str, supernodes: int = 3, expect_ok: bool = True
) -> tuple[Path, str]:
    cmd = [
        sys.executable,
        "-m",
        "flora_tools.run_simulation",
        "--supernodes",
        str(supernodes),
        "--flwr-home",
        str(tmp_path / "flwr-home"),
        "--run-config",
        f"{run_config} output-dir='{tmp_path / 'out'}' run-name='e2e'",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, log[-4000:]
    port = re.search(r"superlink port (\d+)", log).group(1)
    leftovers = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and _cmdline(p).find(f"--port {port}") >= 0
        and "flower-superlink" in _cmdline(p)
    ]
    assert not leftovers, f"SuperLink still running: {leftovers}"
    # Its runs lived in memory: nothing on disk for a later SuperLink to start again.
    assert not list((tmp_path / "flwr-home").glob("local-superlink/state.db*"))
    return tmp_path / "out" / "e2e", log


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_fedlora_two_rounds_on_the_tiny_cnn(tmp_path: Path) -> None:
    run_dir, log = _run(
        tmp_path,
        "strategy='fedlora' model='cnn' model-width=16 lora-r=4 lora-alpha=8.0 "
        "num-server-rounds=2 local-epochs=1 fraction-train=1.0",
    )
    assert "round 2/2 | acc" in log  # one progress line per round
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["clients"] == 3 and r["replies"] == 3 and r["bytes_up"] > 0
        assert r["bn_stats_clients"] >= 1  # the evaluate phase measured the global model
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    for key in (
        "strategy",
        "rounds",
        "final_accuracy",
        "bytes_up_total",
        "bytes_down_total",
        "bytes_up_per_round",
        "bytes_down_per_round",
        "wall_seconds",
    ):
        assert key in summary
    assert summary["rounds"] == 2 and summary["strategy"] == "fedlora"
    payload = 4 * config["exchanged-parameters"]
    per_client = summary["bytes_up_per_client_per_round"]
    assert payload < per_client < payload * 1.2 + 20_000  # measured: payload plus framing
    assert (run_dir / "accuracy_vs_comm.png").stat().st_size > 1000
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (run_dir / "adapter" / "base_model.json").exists()


def test_fedavg_sends_the_whole_model(tmp_path: Path) -> None:
    run_dir, _ = _run(
        tmp_path,
        "strategy='fedavg' model='cnn' model-width=16 num-server-rounds=2 "
        "local-epochs=1 fraction-train=1.0 fraction-evaluate=0.5",
        supernodes=2,
    )
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert config["exchanged-parameters"] == config["model-parameters"]
    assert summary["bytes_up_per_client_per_round"] > 4 * config["model-parameters"]
    assert (run_dir / "adapter" / "model.safetensors").exists()


def test_a_bad_configuration_fails_the_run_before_training(tmp_path: Path) -> None:
    """What only the ServerApp can see (the launcher's check passes it): a resume-from folder
    without a checkpoint. Flower runs, and the ServerApp refuses in one line before round 1."""
    missing = tmp_path / "no-run-here"
    _, log = _run(tmp_path, f"model='cnn' resume-from='{missing}'", supernodes=2, expect_ok=False)
    assert f"run-config 'resume-from' = '{missing}'" in log
    assert "has no checkpoint.safetensors" in log
    assert "run did not complete" in log
    assert "round 1/" not in log


def test_flocora_sends_quantized_updates_and_fewer_bytes(tmp_path: Path) -> None:
    """flocora at 4 bits up and 8 bits down through a real flwr run, against the fp32 sizes."""
    run_dir, log = _run(
        tmp_path,
        "strategy='flocora' quant-bits=4 quant-bits-down=8 model='cnn' model-width=128 "
        "lora-r=16 lora-alpha=256.0 num-server-rounds=2 local-epochs=1 fraction-train=1.0",
        supernodes=2,
    )
    assert "uplink affine:bits=4:gran=channel:meta=fp16 (update)" in log
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = read_rounds(run_dir)
    fp32 = 4 * config["exchanged-parameters"]
    # ~28 KB of fp32 values; 4-bit codes + fp16 scales + fp32 1-D + Flower's envelope ~6 KB
    assert summary["bytes_up_per_client_per_round"] < fp32 / 3
    assert summary["bytes_down_per_client_per_round"] < fp32 / 2
    assert all(r["failed_replies"] == 0 and r["replies"] == 2 for r in rounds)
    assert all(r["client_codec_seconds"] > 0 for r in rounds)


def test_the_same_seed_gives_the_same_run_and_flasc_sends_sparse_updates(tmp_path: Path) -> None:
    """Two real `flwr run`s of one config: which partition trains when no longer follows
    Flower's random node ids, so the runs are identical apart from timing. FLASC (top-k down
    0.25, up 0.1 with 8-bit values, Adam on the server), because its path holds every source of
    randomness fedlora's does (sampling, partitions, LoRA init, shuffling) plus top-k both ways;
    FLoCoRA's is held by test_deploy's resumed-run test. The first run also shows FLASC's
    messages as they travel (one simulation less than a test of its own)."""
    config = (
        "strategy='flasc' density-up=0.1 density-down=0.25 sparse-value-bits=8 model='cnn' "
        "model-width=128 lora-r=16 lora-alpha=256.0 num-server-rounds=3 local-epochs=1 "
        "fraction-train=0.5 fraction-evaluate=0.5 partitioner='dirichlet' seed=3"
    )
    first, log = _run(tmp_path / "a", config, supernodes=4)
    assert "uplink topk:density=0.1:scope=global:values=8 (update)" in log
    run_config = json.loads((first / "config.json").read_text())
    summary = json.loads((first / "summary.json").read_text())
    fp32 = 4 * run_config["exchanged-parameters"]
    assert summary["bytes_up_per_client_per_round"] < fp32 / 5
    assert summary["bytes_down_per_client_per_round"] < fp32 / 2
    a = untimed_rounds(first)
    assert len(a) == 3
    for r in a:
        assert r["failed_replies"] == 0 and r["replies"] == 2
        assert r["up_density"] == pytest.approx(0.1, abs=1e-3)
        assert r["down_density"] == pytest.approx(0.25, abs=1e-3)
        assert 0.0 <= r["downlink_accuracy"] <= 1.0

    second, _ = _run(tmp_path / "b", config, supernodes=4)
    assert a == untimed_rounds(second)


def test_a_missing_dataset_fails_the_run_with_one_line_before_training(tmp_path: Path) -> None:
    missing = tmp_path / "no-fashion-mnist-here"
    _, log = _run(
        tmp_path,
        f"dataset='fashion-mnist' dataset-source='{missing}' model='cnn' num-server-rounds=1",
        supernodes=2,
        expect_ok=False,
    )
    line = next(x for x in log.splitlines() if "flora: dataset 'fashion-mnist'" in x)
    assert "dataset-fashion-mnist" in line and str(missing) in line
    assert "round 1/" not in log  # nothing trained


def test_a_stopped_run_leaves_no_simulation_behind(tmp_path: Path) -> None:
    """``kill`` of the launcher (what stopping ``make run`` sends) mid-training stops the
    SuperLink and everything it started: the SuperExec starts ``flwr-simulation`` and Ray in a
    process group of their own, which an interrupted run once left training."""
    import signal
    import time

    cmd = [
        sys.executable,
        "-m",
        "flora_tools.run_simulation",
        "--supernodes",
        "2",
        "--flwr-home",
        str(tmp_path / "flwr-home"),
        "--run-config",
        f"model='cnn' model-width=16 num-server-rounds=50 output-dir='{tmp_path / 'out'}'",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 300
            while "flora: round 1/50" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1.0)
            tree = [p for p in psutil.process_iter(["cmdline"]) if _ours(p, tmp_path)]
            assert any("flwr-simulation" in " ".join(p.info["cmdline"] or []) for p in tree)
            simulation = [p for p in tree if "flwr-simulation" in " ".join(p.info["cmdline"] or [])]
            started = {p.pid for s in simulation for p in [s, *s.children(recursive=True)]}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "stopping local SuperLink" in log.read_text()
    left = [pid for pid in started if psutil.pid_exists(pid) and _alive(pid)]
    assert not left, f"still running after the launcher stopped: {left}"


def _ours(proc: psutil.Process, tmp_path: Path) -> bool:
    """Whether a process belongs to this test's simulation: its FLWR_HOME, which every
    process Flower starts inherits, is under ``tmp_path``."""
    try:
        return proc.environ().get("FLWR_HOME", "").startswith(str(tmp_path))
    except (psutil.Error, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
