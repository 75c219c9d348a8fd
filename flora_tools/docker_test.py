"""``make docker-test``: build flora's images and run them for real, then leave no trace.

1. Host tools: Debian's ``docker.io`` and ``debootstrap`` (installed when missing, as root), the
   Compose v2 and buildx CLI plugins from trixie in a private ``DOCKER_CONFIG``
   (:mod:`flora_tools.docker_engine`); a private ``dockerd`` that changes nothing in the host's
   network (checked before and after).
2. Images, with no registry and no network inside any build: a Debian bookworm root made by
   ``debootstrap`` and ``docker import``-ed; the lock's wheels downloaded on the host into
   ``docker/wheels``; stand-ins for Flower's three base images (``docker/local-bases.Dockerfile``);
   then flora's own images from ``docker/Dockerfile`` with those stand-ins as its base-image
   build arguments, tagged as ``docker/compose.yml`` names them.
3. ``docker compose up`` of compose.yml + with-tls.yml (SuperLink, 3 SuperNodes, the ServerApp
   runtime and 3 ClientApp runtimes), TLS with a throw-away CA; ``flwr run`` from the host; the
   run must finish ``completed``; its run folder (copied out of the outputs volume) must hold
   every round, and the app image must hold exactly the lock's versions.
4. ``docker compose down -v``, the daemon stopped by its PID, its images and volumes deleted
   (``--keep-images`` keeps them for the next run), and the host's network compared.

Usage: python -m flora_tools.docker_test [--run-config "k=v ..."] [--keep-images] [--wheels-only]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from flora_app.results import ROUNDS_FILE, read_rounds
from flora_tools import lockfile
from flora_tools.deployment import flwr_cli
from flora_tools.deployment.processes import free_port, wait_or_kill, wait_until
from flora_tools.docker_engine import (
    DEBIAN_MIRROR,
    DockerError,
    Engine,
    ensure_host_packages,
    ensure_plugins,
    network_changes,
    network_snapshot,
    run_checked,
)
from flora_tools.preflight import require_valid_run_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
WHEELS = DOCKER / "wheels"
LOCK = lockfile.LOCK
COMPOSE_FILES = ("compose.yml", "with-tls.yml")
PROJECT = "flora-docker-test"
CONNECTION = "flora-docker"
LOCAL = "flora-local"  # repository prefix of the stand-in images
DEBIAN_IMAGE = f"{LOCAL}/debian:bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Short, but every part of a round: 2 rounds of FLoCoRA (8-bit uplink) on the 3 SuperNodes'
# digits partitions, with a narrow ResNet-8 and one local epoch so CI's 2 cores finish quickly.
DEFAULT_RUN_CONFIG = (
    "strategy='flocora' num-server-rounds=2 fraction-train=1.0 model-width=16 local-epochs=1"
)


def say(text: str) -> None:
    print(f"[docker-test] {text}", flush=True)


def download_wheels(dest: Path = WHEELS) -> None:
    """Every pin of the lock as a file in ``dest``: what the image builds install from."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
           "-q", "-r", LOCK, "-d", dest]  # fmt: skip
    run_checked(cmd, what="pip download of the lock")


def import_debian(engine: Engine, workdir: Path) -> None:
    """A minimal Debian bookworm with Python, from ``debootstrap``, as ``DEBIAN_IMAGE``."""
    if engine.has_image(DEBIAN_IMAGE):
        return
    rootfs = workdir / "rootfs"
    say(f"debootstrap bookworm into {rootfs} (about a minute)")
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
           "bookworm", str(rootfs), DEBIAN_MIRROR]  # fmt: skip
    run_checked(cmd, what="debootstrap")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    engine.docker("import", "-", DEBIAN_IMAGE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs)


def build(engine: Engine, dockerfile: str, target: str, tag: str, **build_args: str) -> float:
    """``docker build`` one target from the repository root, offline; returns seconds."""
    start = time.monotonic()
    args: list[str] = ["build", "-q", "--network", "none", "-f", f"docker/{dockerfile}"]
    args += ["--target", target, "-t", tag]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    engine.docker(*args, ".", cwd=ROOT)
    return time.monotonic() - start


def compose(env: dict[str, str], *args: str, timeout: float = 600.0) -> str:
    """``docker compose`` on the test's project and compose files; its stdout."""
    files = [a for f in COMPOSE_FILES for a in ("-f", str(DOCKER / f))]
    cmd = ["docker", "compose", "-p", PROJECT, *files, *args]
    return run_checked(cmd, what=f"docker compose {args[0]}", env=env, timeout=timeout).stdout


