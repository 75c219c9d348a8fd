"""``make test``: the deployment tests in a lane of their own, beside the rest of the suite.

The tests marked ``deployment`` start real SuperLink and SuperNode processes and spend most of
their ten minutes waiting: Flower polls for messages every 3 s and declares a node gone only
after two missed 30-second heartbeats. Run after the rest, that wait doubled ``make test``;
run beside it, it costs little CPU. pytest-xdist would split the suite across workers by
test, which on two cores would run two simulations at once (they then starve each other's
heartbeats); what is wanted is exactly two lanes, one of them nearly idle.

The lane is a child of this process, not a shell ``&`` job (those ignore Ctrl-C), so Ctrl-C
reaches both pytest sessions and each tears its deployments down. Its output goes to a log
(printed when it ends, so it does not break into the main lane's progress line, prefixed
``[deployment]``); either lane's failure fails the whole.

    python -m flora_tools.test_lanes [pytest arguments for the main lane]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

LANE_MARK = "deployment"
PREFIX = f"[{LANE_MARK}] "


def main(argv: list[str] | None = None) -> int:
    extra = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="flora-test-lane-") as scratch:
        log_path = Path(scratch) / f"{LANE_MARK}.log"
        with log_path.open("w") as log:
            print(f"{LANE_MARK} lane started beside the main lane; its log: {log_path}", flush=True)
            lane = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-v",
                    "--durations=5",
                    "-p",
                    "no:cacheprovider",  # the main lane owns .pytest_cache
                    f"--basetemp={Path(scratch) / 'tmp'}",
                    "-m",
                    LANE_MARK,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            main_lane = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-m", f"not {LANE_MARK}", *extra]
            )
            try:
                codes = [main_lane.wait()]
                if lane.poll() is None:
                    print(f"waiting for the {LANE_MARK} lane", flush=True)
                codes.append(lane.wait())
            except KeyboardInterrupt:  # both got the terminal's Ctrl-C: let them tear down
                codes = [main_lane.wait(), lane.wait()]
        for line in log_path.read_text(errors="replace").splitlines():
            print(PREFIX + line)
    print(f"main lane: exit {codes[0]}; {LANE_MARK} lane: exit {codes[1]}", flush=True)
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
