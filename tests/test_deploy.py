"""End-to-end: a real ``flower-superlink`` and real ``flower-supernode`` processes over TLS.

Unlike ``test_e2e.py`` (one simulation SuperLink), every participant here is its own process
talking HTTPS on loopback, started on free ports with a throw-away CA, exactly what
``make deploy`` does (those tests are marked e2e). Each checks that nothing it started outlives
it. The last test covers the per-SuperNode ``data-path`` node-config key (no processes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flora_app.results import ROUNDS_FILE, read_rounds
from flora_tools.deployment import processes
from flora_tools.deployment.deployment import Deployment
from tests.helpers import untimed_rounds

ROOT = Path(__file__).resolve().parent.parent

TINY = (
    "model='cnn' model-width=16 lora-r=4 lora-alpha=8.0 local-epochs=1 fraction-train=1.0 "
    "strategy='flocora'"
)
TRAIN_SENT = "Sending: train message"
TRAIN_RECEIVED = "Receiving: train message"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A TLS deployment under ``tmp_path``, closed and checked for leftovers whatever happens."""
    dep = Deployment(
        tmp_path / "deploy", ROOT, secure=True, output_root=tmp_path, node_threads=1, echo=print
    )
    try:
        yield dep
    finally:
        swept = dep.close()
        left = dep.leftovers()
        assert not swept, f"processes survived a SIGTERM/SIGKILL of their tree: {swept}"
        assert not left, f"processes left behind: {left}"


def _wait_for_run(flwr: subprocess.Popen, timeout: float) -> None:
    assert processes.wait_or_kill(flwr, timeout) is not None, f"flwr run not done in {timeout} s"


@pytest.mark.e2e
@pytest.mark.deployment
def test_make_deploy_two_supernodes_over_tls(tmp_path: Path) -> None:
    """``flora_tools/deploy.py`` (what ``make deploy`` runs): 2 SuperNodes, 2 rounds, TLS."""
    workdir = tmp_path / "deploy"
    cmd = [
        sys.executable,
        "-m",
        "flora_tools.deploy",
        "--supernodes",
        "2",
        "--workdir",
        str(workdir),
        "--output-root",
        str(tmp_path),
        "--timeout",
        "300",
        "--run-config",
        f"{TINY} num-server-rounds=2 output-dir='{tmp_path / 'out'}' run-name='deploy'",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    log = proc.stdout + proc.stderr
    ports = {int(p) for p in re.findall(r"(?:127\.0\.0\.1:|runtime port )(\d+)", log)}
    left = processes.leftovers([], ports, [str(workdir)])
    if left:
        processes.kill_pids(pid for pid, _ in left)
    assert proc.returncode == 0, log[-5000:]
    assert not left, f"deploy.py left processes behind: {left}"
    assert "status: finished:completed" in log
    assert re.search(r"SuperLink pid \d+ on 127\.0\.0\.1:\d+ \(TLS\)", log), log[:2000]
    assert "leftovers: 0" in log
    # Every SuperNode trained in every round: the server saw 2 clients and 2 good replies ...
    rounds = read_rounds(tmp_path / "out" / "deploy")
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["clients"] == 2 and r["failed_replies"] == 0 for r in rounds), rounds
    # ... and each SuperNode's own log shows it sending one train reply per round.
    for i in range(2):
        node_log = (workdir / "logs" / f"supernode-{i}.log").read_text()
        assert node_log.count(TRAIN_SENT) == 2, node_log[-2000:]
        assert f"supernode-{i} pid" in log and f"partition {i}/2" in log


@pytest.mark.e2e
@pytest.mark.deployment
def test_a_supernode_that_dies_mid_round_is_replaced_by_one_that_joins_late(
    deployment: Deployment, tmp_path: Path
) -> None:
    """SIGKILL one of 3 SuperNodes (and its ClientApp) after it received round 1's training
    message, and start a new SuperNode for its partition: the SuperLink marks the dead one
    offline once its heartbeats stop (Flower: within 2 x 30 s), answers its message with a
    "Node Unavailable" error, and round 1 aggregates the 2 good replies. Flower samples the
    connected nodes anew each round, so round 2 trains on the 2 survivors and the newcomer and
    never again on the dead node. (One deployment for both events: each costs a minute of
    Flower's start-up and heartbeat waits. Round 1 waits for the dead node's heartbeats to
    expire, far longer than a SuperNode takes to come online, so round 2 reliably sees it.)"""
    dep = deployment
    dep.start_superlink()
    nodes = [dep.start_supernode(i, 3) for i in range(3)]
    dep.wait_for_nodes(3)
    run_config = f"{TINY} num-server-rounds=2 output-dir='{tmp_path / 'out'}' run-name='kill'"
    flwr = dep.submit([run_config], log=tmp_path / "flwr-run.log")
    victim, survivors = nodes[2], nodes[:2]
    try:
        assert processes.wait_until(lambda: victim.count(TRAIN_RECEIVED) >= 1, timeout=120)
        assert victim.count(TRAIN_SENT) == 0, "too late: the victim already replied"
        killed_at = time.monotonic()
        dep.kill_supernode(victim)
        late = dep.start_supernode(2, 3, name="supernode-late")
        _wait_for_run(flwr, timeout=300)
    finally:
        processes.wait_or_kill(flwr, 0.0)
    print(f"run finished {time.monotonic() - killed_at:.1f} s after the kill")
    status, details, _ = dep.final_status()
    assert status == "finished:completed", (details, (tmp_path / "flwr-run.log").read_text())
    rounds = read_rounds(tmp_path / "out" / "kill")
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["clients"] == 3 and rounds[0]["failed_replies"] == 1, rounds[0]
    assert rounds[1]["clients"] == 3 and rounds[1]["failed_replies"] == 0, rounds[1]
    assert all(node.count(TRAIN_SENT) == 2 for node in survivors)
    assert late.count(TRAIN_SENT) == 1
    assert victim.count(TRAIN_SENT) == 0
    assert "Node Unavailable" in (tmp_path / "flwr-run.log").read_text()