def build_images(engine: Engine, services: dict[str, dict]) -> None:
    """The stand-in bases, then every image the compose services name: those with a ``build``
    from docker/Dockerfile on the stand-ins, the others (Flower's SuperNode) as stand-in tags."""
    flwr = version("flwr")
    bases = {}
    for target in ("superlink", "supernode", "superexec"):
        bases[target] = f"{LOCAL}/{target}:{flwr}"
        seconds = build(engine, "local-bases.Dockerfile", target, bases[target],
                        DEBIAN_IMAGE=DEBIAN_IMAGE)  # fmt: skip
        say(f"built stand-in {bases[target]} in {seconds:.0f} s")
    done: set[str] = set()
    for name, svc in services.items():
        image = svc["image"]
        if image in done:
            continue
        done.add(image)
        if "build" not in svc:
            role = "supernode" if "supernode" in image else "superlink"
            engine.docker("tag", bases[role], image)
            say(f"{name}: {image} is the stand-in {bases[role]}")
            continue
        spec = svc["build"]
        seconds = build(
            engine, Path(spec["dockerfile"]).name, spec["target"], image,
            SUPERLINK_IMAGE=bases["superlink"], SUPEREXEC_IMAGE=bases["superexec"],
            PIP_OPTIONS="--no-index",
        )  # fmt: skip
        say(f"built {image} (docker/Dockerfile, target {spec['target']}) in {seconds:.0f} s")


def check_image_is_the_lock(engine: Engine, image: str) -> None:
    """Every Python package in ``image`` at the lock's version (flora itself aside)."""
    listed = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python", image,
                           "-m", "pip", "list", "--format", "json").stdout  # fmt: skip
    locked = lockfile.locked_versions()
    wrong = []
    for pkg in json.loads(listed):
        name = lockfile.normalise(pkg["name"])
        if name not in ("flora", "pip") and locked.get(name) != pkg["version"]:
            wrong.append(f"{name} {pkg['version']} (lock: {locked.get(name, 'absent')})")
    if wrong:
        raise DockerError(f"{image} differs from requirements.lock: {', '.join(wrong)}")
    say(f"{image}: all {len(json.loads(listed))} packages at the lock's versions")


def check_run_folder(outputs: Path, rounds: int) -> Path:
    """The ServerApp's run folder: every round in rounds.jsonl, a summary, flocora's config."""
    runs = sorted(p.parent for p in outputs.rglob(ROUNDS_FILE))
    if len(runs) != 1:
        raise DockerError(f"expected one run folder in the outputs volume, found {runs}")
    run = runs[0]
    rows = read_rounds(run)
    if [r["round"] for r in rows] != list(range(1, rounds + 1)):
        raise DockerError(f"{run}/rounds.jsonl has rounds {[r['round'] for r in rows]}")
    if not (run / "summary.json").is_file():
        raise DockerError(f"{run} has no summary.json")
    config = json.loads((run / "config.json").read_text())
    say(f"run folder {run.name}: {len(rows)} rounds, strategy {config.get('strategy')}, "
        f"final accuracy {rows[-1].get('accuracy')}")  # fmt: skip
    return run


