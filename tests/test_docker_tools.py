"""The parts of ``make docker-test`` that need no engine: its checks must catch what they claim.

``make docker-test`` itself (CI, after ``make test``) builds and runs the images for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flora_tools import docker_test, lockfile
from flora_tools.docker_engine import DockerError, network_changes, network_snapshot, run_checked


def test_network_snapshot_is_stable_and_changes_are_named() -> None:
    before = network_snapshot()
    assert {"links", "addresses", "ip_forward"} <= set(before)
    assert "lo" in before["links"]
    assert network_changes(before, network_snapshot()) == []
    bridge = {**before, "links": before["links"] + "docker0 DOWN 02:42:00:00:00:01\n"}
    forward = {**before, "ip_forward": "1" if before["ip_forward"] == "0" else "0"}
    assert network_changes(before, bridge) == ["links: -[] +['docker0 DOWN 02:42:00:00:00:01']"]
    assert [c.split(":")[0] for c in network_changes(before, forward)] == ["ip_forward"]


def test_locked_versions_are_the_lock_file(tmp_path: Path) -> None:
    locked = lockfile.locked_versions()
    assert locked["flwr"] and locked["torch"] and locked["flwr-datasets"]
    assert all(name == lockfile.normalise(name) for name in locked)
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# comment\nTyping_Extensions==4.12.2 \\\n    --hash=sha256:ab\nzope.interface==7.0\n"
    )
    assert lockfile.locked_versions(lock) == {
        "typing-extensions": "4.12.2",
        "zope-interface": "7.0",
    }


def test_a_failing_command_is_one_line_naming_it() -> None:
    with pytest.raises(DockerError, match=r"^the probe failed \(3\): second$"):
        run_checked(["sh", "-c", "echo first; echo second >&2; exit 3"], what="the probe")
    with pytest.raises(DockerError, match=r"^sh -c failed \(1\): only stdout$"):
        run_checked(["sh", "-c", "echo only stdout; exit 1"])


def _run_folder(root: Path, rounds: list[int], summary: bool = True) -> Path:
    run = root / "outputs" / "20261202-000000-flocora"
    run.mkdir(parents=True)
    rows = [json.dumps({"round": r, "accuracy": 0.5}) for r in rounds]
    (run / "rounds.jsonl").write_text("\n".join(rows) + "\n")
    (run / "config.json").write_text(json.dumps({"strategy": "flocora"}))
    if summary:
        (run / "summary.json").write_text("{}")
    return run


def test_check_run_folder_accepts_a_complete_run(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, [1, 2])
    assert docker_test.check_run_folder(tmp_path, 2) == run


@pytest.mark.parametrize(
    ("rounds", "summary", "expected", "message"),
    [
        ([1], True, 2, "has rounds"),
        ([1, 2], False, 2, "no summary.json"),
        ([1, 3], True, 2, "has rounds"),
    ],
)
def test_check_run_folder_rejects_an_incomplete_run(
    tmp_path: Path, rounds: list[int], summary: bool, expected: int, message: str
) -> None:
    _run_folder(tmp_path, rounds, summary)
    with pytest.raises(DockerError, match=message):
        docker_test.check_run_folder(tmp_path, expected)


def test_check_run_folder_wants_exactly_one_run(tmp_path: Path) -> None:
    with pytest.raises(DockerError, match="expected one run folder"):
        docker_test.check_run_folder(tmp_path, 2)
