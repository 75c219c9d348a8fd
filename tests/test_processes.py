"""The process helpers the deployment tools rely on, on real child processes (no Flower)."""

from __future__ import annotations

import signal
import subprocess
import sys

from flora_tools.deployment import processes


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_wait_or_kill_returns_the_exit_code_of_a_process_that_ends_in_time() -> None:
    assert processes.wait_or_kill(_python("raise SystemExit(3)"), 30.0) == 3


def test_wait_or_kill_kills_and_reaps_a_process_that_does_not_end() -> None:
    proc = _python("import time; time.sleep(60)")
    assert processes.wait_or_kill(proc, 0.5) is None
    assert proc.returncode == -signal.SIGKILL  # reaped: no zombie is left for the leftover check


def test_wait_or_kill_terminates_first_when_asked() -> None:
    proc = _python("import time; time.sleep(60)")
    assert processes.wait_or_kill(proc, 30.0, first=signal.SIGTERM) == -signal.SIGTERM


def test_wait_or_kill_kills_a_process_that_ignores_sigterm() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert processes.wait_or_kill(proc, 0.5, first=signal.SIGTERM) is None
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
