"""Deploy flora on real processes on this machine: one SuperLink, N SuperNodes, one run.

What ``make deploy`` runs. Unlike ``make run`` (a simulation inside one SuperLink), every
participant here is its own ``flower-superlink`` / ``flower-supernode`` process talking over
loopback exactly as they would across machines:

1. a throw-away CA and server certificate (openssl) in ``<workdir>/certs`` unless ``--insecure``;
2. ``flower-superlink`` on a free port (Fleet, Control and Runtime APIs share it in flwr 1.41),
   TLS on; with ``--auth`` SuperNode authentication is on, each SuperNode's key is registered
   with ``flwr supernode register``, and an unregistered SuperNode is shown being refused;
3. N ``flower-supernode`` processes, SuperNode i with ``partition-id=i num-partitions=N``, each
   on its own free Runtime API port, verifying the SuperLink with ``--root-certificates``;
4. ``flwr run . flora-deploy --stream`` (the connection is written to ``<workdir>/homes/cli``);
5. waits for ``flwr list`` to report the run ``finished:*`` and exits 0 only on
   ``finished:completed``;
6. stops every process it started, with all their children, also on Ctrl-C, SIGTERM or
   failure, and checks that none is left.

Usage: python -m flora_tools.deploy [--supernodes N] [--run-config "k=v ..."] [--insecure] [--auth]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType

from flora_tools.deployment.deployment import Deployment, DeploymentError
from flora_tools.deployment.flwr_cli import FlwrCliError
from flora_tools.deployment.processes import wait_or_kill, wait_until
from flora_tools.preflight import require_valid_run_config

ROOT = Path(__file__).resolve().parent.parent
# All N SuperNodes train every round; the rest are the app's defaults (pyproject.toml).
DEFAULT_RUN_CONFIG = "strategy='flocora' num-server-rounds=3 fraction-train=1.0"


def say(text: str) -> None:
    print(f"[deploy] {text}", flush=True)


class StopSignalError(Exception):
    """SIGINT or SIGTERM arrived: stop the run and everything started, then exit."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise StopSignalError(signal.Signals(signum).name)


def show_unregistered_refused(dep: Deployment, num_partitions: int) -> None:
    """Start a SuperNode whose key was never registered and check the SuperLink refuses it."""
    key = dep.node_key("unregistered")
    node = dep.start_supernode(0, num_partitions, key=key, name="unregistered", max_retries=1)
    if not wait_until(lambda: not node.process.alive(), timeout=60.0):
        raise DeploymentError("an unregistered SuperNode was not refused within 60 s")
    code = node.process.popen.returncode
    refused = "Failed to activate SuperNode" in node.log_text()
    if code == 0 or not refused:
        raise DeploymentError(f"unregistered SuperNode exited {code}:\n{node.process.log_tail()}")
    flower_code = re.search(r"Exit Code: (\d+)", node.log_text())
    say(
        f"unregistered SuperNode refused as expected: exit status {code}, Flower exit code "
        f"{flower_code.group(1) if flower_code else '?'} 'Failed to activate SuperNode'"
    )
    say(f"  (SuperLink log: 'No SuperNode found with the given public key'); log {node.log}")
    dep.supernodes.remove(node)


def deploy(args: argparse.Namespace) -> int:
    """Start everything, run once, report; the caller's ``finally`` cleans up."""
    workdir = args.workdir or ROOT / ".flwr" / "deploy" / f"{datetime.now():%Y%m%d-%H%M%S}"
    dep = Deployment(
        workdir,
        args.app,
        secure=not args.insecure,
        auth=args.auth,
        output_root=args.output_root,
        node_threads=max(1, (os.cpu_count() or 1) // args.supernodes),
        echo=say,
    )
    args.deployment = dep
    say(f"workdir {dep.workdir} (certificates, keys, logs, one FLWR_HOME per process)")
    if "OMP_NUM_THREADS" not in os.environ:
        say(f"{dep.node_threads} torch thread(s) per SuperNode (OMP_NUM_THREADS overrides)")
    dep.start_superlink()
    n = args.supernodes
    keys = [dep.node_key(f"supernode-{i}") for i in range(n)] if args.auth else [None] * n
    if args.auth:
        for i, key in enumerate(keys):
            dep.register(key, f"supernode-{i}")  # type: ignore[arg-type]
        show_unregistered_refused(dep, n)
    for i in range(n):
        dep.start_supernode(i, n, key=keys[i])
    dep.wait_for_nodes(n)

    flwr = dep.submit([DEFAULT_RUN_CONFIG, args.run_config])
    args.flwr_run = flwr
    deadline = time.monotonic() + args.timeout
    while flwr.poll() is None:
        if time.monotonic() > deadline:
            say(f"run did not finish within {args.timeout:.0f} s")
            return 1
        if dep.superlink is not None and not dep.superlink.alive():
            say(f"SuperLink exited:\n{dep.superlink.log_tail()}")
            return 1
        time.sleep(0.5)
    status, details, run_id = dep.final_status()
    say(f"run {run_id} status: {status}")
    for node in dep.supernodes:
        replies = node.count("Sending: train message")
        say(f"{node.name}: {replies} train replies sent, log {node.log}")
    if status != "finished:completed":
        say(f"run did not complete: {details}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument(
        "--run-config",
        default="",
        help=f'overrides on top of "{DEFAULT_RUN_CONFIG}", e.g. "strategy=\'flasc\'"',
    )
    parser.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (TLS)")
    parser.add_argument("--app", type=Path, default=ROOT)
    parser.add_argument("--workdir", type=Path, default=None, help="default .flwr/deploy/<time>")
    parser.add_argument(
        "--output-root", type=Path, default=ROOT, help="FLORA_OUTPUT_ROOT of the ServerApp"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the run")
    args = parser.parse_args(argv)
    if args.supernodes < 2:
        # Flower's strategies (FedAvg's min_available_nodes=2) wait for two connected nodes.
        parser.error("--supernodes must be >= 2: the strategies wait for 2 connected SuperNodes")
    require_valid_run_config(DEFAULT_RUN_CONFIG, args.run_config, app=args.app)
    args.deployment, args.flwr_run = None, None

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        code = deploy(args)
    except StopSignalError as exc:
        say(f"interrupted ({exc}): stopping everything")
        code = 130
    except (DeploymentError, FlwrCliError, RuntimeError) as exc:
        say(f"failed: {exc}")
        code = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        code = cleanup(args, code)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def cleanup(args: argparse.Namespace, code: int) -> int:
    """Stop ``flwr run`` and every started process; a leftover process fails the deploy."""
    flwr: subprocess.Popen | None = args.flwr_run
    if flwr is not None:
        wait_or_kill(flwr, 10.0, first=signal.SIGTERM)
    dep: Deployment | None = args.deployment
    if dep is None:
        return code
    swept = dep.close()
    for pid, cmd in swept:
        say(f"had to kill leftover pid {pid}: {cmd}")
    left = dep.leftovers()
    say(f"stopped {len(dep.started)} started processes and their children; leftovers: {len(left)}")
    say(f"logs in {dep.workdir / 'logs'}")
    return code if not left else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
