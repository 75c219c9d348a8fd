"""Start long-running processes with a log file each, and stop them with all they spawned.

Flower's processes start helpers detached into their own sessions (``flower-superlink`` and
``flower-supernode`` launch ``flower-superexec``, which launches ``flwr-serverapp`` /
``flwr-clientapp``), so signalling a process group is not enough: the whole process *tree* is
collected (through ``psutil``) before anything is signalled, since children re-parent to init
the moment their parent dies. Every process is started in a new session, so a Ctrl-C in the
terminal reaches only the launcher, which then stops everything itself, in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS's choice); never a fixed default."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until every port is chosen."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Managed:
    """One started process: its name, argv, log file and ``Popen`` handle."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    seen: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and its live descendants; remembers every PID it has seen."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        self.seen.update(p.pid for p in procs)
        return procs

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start(name: str, argv: list[str], log: Path, env: Mapping[str, str], cwd: Path) -> Managed:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    managed = Managed(name=name, argv=argv, log=log, popen=popen)
    managed.tree()
    return managed


def signal_tree(procs: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to every process; a stopped process also gets SIGCONT so it can act."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
            if sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)


def stop_trees(managed: list[Managed], grace: float = 10.0) -> list[int]:
    """SIGTERM the processes and all their descendants at once, SIGKILL what is left after
    ``grace`` seconds; returns the PIDs that had to be killed. Reaps every ``Popen``."""
    procs = {p.pid: p for m in managed for p in m.tree()}
    signal_tree(procs.values(), signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    # Descendants started while we waited (a SuperExec launching an app) are caught too.
    late = {p.pid: p for m in managed for p in m.tree()}
    alive = list({**{p.pid: p for p in alive}, **late}.values())
    signal_tree(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5.0)
    for m in managed:
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.popen.wait(timeout=5.0)
    return [p.pid for p in alive]


def kill_tree(managed: Managed) -> None:
    """SIGKILL the process and every descendant at once: a machine that dies mid-round."""
    procs = managed.tree()
    signal_tree(procs, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        managed.popen.wait(timeout=5.0)


def matches(argv: list[str], ports: Iterable[int], paths: Iterable[str]) -> bool:
    """Whether a command line belongs to us: one of our ports as ``host:port`` or as the
    value of ``--port``, or an argument under one of our folders."""
    port_strs = {str(p) for p in ports}
    for i, arg in enumerate(argv):
        if arg.rpartition(":")[2] in port_strs and ":" in arg:
            return True
        if arg == "--port" and i + 1 < len(argv) and argv[i + 1] in port_strs:
            return True
        if arg.startswith("--port=") and arg.split("=", 1)[1] in port_strs:
            return True
        if any(arg.startswith(path) for path in paths):
            return True
    return False


def leftovers(
    pids: Iterable[int], ports: Iterable[int], paths: Iterable[str]
) -> list[tuple[int, str]]:
    """Live Flower processes (``flower-*`` / ``flwr-*`` command lines) that are ours: a PID we
    started or saw in our trees, or a command line naming one of our ports or folders."""
    known, ports, paths = set(pids), list(ports), [str(p) for p in paths]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        argv = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["pid"] == os.getpid():
            continue
        flower = any(("flower-" in a or "flwr-" in a or Path(a).name == "flwr") for a in argv[:3])
        if flower and (proc.info["pid"] in known or matches(argv, ports, paths)):
            found.append((proc.info["pid"], " ".join(argv)[:200]))
    return found


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL the given PIDs (the last resort of a cleanup), ignoring those already gone."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    signal_tree(procs, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5.0)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_or_kill(
    popen: subprocess.Popen, timeout: float, *, first: signal.Signals | None = None
) -> int | None:
    """Give a process ``timeout`` seconds to exit (after the signal ``first``, if given: SIGTERM,
    or SIGINT for a launcher that cleans up on Ctrl-C), then SIGKILL and reap it; its exit
    code, or None when it had to be killed.

    Every caller of ``flwr run`` needs exactly this, and a forgotten ``wait()`` after ``kill()``
    leaves a zombie that the leftover check then reports."""
    if first is not None and popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(first)
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        return None
