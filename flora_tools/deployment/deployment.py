"""One SuperLink and N SuperNodes as real, separate processes on loopback, cleaned up as one.

``Deployment`` is what ``flora_tools/deploy.py`` and ``tests/test_deploy.py`` share: it picks free
ports (the SuperLink serves its Fleet, Control and Runtime APIs over one HTTP(S) port in flwr
1.41; every SuperNode has its own Runtime API port for its SuperExec), makes the throw-away
TLS material, keeps one log file and one ``FLWR_HOME`` per process under ``workdir``, and its
``close()`` stops every process it started with all their descendants, then checks that none
is left. Nothing in here knows about flora's strategies: the app is whatever ``flwr run``
is pointed at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flora_tools.deployment import flwr_cli, processes, tls
from flora_tools.deployment.processes import Managed

HOST = "127.0.0.1"
CONNECTION = "flora-deploy"


@dataclass
class SuperNode:
    """A started ``flower-supernode``: its partition, Runtime API port and process."""

    name: str
    partition_id: int
    num_partitions: int
    port: int
    process: Managed
    key: tls.NodeKey | None = None

    @property
    def log(self) -> Path:
        return self.process.log

    def log_text(self) -> str:
        return self.process.log.read_text(errors="replace") if self.process.log.exists() else ""

    def count(self, needle: str) -> int:
        """How often ``needle`` occurs in the SuperNode's log (e.g. sent train replies)."""
        return self.log_text().count(needle)


class DeploymentError(RuntimeError):
    """A process did not start, a node did not connect, or the CLI refused a request."""


