"""``make test``'s two lanes (``flora_tools/test_lanes.py``) on a throw-away suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each test marks that it started and waits for the other's mark: run one after the other,
# the first would wait in vain and fail.
MEET = (
    "import pathlib, time\n\n"
    "def meet(mine, theirs):\n"
    "    pathlib.Path(mine).touch()\n"
    "    deadline = time.monotonic() + 30\n"
    "    while not pathlib.Path(theirs).exists():\n"
    "        assert time.monotonic() < deadline, 'the other lane never ran at the same time'\n"
    "        time.sleep(0.1)\n"
)
SUITE = {
    "pytest.ini": "[pytest]\nmarkers =\n    deployment: the lane\n",
    "meet.py": MEET,
    "test_main.py": "from meet import meet\n\ndef test_main():\n    meet('main', 'lane')\n",
    "test_lane.py": (
        "import pytest\nfrom meet import meet\n\n"
        "@pytest.mark.deployment\n"
        "def test_slow_lane():\n    meet('lane', 'main')\n    assert {outcome}\n"
    ),
}


def _suite(folder: Path, lane_passes: bool) -> None:
    for name, text in SUITE.items():
        (folder / name).write_text(text.format(outcome=lane_passes))


def _run(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flora_tools.test_lanes", "-q"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)},
    )


def test_both_lanes_run_at_once_and_the_lane_log_follows(tmp_path: Path) -> None:
    _suite(tmp_path, lane_passes=True)
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "1 passed, 1 deselected" in out  # the main lane left the lane's test alone
    assert "[deployment] test_lane.py::test_slow_lane PASSED" in out
    assert out.index("1 passed, 1 deselected") < out.index("[deployment] test_lane.py")
    assert "main lane: exit 0; deployment lane: exit 0" in out


def test_a_failure_in_the_lane_fails_the_whole(tmp_path: Path) -> None:
    _suite(tmp_path, lane_passes=False)
    proc = _run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[deployment] test_lane.py::test_slow_lane FAILED" in proc.stdout
    assert "main lane: exit 0; deployment lane: exit 1" in proc.stdout
