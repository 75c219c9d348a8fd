"""The launchers refuse a bad run-config before they start anything, with the app's one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flora_tools.preflight import RunConfigSyntaxError, parse_run_config, run_config_problem

ROOT = Path(__file__).resolve().parent.parent


def _launch(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_make_run_refuses_a_bad_value_before_flower_starts(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    proc = _launch(
        "flora_tools.run_simulation",
        "--flwr-home",
        str(home),
        "--run-config",
        "quant-bits=9 strategy='flocora'",
    )
    line = _one_line(proc)
    assert line.startswith("flora: run-config 'quant-bits' = 9: expected one of 1, 2")
    assert not home.exists()  # nothing was set up, no SuperLink started
    assert "flwr run" not in proc.stdout


def test_make_deploy_checks_its_overrides_on_top_of_its_own_defaults(tmp_path: Path) -> None:
    proc = _launch(
        "flora_tools.deploy",
        "--workdir",
        str(tmp_path / "work"),
        "--run-config",
        "strategy='flasc' density-up=2.0",
    )
    assert "'density-up' = 2.0" in _one_line(proc)
    assert not (tmp_path / "work").exists()


def test_make_bench_checks_every_run_before_the_first(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = _launch(
        "flora_tools.bench",
        "--preset",
        "cpu-fmnist",
        "--configs",
        "fedlora,flocora-q4",
        "--set",
        "lora-r=0",
        "--out",
        str(out),
    )
    line = _one_line(proc)
    assert line.startswith("flora: fedlora-s0: run-config 'lora-r' = 0")
    assert not out.exists()


def test_a_malformed_string_and_an_unknown_key_are_one_line_too(tmp_path: Path) -> None:
    proc = _launch("flora_tools.run_simulation", "--run-config", "strategy=flocora quant-bits=")
    assert "invalid format" in _one_line(proc)
    with pytest.raises(RunConfigSyntaxError, match="strategy=flocora"):
        parse_run_config("strategy=flocora")  # a string value needs quotes
    assert run_config_problem({"quant-bit": 4}) == (
        "run-config 'quant-bit' is not a flora key: see docs/configuration.md"
    )


def test_another_flower_app_is_left_to_check_its_own_keys(tmp_path: Path) -> None:
    from flora_tools.preflight import is_flora_app, require_valid_run_config

    assert is_flora_app(ROOT)
    other = ROOT / "tests" / "apps" / "strategies_only"
    assert not is_flora_app(other) and not is_flora_app(tmp_path)
    require_valid_run_config("result='x.json' strategy='flasc'", app=other)  # no exit


def test_a_good_run_config_passes_and_the_check_does_not_import_torch() -> None:
    assert run_config_problem(parse_run_config("strategy='flasc' density-up=0.2")) is None
    probe = (
        "import sys, flora_tools.preflight as p; "
        "assert p.run_config_problem({'quant-bits': 9}); "
        "print(sorted(m for m in ('torch', 'torchvision', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
