"""Run the app with ``flwr run`` on a local simulation SuperLink, and clean up after it.

``flwr run`` against a local address starts a detached ``flower-superlink`` that outlives the
run, on fixed default ports other programs may hold. The address is ``:local-in-memory:``, not
``:local:``: the latter keeps its runs in ``FLWR_HOME/local-superlink/state.db``, so a run left
pending by a stopped sweep was started again by the next run's SuperLink, beside that run
(measured: two simulations at once on 2 cores). This wrapper gives it a
project-local ``FLWR_HOME``, free ports (through ``FLWR_LOCAL_*_PORT``), the offline
environment of docs/design.md, streams the log, and afterwards stops the SuperLink it caused to be
started (found by its unique port) with its whole process group, also on Ctrl-C or failure.

Usage: python -m flora_tools.run_simulation [--supernodes N] [--run-config "k=v ..."] [--app DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from flora_tools.deployment.processes import signal_tree
from flora_tools.preflight import require_valid_run_config

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flwr_env(flwr_home: Path, http_port: int, control_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "FLORA_OUTPUT_ROOT": env.get("FLORA_OUTPUT_ROOT", str(ROOT)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def write_flower_config(flwr_home: Path) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local-in-memory:"\n'
    )


def superlink_pids(http_port: int) -> list[int]:
    """PIDs of ``flower-superlink`` processes listening on our port (from their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        joined = b" ".join(argv)
        if b"flower-superlink" in joined and f"--port {http_port}".encode() in joined:
            pids.append(int(proc.name))
    return pids


def stop_process_tree(pid: int, grace: float = 10.0) -> list[int]:
    """SIGTERM ``pid`` and every process it spawned, SIGKILL what is left after ``grace``;
    the PIDs that had to be killed.

    The whole tree, not the process group: the SuperLink's SuperExec starts
    ``flwr-simulation`` (and through it Ray) in a group of its own, which a run that is
    interrupted would otherwise leave running (seen: a stopped ``make run`` left
    flwr-simulation and its Ray actors training)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    signal_tree(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    signal_tree(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5.0)
    return [p.pid for p in alive]


def run_status(env: dict[str, str], app: Path) -> tuple[str, str]:
    """(status, details) of the newest run on the local SuperLink, as ``flwr list`` has them."""
    out = subprocess.run(
        ["flwr", "list", "local", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown", out.stderr.strip()[-300:]
    if not runs:
        return "unknown", "no run found"
    newest = max(runs, key=lambda r: str(r.get("pending-at", "")))
    return str(newest.get("status", "unknown")), str(newest.get("status-details", ""))


def final_status(env: dict[str, str], app: Path, wait: float = 60.0) -> tuple[str, str]:
    """Poll until the newest run has a ``finished:*`` status: the stream can end a moment
    before the SuperLink records the outcome."""
    deadline = time.time() + wait
    status, details = run_status(env, app)
    while not status.startswith("finished") and time.time() < deadline:
        time.sleep(1.0)
        status, details = run_status(env, app)
    return status, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=10)
    parser.add_argument("--run-config", default="", help="e.g. \"strategy='fedavg' lr=0.01\"")
    parser.add_argument("--app", type=Path, default=ROOT)
    parser.add_argument("--flwr-home", type=Path, default=ROOT / ".flwr")
    args = parser.parse_args(argv)
    require_valid_run_config(args.run_config, app=args.app)

    flwr_home = args.flwr_home.resolve()
    write_flower_config(flwr_home)
    http_port, control_port = free_port(), free_port()
    env = flwr_env(flwr_home, http_port, control_port)
    federation = f"num-supernodes={args.supernodes} client-resources-num-cpus=1"
    cmd = ["flwr", "run", str(args.app), "local", "--stream", "--federation-config", federation]
    if args.run_config.strip():
        cmd += ["--run-config", args.run_config]
    print(f"[flora] FLWR_HOME={flwr_home} superlink port {http_port}", flush=True)
    print(f"[flora] {' '.join(cmd)}", flush=True)
    code = 1
    # ``kill <pid>`` (or a stopped ``make run``) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = subprocess.run(cmd, env=env, check=False).returncode
        status, details = final_status(env, args.app)
        print(f"[flora] run status: {status}", flush=True)
        if status != "finished:completed":
            print(f"[flora] run did not complete: {details}", flush=True)
            code = code or 1
    except KeyboardInterrupt:
        print("[flora] interrupted", flush=True)
        code = 130
    finally:
        for pid in superlink_pids(http_port):
            print(f"[flora] stopping local SuperLink (pid {pid}) and what it started", flush=True)
            stop_process_tree(pid)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
