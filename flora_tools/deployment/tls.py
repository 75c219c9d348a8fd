"""Throw-away TLS material for a deployment, made with the ``openssl`` and ``ssh-keygen`` CLIs.

The SuperLink serves its Fleet, Control and Runtime APIs over one HTTPS port and needs a CA
certificate, a server certificate signed by it and the server key; SuperNodes, the ``flwr`` CLI
and the SuperLink's own SuperExec verify the server against the CA. The server certificate
names every address clients dial (``127.0.0.1``, ``::1``, ``localhost`` plus any extra host),
because certificate checks compare the dialled host against the subjectAltName, not the CN.

SuperNode authentication keys are ECDSA P-384 pairs in OpenSSH format: ``flwr supernode
register`` loads the public key with ``load_ssh_public_key`` and insists on a NIST curve, and
``flower-supernode --auth-supernode-private-key`` loads the private key with
``load_ssh_private_key`` (no passphrase).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServerTls:
    """Paths of the CA certificate, the SuperLink's certificate and its private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private: Path
    public: Path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is required to generate deployment keys; install it")
    return path


def _run(*cmd: str | Path) -> None:
    argv = [str(part) for part in cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed: {proc.stderr.strip()[-500:]}")


def subject_alt_names(hosts: tuple[str, ...]) -> str:
    """``IP:127.0.0.1,IP:::1,DNS:localhost`` for the given hosts (IPs and DNS names)."""
    entries = []
    for host in dict.fromkeys(hosts):  # ordered, unique
        try:
            ipaddress.ip_address(host)
            entries.append(f"IP:{host}")
        except ValueError:
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def make_server_tls(
    folder: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 2
) -> ServerTls:
    """A fresh CA and a server certificate for ``hosts`` in ``folder`` (EC P-256, ``days``
    valid). Keys are created ``0600``; nothing here is meant to outlive the deployment."""
    openssl = _tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    new_ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    valid = ("-days", str(days))
    ca_subject = "/O=flora/CN=flora throw-away CA"
    _run(
        openssl,
        "req",
        "-x509",
        *new_ec_key,
        "-keyout",
        ca_key,
        "-out",
        ca_cert,
        *valid,
        "-subj",
        ca_subject,
    )
    _run(
        openssl, "req", *new_ec_key, "-keyout", key, "-out", csr, "-subj", f"/O=flora/CN={hosts[0]}"
    )
    ext.write_text(
        f"subjectAltName={subject_alt_names(hosts)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run(
        openssl,
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_cert,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        *valid,
        "-sha256",
        "-extfile",
        ext,
    )
    _run(openssl, "verify", "-CAfile", ca_cert, cert)
    for private in (ca_key, key):
        private.chmod(0o600)
    return ServerTls(ca_cert=ca_cert, server_cert=cert, server_key=key)


def make_node_key(folder: Path, name: str) -> NodeKey:
    """An ECDSA P-384 key pair ``<folder>/<name>`` and ``<name>.pub`` via ``ssh-keygen``."""
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / name
    for path in (private, private.with_name(f"{name}.pub")):
        path.unlink(missing_ok=True)
    _run(_tool("ssh-keygen"), "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f", private)
    return NodeKey(private=private, public=private.with_name(f"{name}.pub"))