def docker_test(args: argparse.Namespace, engine: Engine) -> int:
    workdir: Path = args.workdir
    say(f"workdir {workdir}")
    download_wheels()
    say(f"wheelhouse {WHEELS}: {len(list(WHEELS.glob('*.whl')))} wheels from the lock")
    engine.start()
    say(f"dockerd {engine.docker('version', '--format', '{{.Server.Version}}').stdout.strip()} "
        f"on {engine.socket}, data in {engine.root / 'data'}")  # fmt: skip
    import_debian(engine, workdir)

    port = free_port()
    certs = workdir / "certificates"
    run_checked([DOCKER / "gen-certs.sh", certs], what="docker/gen-certs.sh")
    env = {**engine.env, "SUPERLINK_PORT": str(port), "FLORA_CERTIFICATES": str(certs)}
    services = json.loads(compose(env, "config", "--format", "json"))["services"]
    build_images(engine, services)
    check_image_is_the_lock(engine, services["superexec-serverapp"]["image"])

    args.compose_env = env
    compose(env, "up", "-d", "--no-build")
    say(f"compose up: {len(services)} containers, SuperLink on 127.0.0.1:{port} over TLS")
    cli_env = flwr_cli.process_env(workdir / "home", workdir, Path(sys.executable).parent)
    flwr_cli.write_connection(workdir / "home", CONNECTION, f"127.0.0.1:{port}", certs / "ca.crt")
    if not wait_until(lambda: flwr_cli.superlink_healthy(f"127.0.0.1:{port}", certs / "ca.crt"),
                      timeout=120):  # fmt: skip
        raise DockerError("the SuperLink container did not answer /health within 120 s")
    nodes = sum(1 for name in services if name.startswith("supernode-"))
    if not wait_until(lambda: len(flwr_cli.online_nodes(cli_env, CONNECTION)) >= nodes, 180):
        raise DockerError(f"{nodes} SuperNodes did not come online within 180 s")
    say(f"{nodes} SuperNodes online")

    run_config = [DEFAULT_RUN_CONFIG, args.run_config]
    rounds = int(re.findall(r"num-server-rounds=(\d+)", " ".join(run_config))[-1])
    cmd = ["flwr", "run", str(ROOT), CONNECTION, "--stream"]
    cmd += [a for line in run_config if line.strip() for a in ("--run-config", line)]
    say(" ".join(cmd))
    log = workdir / "flwr-run.log"
    start = time.monotonic()
    with log.open("wb") as out:
        flwr = subprocess.Popen(cmd, env=cli_env, stdout=out, stderr=subprocess.STDOUT)
    if wait_or_kill(flwr, args.timeout) is None:
        raise DockerError(f"flwr run did not end within {args.timeout:.0f} s (log {log})")
    status = "unknown"
    deadline = time.monotonic() + 60
    while not status.startswith("finished") and time.monotonic() < deadline:
        run = flwr_cli.newest_run(cli_env, CONNECTION) or {}
        status = str(run.get("status"))
        time.sleep(1.0)
    say(f"run {run.get('run-id')}: {status} in {time.monotonic() - start:.0f} s")
    if status != "finished:completed":
        raise DockerError(f"the run ended {status}: {run.get('status-details')} (log {log})")

    outputs = workdir / "outputs"
    compose(env, "cp", "superexec-serverapp:/app/outputs", str(outputs))
    check_run_folder(outputs, rounds)
    return 0


def cleanup(args: argparse.Namespace, engine: Engine, before: dict[str, str], code: int) -> int:
    """compose down, daemon stopped, its data deleted unless kept, host network compared."""
    env = getattr(args, "compose_env", None)
    if env is not None:
        try:
            (args.workdir / "compose.log").write_text(compose(env, "logs", "--no-color"))
        except (DockerError, subprocess.TimeoutExpired) as exc:
            say(f"compose logs failed: {exc}")
        try:
            compose(env, "down", "-v", "--remove-orphans", "--timeout", "20")
            say(f"compose down (logs in {args.workdir / 'compose.log'})")
        except (DockerError, subprocess.TimeoutExpired) as exc:
            say(f"compose down failed: {exc}")
            code = code or 1
    killed = engine.stop()
    if killed:
        say(f"had to kill {len(killed)} leftover engine processes: {killed}")
    if not args.keep_images:
        engine.remove_data()
    changes = network_changes(before, network_snapshot())
    if changes:
        say(f"the host's network changed: {'; '.join(changes)}")
        code = code or 1
    else:
        say("dockerd stopped; the host's network is as it was")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="", help=f'on top of "{DEFAULT_RUN_CONFIG}"')
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default .flwr/docker-test/<time>")  # fmt: skip
    parser.add_argument("--engine-dir", type=Path, default=ROOT / ".flwr" / "docker-engine",
                        help="the private dockerd's data, socket and CLI plugins")  # fmt: skip
    parser.add_argument("--keep-images", action="store_true",
                        help="keep the engine's images (several GB) for the next run")  # fmt: skip
    parser.add_argument("--wheels-only", action="store_true",
                        help="only download the lock's wheels into docker/wheels")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds for the run")
    args = parser.parse_args(argv)
    if args.wheels_only:
        download_wheels()
        return 0
    require_valid_run_config(DEFAULT_RUN_CONFIG, args.run_config, app=ROOT)
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    args.workdir = (args.workdir or ROOT / ".flwr" / "docker-test" / stamp).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_host_packages()
        config = ensure_plugins(args.engine_dir / "config")
    except DockerError as exc:
        say(f"failed: {exc}")
        return 1
    engine = Engine(args.engine_dir, config)
    before = network_snapshot()
    code = 1
    try:
        code = docker_test(args, engine)
    except (DockerError, subprocess.SubprocessError, OSError) as exc:
        say(f"failed: {exc}")
    except KeyboardInterrupt:
        say("interrupted: tearing down")
        code = 130
    finally:
        code = cleanup(args, engine, before, code)
    say("passed" if code == 0 else f"FAILED (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