@pytest.mark.e2e
@pytest.mark.deployment
def test_a_superlink_killed_mid_round_resumes_from_its_checkpoint(
    deployment: Deployment, tmp_path: Path
) -> None:
    """``kill -9`` the SuperLink (and its ServerApp) while round 2 trains, start it again on
    the same ``--database``: the SuperNodes reconnect by themselves and one documented command,
    ``flwr run`` with ``resume-from=<run folder>``, finishes the run. Its ``rounds.jsonl``
    equals that of a run nobody interrupted (same deployment, same config), timing aside."""
    dep = deployment
    dep.start_superlink(database=tmp_path / "superlink.db")
    nodes = [dep.start_supernode(i, 2) for i in range(2)]
    dep.wait_for_nodes(2)
    base = f"{TINY} num-server-rounds=2 output-dir='{tmp_path / 'out'}' seed=5"

    whole = dep.submit([f"{base} run-name='whole'"], log=tmp_path / "whole.log")
    _wait_for_run(whole, timeout=300)
    assert dep.final_status()[0] == "finished:completed", (tmp_path / "whole.log").read_text()
    sent = [n.count(TRAIN_SENT) for n in nodes]

    cut_dir = tmp_path / "out" / "cut"
    cut = dep.submit([f"{base} run-name='cut'"], log=tmp_path / "cut.log")
    try:
        # Round 1 is checkpointed and round 2's training messages have reached both nodes.
        assert processes.wait_until(
            lambda: (
                (cut_dir / ROUNDS_FILE).exists()
                and len(read_rounds(cut_dir)) == 1
                and all(n.count(TRAIN_RECEIVED) >= s + 2 for n, s in zip(nodes, sent, strict=True))
            ),
            timeout=300,
        ), (tmp_path / "cut.log").read_text()[-3000:]
        dep.kill_superlink()
    finally:
        # The CLI's stream may end with the SuperLink, or keep trying.
        processes.wait_or_kill(cut, 30.0)
    assert len(read_rounds(cut_dir)) == 1  # round 2 never finished

    dep.restart_superlink()
    dep.wait_for_nodes(2, timeout=120)
    resumed = dep.submit(
        [f"{base} run-name='cut' resume-from='{cut_dir}'"], log=tmp_path / "resumed.log"
    )
    _wait_for_run(resumed, timeout=300)
    status, details, _ = dep.final_status()
    assert status == "finished:completed", (details, (tmp_path / "resumed.log").read_text())
    again, reference = untimed_rounds(cut_dir), untimed_rounds(tmp_path / "out" / "whole")
    assert [r["round"] for r in again] == [1, 2]
    assert again == reference


def _cifar_format_copy(folder: Path, train: int, test: int) -> None:
    """A tiny local dataset in CIFAR-10's Hub format (``img``, ``label``; train and test)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    for name, n in (("train", train), ("test", test)):
        images = [
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)
        ]
        split = datasets.Dataset.from_dict(
            {"img": images, "label": [i % 10 for i in range(n)]}, features=features
        )
        split.to_parquet(str(folder / f"{name}.parquet"))


def test_a_supernode_reads_its_own_data_path(tmp_path: Path) -> None:
    """``--node-config "data-path=..."`` overrides the run-wide ``dataset-source`` on that node
    only (here the run-wide one is the Hub, unreachable offline, so only the path can work)."""
    from flora_app.config import FloraConfig
    from flora_app.task import NodeConfigError, load_client_data, node_data_spec

    _cifar_format_copy(tmp_path, train=30, test=10)
    cfg = FloraConfig.from_run_config({"dataset": "cifar10", "val-fraction": 0.2})
    node = {"partition-id": 0, "num-partitions": 1, "data-path": str(tmp_path)}
    assert node_data_spec(cfg, node).source == str(tmp_path)
    assert node_data_spec(cfg, {"partition-id": 0, "num-partitions": 1}).source == ""
    info, train, val = load_client_data(cfg, node)
    assert info.in_channels == 3 and train.x.shape[1:] == (3, 32, 32)
    assert len(train.y) + len(val.y) == 30  # the whole local copy is this node's share
    with pytest.raises(NodeConfigError, match="only for dataset 'cifar10'"):
        node_data_spec(FloraConfig.from_run_config({}), node)
