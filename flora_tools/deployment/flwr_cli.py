"""The ``flwr`` CLI side of a deployment: environment, connection file and JSON answers.

Since flwr 1.26 the CLI reads its SuperLink connections from ``$FLWR_HOME/config.toml``
(``[superlink.<name>]`` with ``address`` = the SuperLink's Control API ``host:port``,
``root-certificates`` = an absolute path to the CA, or ``insecure = true``). Every process of
a deployment gets its own ``FLWR_HOME`` (installed FABs, the CLI's config), the offline
environment of docs/design.md, and ``FLORA_OUTPUT_ROOT`` so the ServerApp's relative
``output-dir`` lands in the project and not in Flower's install folder.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

OFFLINE = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


def process_env(flwr_home: Path, output_root: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of one deployment process: offline, own ``FLWR_HOME``, ``bin_dir``
    first on ``PATH`` (SuperLink and SuperNode find ``flower-superexec`` by name)."""
    env = dict(os.environ)
    env.update(OFFLINE)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLORA_OUTPUT_ROOT"] = str(output_root)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    flwr_home.mkdir(parents=True, exist_ok=True)
    return env


def connection_toml(name: str, address: str, root_certificates: Path | None) -> str:
    """``config.toml`` text with one SuperLink connection ``name``, made the default."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]"]
    lines.append(f'address = "{address}"')
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    return "\n".join(lines) + "\n"


def write_connection(
    flwr_home: Path, name: str, address: str, root_certificates: Path | None
) -> Path:
    """Write the CLI's ``$FLWR_HOME/config.toml`` and return its path."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(connection_toml(name, address, root_certificates))
    return path


class FlwrCliError(RuntimeError):
    """A ``flwr ... --format json`` call failed or did not answer JSON."""


def flwr_json(env: Mapping[str, str], args: Sequence[str], timeout: float = 60.0) -> dict:
    """Run ``flwr <args> --format json`` and return its JSON answer."""
    proc = subprocess.run(
        ["flwr", *args, "--format", "json"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise FlwrCliError(
            f"flwr {' '.join(args)}: exit {proc.returncode}: "
            f"{(proc.stdout + proc.stderr).strip()[-600:]}"
        ) from None
    if not answer.get("success", False):
        raise FlwrCliError(f"flwr {' '.join(args)}: {answer}")
    return answer


def online_nodes(env: Mapping[str, str], connection: str) -> list[dict[str, Any]]:
    """SuperNodes the SuperLink lists as ``online`` (``flwr supernode ls``)."""
    nodes = flwr_json(env, ["supernode", "ls", connection]).get("nodes", [])
    return [n for n in nodes if n.get("status") == "online"]


def register_node(env: Mapping[str, str], connection: str, public_key: Path, name: str) -> int:
    """Register a SuperNode's public key (``flwr supernode register``); returns its node id."""
    answer = flwr_json(env, ["supernode", "register", str(public_key), connection, "--name", name])
    return int(answer["node-id"])


def runs(env: Mapping[str, str], connection: str) -> list[dict[str, Any]]:
    """Every run the SuperLink knows (``flwr list``)."""
    return list(flwr_json(env, ["list", connection]).get("runs", []))


def newest_run(env: Mapping[str, str], connection: str) -> dict[str, Any] | None:
    """The most recently submitted run, or None."""
    known = runs(env, connection)
    return max(known, key=lambda r: str(r.get("pending-at", ""))) if known else None


def superlink_healthy(address: str, ca_cert: Path | None, timeout: float = 2.0) -> bool:
    """Whether the SuperLink answers ``GET /health`` (over TLS, verified with ``ca_cert``)."""
    verify: ssl.SSLContext | bool = False
    scheme = "http"
    if ca_cert is not None:
        verify, scheme = ssl.create_default_context(cafile=str(ca_cert)), "https"
    try:
        return httpx.get(f"{scheme}://{address}/health", verify=verify, timeout=timeout).is_success
    except httpx.HTTPError:
        return False
