"""The Docker files, checked without a Docker engine (``make docker-test`` runs them for real).

What can be checked is checked against the real thing: the compose files parse; every service's
command uses only flags that the installed ``flower-superlink`` / ``flower-supernode`` /
``flower-superexec`` list in ``--help`` and is accepted by their own argument parsers; the TLS
and authentication overlays leave no connection insecure and mount every file they name; the
files the compose files reference exist, or are produced by ``docker/gen-certs.sh`` (which runs
here); and the image versions are the lock file's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from flora_tools.lockfile import locked_versions, normalise

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
VARIANTS = {
    "insecure": ["compose.yml"],
    "tls": ["compose.yml", "with-tls.yml"],
    "auth": ["compose.yml", "with-tls.yml", "with-auth.yml"],
    "edge": ["edge.yml"],
}
# Values for the variables edge.yml requires (``${VAR:?message}``).
SAMPLE_ENV = {"SUPERLINK": "superlink.example.org:8000", "PARTITION_ID": "0", "NUM_PARTITIONS": "3"}


def _substitute(text: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?error}`` interpolation, with defaults."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in SAMPLE_ENV:
            return SAMPLE_ENV[name]
        assert op == ":-", f"${{{name}}} has no default and no sample value"
        return arg

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, text)


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load(_substitute((DOCKER / name).read_text()))


def _merge(files: list[str]) -> dict[str, Any]:
    """Compose's override rules for what is checked here: ``command`` is replaced, ``secrets``
    are merged by target, other keys are replaced; top-level ``secrets`` are merged by name."""
    merged: dict[str, Any] = {"services": {}, "secrets": {}}
    for name in files:
        doc = _load(name)
        merged["secrets"].update(doc.get("secrets") or {})
        for svc_name, svc in (doc.get("services") or {}).items():
            into = merged["services"].setdefault(svc_name, {})
            for key, value in svc.items():
                if key == "secrets":
                    by_target = {_secret_target(s): s for s in into.get("secrets", [])}
                    by_target.update({_secret_target(s): s for s in value})
                    into["secrets"] = list(by_target.values())
                else:
                    into[key] = value
    return merged


def _secret_target(secret: Any) -> str:
    if isinstance(secret, str):
        return f"/run/secrets/{secret}"
    return str(secret.get("target", f"/run/secrets/{secret['source']}"))


def _binary(svc: dict[str, Any]) -> str:
    """Which Flower CLI a service runs (its image's entrypoint)."""
    image = str(svc.get("image", ""))
    target = (svc.get("build") or {}).get("target")
    if target == "superlink":
        return "flower-superlink"
    if target == "app":
        return "flower-superexec"  # docker/Dockerfile's `app` stage: ENTRYPOINT flower-superexec
    if image.startswith("flwr/supernode:"):
        return "flower-supernode"
    raise AssertionError(f"unknown image for service: {svc}")


@cache
def _help_flags(binary: str) -> frozenset[str]:
    exe = Path(sys.executable).parent / binary
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout))


def _parser(binary: str) -> Callable[[], argparse.ArgumentParser]:
    """The CLI's own argparse parser, so values are checked too (choices, types, required)."""
    if binary == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

        return _parse_args_run_superlink
    if binary == "flower-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

        return _parse_args_run_supernode
    from flwr.supercore.cli.flower_superexec import _parse_args

    return _parse_args