class Deployment:
    """SuperLink + SuperNodes under ``workdir``: ``certs/``, ``keys/``, ``logs/``, ``homes/``.

    ``secure`` serves the SuperLink over TLS (a fresh CA; SuperNodes and the CLI verify with
    ``--root-certificates``); ``auth`` additionally requires registered SuperNode keys, which
    Flower only allows with TLS. ``node_threads`` caps the torch/OpenMP threads of every
    SuperNode's ClientApp (``OMP_NUM_THREADS``) unless the caller's environment sets it: N
    SuperNodes sharing one machine's cores otherwise each start a thread per core and
    oversubscribe them (Flower's simulation does the same through Ray's ``num-cpus``).
    """

    def __init__(
        self,
        workdir: Path,
        app: Path,
        *,
        secure: bool = True,
        auth: bool = False,
        output_root: Path | None = None,
        node_threads: int | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        if auth and not secure:
            raise DeploymentError("SuperNode authentication needs TLS (drop INSECURE=1)")
        self.workdir = workdir.resolve()
        self.app = app.resolve()
        self.secure, self.auth = secure, auth
        self.output_root = (output_root or self.app).resolve()
        self.node_threads = node_threads
        self.echo = echo
        self.bin_dir = Path(sys.executable).parent
        self.port = processes.free_port(HOST)
        self.address = f"{HOST}:{self.port}"
        self.ports: list[int] = [self.port]
        self.started: list[Managed] = []
        self.supernodes: list[SuperNode] = []
        self.superlink: Managed | None = None
        self._superlink_argv: list[str] = []
        self.server_tls: tls.ServerTls | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cli_env = self.env("cli")
        self._closed = False

    # -- environment ---------------------------------------------------------------------
    def env(self, who: str) -> dict[str, str]:
        """The environment of process ``who``, with its own ``FLWR_HOME``."""
        return flwr_cli.process_env(self.workdir / "homes" / who, self.output_root, self.bin_dir)

    @property
    def ca_cert(self) -> Path | None:
        return self.server_tls.ca_cert if self.server_tls else None

    def _start(
        self, name: str, argv: list[str], who: str, extra_env: dict[str, str] | None = None
    ) -> Managed:
        exe = self.bin_dir / argv[0]
        argv = [str(exe) if exe.exists() else argv[0], *argv[1:]]
        env = {**self.env(who), **(extra_env or {})}
        log = self.workdir / "logs" / f"{name}.log"
        managed = processes.start(name, argv, log, env, self.workdir)
        self.started.append(managed)
        return managed

    # -- SuperLink -----------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60.0, database: Path | None = None) -> Managed:
        """Start ``flower-superlink`` and wait until its API answers ``/health``.

        ``database``: an SQLite file for the SuperLink's state (runs, nodes, messages), so a
        SuperLink restarted on it (``restart_superlink``) knows what the killed one knew.
        """
        argv = ["flower-superlink", "--host", HOST, "--port", str(self.port)]
        argv.append("--disable-runtime-dependency-installation")
        if database is not None:
            argv += ["--database", str(database)]
        if self.secure:
            self.server_tls = tls.make_server_tls(self.workdir / "certs")
            argv += [
                "--ssl-ca-certfile",
                str(self.server_tls.ca_cert),
                "--ssl-certfile",
                str(self.server_tls.server_cert),
                "--ssl-keyfile",
                str(self.server_tls.server_key),
            ]
        else:
            argv.append("--insecure")
        if self.auth:
            argv.append("--enable-supernode-auth")
        self._superlink_argv = argv
        flwr_cli.write_connection(
            self.workdir / "homes" / "cli", CONNECTION, self.address, self.ca_cert
        )
        return self._launch_superlink(timeout)

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and its ServerApp process at once, as if its machine died."""
        if self.superlink is None:
            raise DeploymentError("no SuperLink to kill")
        processes.kill_tree(self.superlink)
        self.echo(f"killed the SuperLink (pid {self.superlink.pid}) and its ServerApp")

    def restart_superlink(self, timeout: float = 60.0) -> Managed:
        """Start the SuperLink again with the same command line: same address, certificates
        and database. The SuperNodes, which keep retrying, reconnect on their own."""
        if self.superlink is None or self.superlink.alive():
            raise DeploymentError("restart_superlink needs a SuperLink that has stopped")
        return self._launch_superlink(timeout)

    def _launch_superlink(self, timeout: float) -> Managed:
        self.superlink = self._start("superlink", self._superlink_argv, "superlink")
        ready = processes.wait_until(
            lambda: (
                not self.superlink.alive()  # type: ignore[union-attr]
                or flwr_cli.superlink_healthy(self.address, self.ca_cert)
            ),
            timeout,
        )
        if not ready or not self.superlink.alive():
            raise DeploymentError(
                f"SuperLink did not come up on {self.address}:\n{self.superlink.log_tail()}"
            )
        mode = "TLS" if self.secure else "plain HTTP: --insecure"
        self.echo(f"SuperLink pid {self.superlink.pid} on {self.address} ({mode})")
        return self.superlink

    # -- SuperNodes ----------------------------------------------------------------------
    def node_key(self, name: str) -> tls.NodeKey:
        """A fresh authentication key pair for SuperNode ``name``."""
        return tls.make_node_key(self.workdir / "keys", name)

    def register(self, key: tls.NodeKey, name: str) -> int:
        """Register a SuperNode's public key with the SuperLink; returns the node id."""
        node_id = flwr_cli.register_node(self.cli_env, CONNECTION, key.public, name)
        self.echo(f"registered {name} ({key.public.name}) as node {node_id}")
        return node_id

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        key: tls.NodeKey | None = None,
        name: str | None = None,
        node_config: str = "",
        max_retries: int | None = None,
    ) -> SuperNode:
        """Start one ``flower-supernode`` for partition ``partition_id`` of ``num_partitions``."""
        name = name or f"supernode-{partition_id}"
        port = processes.free_port(HOST)
        while port in self.ports:
            port = processes.free_port(HOST)
        self.ports.append(port)
        config = f"partition-id={partition_id} num-partitions={num_partitions} {node_config}"
        argv = ["flower-supernode", "--superlink", self.address, "--host", HOST]
        argv += ["--port", str(port), "--node-config", config.strip()]
        if self.secure:
            argv += ["--root-certificates", str(self.ca_cert)]
        else:
            argv.append("--insecure")
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key.private)]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        threads = {}
        if self.node_threads is not None and "OMP_NUM_THREADS" not in os.environ:
            threads = {k: str(self.node_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        process = self._start(name, argv, name, threads)
        node = SuperNode(name, partition_id, num_partitions, port, process, key)
        self.supernodes.append(node)
        part = f"partition {partition_id}/{num_partitions}"
        self.echo(f"{name} pid {node.process.pid}, runtime port {port}, {part}, log {node.log}")
        return node

    def online_count(self) -> int:
        return len(flwr_cli.online_nodes(self.cli_env, CONNECTION))

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> None:
        """Wait until ``count`` SuperNodes are online, failing early if one exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in self.supernodes if not n.process.alive()]
            if dead:
                raise DeploymentError(f"{dead[0].name} exited:\n{dead[0].process.log_tail()}")
            if self.online_count() >= count:
                self.echo(f"{count} SuperNode(s) online")
                return
            time.sleep(1.0)
        raise DeploymentError(f"fewer than {count} SuperNodes online after {timeout:.0f} s")

    def kill_supernode(self, node: SuperNode) -> None:
        """SIGKILL a SuperNode and everything it spawned, as if its machine died."""
        processes.kill_tree(node.process)
        self.echo(f"killed {node.name} (pid {node.process.pid}) and its ClientApp processes")

    # -- runs ----------------------------------------------------------------------------
    def run_command(self, run_config: Sequence[str], stream: bool = True) -> list[str]:
        """``flwr run <app> <connection> [--stream] --run-config ...`` (later overrides win)."""
        cmd = ["flwr", "run", str(self.app), CONNECTION]
        if stream:
            cmd.append("--stream")
        for line in run_config:
            if line.strip():
                cmd += ["--run-config", line]
        return cmd

    def submit(self, run_config: Sequence[str], log: Path | None = None) -> subprocess.Popen:
        """Start ``flwr run --stream``; its output goes to ``log`` or to our stdout."""
        cmd = self.run_command(run_config)
        self.echo(" ".join(cmd))
        out = log.open("ab") if log is not None else None
        try:
            return subprocess.Popen(cmd, env=self.cli_env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if out is not None:
                out.close()

    def run_status(self) -> tuple[str, str, int | None]:
        """``(status, details, run id)`` of the newest run, as ``flwr list`` reports it."""
        run = flwr_cli.newest_run(self.cli_env, CONNECTION)
        if run is None:
            return "unknown", "no run found", None
        return str(run.get("status")), str(run.get("status-details", "")), run.get("run-id")

    def final_status(self, wait: float = 60.0) -> tuple[str, str, int | None]:
        """Poll until the newest run is ``finished:*``: the stream can end before the
        SuperLink records the outcome."""
        deadline = time.monotonic() + wait
        status = self.run_status()
        while not status[0].startswith("finished") and time.monotonic() < deadline:
            time.sleep(1.0)
            status = self.run_status()
        return status

    # -- cleanup -------------------------------------------------------------------------
    def leftovers(self) -> list[tuple[int, str]]:
        """Our processes that are still alive (PIDs we saw, or our ports / folder)."""
        pids = {pid for m in self.started for pid in m.seen}
        return processes.leftovers(pids, self.ports, [str(self.workdir)])

    def close(self) -> list[tuple[int, str]]:
        """Stop SuperNodes first, then the SuperLink, each with all its descendants; kill
        whatever is left; return what had to be killed in the final sweep (normally none)."""
        if self._closed:
            return []
        self._closed = True
        killed = processes.stop_trees([m for m in self.started if m is not self.superlink])
        if self.superlink is not None:
            killed += processes.stop_trees([self.superlink])
        if killed:
            self.echo(f"{len(killed)} process(es) ignored SIGTERM and were killed: {killed}")
        left = self.leftovers()
        if left:
            processes.kill_pids(pid for pid, _ in left)
        return left

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
