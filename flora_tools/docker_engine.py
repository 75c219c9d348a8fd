"""A private Docker engine for ``make docker-test``, and the host state it must give back.

No Docker engine runs on our machines and no image registry is reachable (docs/design.md).
Debian's ``docker.io`` carries ``dockerd`` (20.10); Compose v2 and buildx are not in bookworm, so
their CLI plugins come from Debian trixie's packages, unpacked into a private ``DOCKER_CONFIG``
without touching the host's apt state. The daemon is ours alone: its own socket, data root,
exec root and pid file, and no bridge, iptables rules or ``ip_forward`` change on the host
(compose's project network is a user bridge that ``compose down`` removes; published ports go
through Docker's userland proxy). :func:`network_snapshot` before and after proves the host's
network was left as found.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from flora_tools.deployment.processes import wait_or_kill, wait_until

# Host command -> the Debian package that provides it.
HOST_PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap", "ip": "iproute2"}
# CLI plugin -> the Debian trixie package that carries it (bookworm has neither).
PLUGIN_PACKAGES = {"docker-compose": "docker-compose", "docker-buildx": "docker-buildx"}
PLUGIN_SUITE = "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class DockerError(RuntimeError):
    """Something ``make docker-test`` needs is missing or failed; the message says what."""


def run_checked(
    argv: Sequence[str | Path], what: str | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured; a non-zero exit raises one :class:`DockerError`
    line naming ``what`` (default: the command and its first argument) and the output's tail."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        what = what or f"{Path(str(argv[0])).name} {argv[1] if len(argv) > 1 else ''}".strip()
        raise DockerError(f"{what} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc


def ensure_host_packages(commands: Mapping[str, str] = HOST_PACKAGES) -> None:
    """Install the Debian packages behind missing ``commands`` (as root), or say which."""
    missing = sorted({pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DockerError(
            f"make docker-test needs Debian's {' '.join(missing)}: run as root, or "
            f"`apt-get install --no-install-recommends {' '.join(missing)}` first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_checked(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def ensure_plugins(config_dir: Path) -> Path:
    """``docker compose`` and ``docker buildx`` as CLI plugins in ``config_dir/cli-plugins``:
    trixie's packages, fetched with a private apt source list and unpacked with ``dpkg-deb``."""
    plugins = config_dir / "cli-plugins"
    if all((plugins / name).is_file() for name in PLUGIN_PACKAGES):
        return config_dir
    with tempfile.TemporaryDirectory(prefix="flora-plugins-") as tmp:
        work = Path(tmp)
        (work / "lists" / "partial").mkdir(parents=True)
        sources = work / "sources.list"
        source = f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {PLUGIN_SUITE} main"
        sources.write_text(source + "\n")
        apt = [
            "apt-get",
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        run_checked([*apt, "update"])
        run_checked([*apt, "download", *PLUGIN_PACKAGES.values()], cwd=work)
        for deb in work.glob("*.deb"):
            run_checked(["dpkg-deb", "-x", deb, work / "root"])
        plugins.mkdir(parents=True, exist_ok=True)
        for name in PLUGIN_PACKAGES:
            found = list((work / "root").rglob(f"cli-plugins/{name}"))
            if not found:
                raise DockerError(f"trixie's {PLUGIN_PACKAGES[name]} package has no {name} plugin")
            shutil.copy2(found[0], plugins / name)
    return config_dir


def network_snapshot() -> dict[str, str]:
    """The host network state a Docker daemon may change: interfaces and their addresses,
    IPv4 forwarding and the iptables rules (without packet counters)."""
    snap = {
        "links": run_checked(["ip", "-br", "link"]).stdout,
        "addresses": run_checked(["ip", "-br", "addr"]).stdout,
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    }
    if shutil.which("iptables-save"):
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        snap["iptables"] = "\n".join(
            re.sub(r"\[\d+:\d+\]", "", line) for line in rules.splitlines()
            if not line.startswith("#")
        )  # fmt: skip
    return snap


def network_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Which parts of :func:`network_snapshot` differ, with the lines that changed."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old = set(before.get(key, "").splitlines())
        new = set(after.get(key, "").splitlines())
        if old != new:
            changes.append(f"{key}: -{sorted(old - new)} +{sorted(new - old)}")
    return changes


class Engine:
    """One private ``dockerd`` under ``root`` (data, exec state, socket, log).

    ``nice`` keeps builds and containers (which inherit the daemon's niceness) from starving
    other work on a 2-core machine.
    """

    def __init__(self, root: Path, config_dir: Path, nice: int = 19) -> None:
        self.root = root.resolve()
        self.config_dir = config_dir.resolve()
        self.nice = nice
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.popen: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of a ``docker`` client that talks to this daemon only."""
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.config_dir),
            "DOCKER_BUILDKIT": "1",
        }

    def start(self, timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise DockerError("make docker-test starts its own dockerd, which needs root")
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            "nice", "-n", str(self.nice), "dockerd",
            "--storage-driver=overlay2",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "-H", f"unix://{self.socket}",
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        ready = wait_until(lambda: self.popen.poll() is not None or self._answers(), timeout)
        if self.popen.poll() is not None or not ready:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise DockerError(f"dockerd did not start within {timeout:.0f} s:\n{tail}")

    def _answers(self) -> bool:
        probe = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        return probe.returncode == 0

    def docker(
        self, *args: str | Path, timeout: float | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """``docker <args>`` against this daemon; raises :class:`DockerError` on failure."""
        return run_checked(["docker", *args], env=self.env, timeout=timeout, **kwargs)

    def has_image(self, tag: str) -> bool:
        probe = subprocess.run(
            ["docker", "image", "inspect", tag], env=self.env, capture_output=True, text=True
        )
        return probe.returncode == 0

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Stop the daemon (SIGTERM: it stops its containers first), then kill whatever of its
        (containerd, shims, proxies, container processes) is left; return those PIDs."""
        if self.popen is None:
            return []
        wait_or_kill(self.popen, timeout, first=signal.SIGTERM)
        self.popen = None
        # containerd and its shims detach from dockerd; they name our exec root in their argv.
        exec_root = str(self.root / "exec")
        ours = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.info["pid"] == os.getpid():
                continue
            if any(exec_root in arg for arg in proc.info["cmdline"] or []):
                ours.append(proc)
                with contextlib.suppress(psutil.Error):
                    ours += proc.children(recursive=True)
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(ours, timeout=10.0)
        return [proc.pid for proc in ours]

    def remove_data(self) -> None:
        """Delete the daemon's images, containers and volumes (several GB)."""
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.root / "exec", ignore_errors=True)