def _flag(command: list[str], name: str) -> str | None:
    """The value after ``name`` (or of ``name=value``) in a command list."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _services(variant: str) -> dict[str, dict[str, Any]]:
    return _merge(VARIANTS[variant])["services"]


@pytest.mark.parametrize("name", sorted({f for files in VARIANTS.values() for f in files}))
def test_compose_file_parses(name: str) -> None:
    doc = _load(name)
    assert doc["services"], name
    for svc in doc["services"].values():
        assert isinstance(svc, dict)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_command_is_accepted_by_the_installed_cli(variant: str) -> None:
    for name, svc in _services(variant).items():
        command = [str(a) for a in svc["command"]]
        binary = _binary(svc)
        flags = {a.split("=", 1)[0] for a in command if a.startswith("--")}
        unknown = flags - _help_flags(binary)
        assert not unknown, f"{variant}/{name}: {binary} --help lacks {sorted(unknown)}"
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                _parser(binary)().parse_args(command)
        except SystemExit:
            pytest.fail(f"{variant}/{name}: {binary} rejects {command}: {stderr.getvalue()}")


@pytest.mark.parametrize("variant", ["tls", "auth", "edge"])
def test_tls_variants_leave_no_connection_to_the_superlink_insecure(variant: str) -> None:
    services = _services(variant)
    for name, svc in services.items():
        command = [str(a) for a in svc["command"]]
        mounted = {_secret_target(s) for s in svc.get("secrets", [])}
        binary = _binary(svc)
        if binary == "flower-superlink":
            assert "--insecure" not in command, name
            for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
                assert f"/app/{_flag(command, flag)}" in mounted, f"{name}: {flag} not mounted"
        talks_to_superlink = binary == "flower-supernode" or (
            binary == "flower-superexec"
            and str(_flag(command, "--runtime-api-address")).startswith("superlink:")
        )
        if talks_to_superlink:
            assert "--insecure" not in command, f"{name} talks to the SuperLink in plain HTTP"
            ca = _flag(command, "--root-certificates")
            assert ca and f"/app/{ca}" in mounted, f"{name}: CA certificate not mounted"
        if variant == "auth" and binary == "flower-superlink":
            assert "--enable-supernode-auth" in command
        if variant == "auth" and binary == "flower-supernode":
            key = _flag(command, "--auth-supernode-private-key")
            assert key and f"/app/{key}" in mounted, f"{name}: private key not mounted"


@pytest.mark.parametrize("variant", ["insecure", "tls", "auth"])
def test_supernodes_partitions_and_runtimes_pair_up(variant: str) -> None:
    services = _services(variant)
    superlink = services["superlink"]["command"]
    link_port = _flag(superlink, "--port")
    assert _flag(superlink, "--host") == "0.0.0.0"
    assert _flag(superlink, "--isolation") == "process"  # ServerApp runs in its own container
    assert str(_flag(superlink, "--database")).startswith("state/")
    assert "superlink-state:/app/state" in services["superlink"]["volumes"]
    assert f"{link_port}:{link_port}" in services["superlink"]["ports"]
    assert services["superexec-serverapp"]["command"][-1] == f"superlink:{link_port}"
    nodes = {n: s for n, s in services.items() if n.startswith("supernode-")}
    ids = []
    for name, svc in nodes.items():
        command = svc["command"]
        assert _flag(command, "--superlink") == f"superlink:{link_port}"
        assert _flag(command, "--isolation") == "process"
        config = dict(kv.split("=") for kv in _flag(command, "--node-config").split())
        assert int(config["num-partitions"]) == len(nodes)
        ids.append(int(config["partition-id"]))
        runtime = services[name.replace("supernode-", "superexec-clientapp-")]
        address = _flag(runtime["command"], "--runtime-api-address")
        assert address == f"{name}:{_flag(command, '--port')}", name
        assert runtime["depends_on"] == [name]
    assert sorted(ids) == list(range(len(nodes)))


def test_dockerfile_stages_and_copied_paths_exist() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, flags=re.MULTILINE))
    for variant in VARIANTS:
        for name, svc in _services(variant).items():
            build = svc.get("build")
            if not build:
                assert str(svc["image"]).startswith("flwr/"), name  # an official image
                continue
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
            assert build["target"] in stages, name
    for source in re.findall(r"^COPY --chown=\S+ (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and {"!pyproject.toml", "!flora_app", "!strategies"} <= set(ignore)
    assert 'ENTRYPOINT ["flower-superexec"]' in dockerfile


def test_image_versions_come_from_the_lock_file() -> None:
    """The images install the lock's versions: flwr through the base image tag (the same
    version as the lock's), everything else with requirements.lock as pip's constraint, so no
    second file names a version. (``make docker-test`` lists the built image's packages and
    compares each with the lock.)"""
    locked = locked_versions()
    flwr = locked["flwr"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={flwr}" in dockerfile
    for name in sorted({f for files in VARIANTS.values() for f in files}):
        for found in re.findall(r"\$\{FLWR_VERSION:-([^}]+)\}", (DOCKER / name).read_text()):
            assert found == flwr, f"{name} pins flwr {found}, the lock has {flwr}"
    assert "COPY --chown=app:app pyproject.toml README.md requirements.lock" in dockerfile
    install = re.search(r"^RUN --mount=type=bind,source=docker/wheels.*?(?=^\S)", dockerfile,
                        flags=re.S | re.M).group(0)  # fmt: skip
    assert "--constraint requirements.lock ." in install
    assert "--find-links /wheels" in install
    # No version, index or torch variant spelled anywhere but the lock.
    assert not re.search(r"==|\+cpu|download\.pytorch\.org|TORCH", dockerfile)
    assert "chown -R" not in dockerfile  # files are copied owned by `app`: no duplicate layer


def test_base_images_are_build_arguments_with_local_stand_ins() -> None:
    """docker/Dockerfile builds on Flower's images by default and on any image given as
    SUPERLINK_IMAGE / SUPEREXEC_IMAGE; docker/local-bases.Dockerfile's stand-ins carry the
    entrypoint each compose service relies on, the `app` user and the lock's flwr."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ARG SUPERLINK_IMAGE=flwr/superlink:${FLWR_VERSION}-${PYTHON_TAG}" in dockerfile
    assert "ARG SUPEREXEC_IMAGE=flwr/superexec:${FLWR_VERSION}-${PYTHON_TAG}" in dockerfile
    assert "FROM ${SUPERLINK_IMAGE} AS superlink" in dockerfile
    assert "FROM ${SUPEREXEC_IMAGE} AS app" in dockerfile
    local = (DOCKER / "local-bases.Dockerfile").read_text()
    for target in ("superlink", "supernode", "superexec"):
        stage = re.search(rf"^FROM python AS {target}\n(.*?)(?=^FROM|\Z)", local, re.S | re.M)
        assert stage, target
        assert f'ENTRYPOINT ["flower-{target}"]' in stage.group(1)
    assert "--uid 49999" in local and "USER app" in local
    assert "--no-index --find-links /wheels" in local
    assert "--constraint /tmp/requirements.lock flwr" in local
    ignore = (DOCKER / "local-bases.Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :] == ["*", "!requirements.lock", "!docker/wheels"]
    # The wheelhouse both Dockerfiles bind-mount exists in a fresh clone.
    assert (DOCKER / "wheels" / "README.md").is_file()


def test_compose_files_work_with_compose_v1() -> None:
    """Compose v1 (docker-compose 1.29) rejects a top-level ``name:``; the project name comes
    from docker/.env, which both versions read from the compose files' folder."""
    for name in sorted({f for files in VARIANTS.values() for f in files}):
        assert "name" not in yaml.safe_load((DOCKER / name).read_text()), name
    assert "COMPOSE_PROJECT_NAME=flora" in (DOCKER / ".env").read_text().splitlines()


def test_the_installed_environment_is_the_lock_file() -> None:
    """What the tests run on is exactly what a fresh clone installs (make install)."""
    locked = locked_versions()
    assert version("flwr") == locked["flwr"] and version("torch") == locked["torch"]
    for package, pinned in locked.items():
        assert version(package) == pinned, f"{package}: installed {version(package)}, lock {pinned}"
    from importlib.metadata import distributions

    # Nothing beyond the lock: the project itself, and pip (pinned in the Makefile).
    installed = {normalise(d.metadata["Name"]) for d in distributions()}
    assert installed - set(locked) <= {"flora", "pip"}, sorted(installed - set(locked))


def test_gen_certs_makes_every_file_the_compose_files_mount(tmp_path: Path) -> None:
    """Run the real script; the certificate must verify for the names containers dial, and
    the node keys must load the way flwr loads them."""
    script = DOCKER / "gen-certs.sh"
    assert os.access(script, os.X_OK)
    out = tmp_path / "certificates"
    env = {**os.environ, "NODE_KEYS": "3"}
    proc = subprocess.run(
        [str(script), str(out), "flora.example.org", "10.1.2.3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for variant in VARIANTS:
        for name, secret in _merge(VARIANTS[variant])["secrets"].items():
            assert (tmp_path / secret["file"]).is_file(), f"{variant}: {name} -> {secret['file']}"
    for host in ("superlink", "localhost", "flora.example.org"):
        check = subprocess.run(
            ["openssl", "verify", "-CAfile", str(out / "ca.crt"), "-verify_hostname", host,
             str(out / "server.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert check.returncode == 0, (host, check.stdout, check.stderr)
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), "-verify_ip", "10.1.2.3",
         str(out / "server.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    for i in range(3):
        key = load_ssh_private_key((tmp_path / "keys" / f"supernode-{i}").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert try_load_public_key(tmp_path / "keys" / f"supernode-{i}.pub")
