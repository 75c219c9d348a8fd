"""A SuperNode's own disk cache of its data partition, which every message would rebuild.

Flower (1.21+) starts a fresh ClientApp process for every message, so the per-process caches of
``flora_app.ml.data`` help nothing in a deployment: each message read the dataset and
partitioned it again, importing torchvision, scikit-learn (digits) and Hugging Face
``datasets`` (flwr-datasets) on the way: about 4 of its seconds (docs/deployment.md), for the
same rows every round. The node's train and validation splits are kept here instead, in one
safetensors file per partition, named by the hash of everything that decides them (dataset
spec, the files' stamp, partitioner, seed, validation share; ``flora_app.task``); the key is
also stored in the file and compared on reading, so a file is used for exactly its inputs.

``FLORA_NODE_CACHE`` names the folder (default ``~/.cache/flora/nodes``) or ``off``; the oldest
files are deleted once the folder holds more than ``FLORA_NODE_CACHE_MB`` (default 2048). A
damaged file is rebuilt, and a full or read-only disk only costs the speed-up, never a round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from flora_app.ml.data import Augment, DataInfo, Split, data_cache_dir

ENV_FOLDER = "FLORA_NODE_CACHE"
ENV_LIMIT_MB = "FLORA_NODE_CACHE_MB"
DEFAULT_LIMIT_MB = 2048
_PREFIX = "splits-"
_SUFFIX = ".safetensors"

ClientData = tuple[DataInfo, Split, Split]


def cache_folder() -> Path | None:
    """The cache folder, or None when ``FLORA_NODE_CACHE=off``."""
    value = os.environ.get(ENV_FOLDER, "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else data_cache_dir() / "nodes"


def _limit_bytes() -> int:
    value = os.environ.get(ENV_LIMIT_MB, "")
    try:
        return int(float(value) * 2**20) if value else DEFAULT_LIMIT_MB * 2**20
    except ValueError:
        raise ValueError(f"{ENV_LIMIT_MB}={value!r}: expected a number of megabytes") from None


def cached_client_data(key: Mapping[str, Any], build: Callable[[], ClientData]) -> ClientData:
    """This node's (data info, train split, validation split) for ``key``: from the cache when
    it holds them, else from ``build()``, then kept for the next message."""
    folder = cache_folder()
    if folder is None:
        return build()
    text = json.dumps(dict(key), sort_keys=True, default=str)
    path = folder / f"{_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:32]}{_SUFFIX}"
    cached = _read(path, text)
    if cached is not None:
        return cached
    data = build()
    _write(path, text, data)
    return data


def _read(path: Path, key: str) -> ClientData | None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None  # a hash collision, however unlikely, is a miss
            tensors = {name: f.get_tensor(name) for name in ("tx", "ty", "vx", "vy")}
        info = DataInfo(
            int(meta["in_channels"]),
            int(meta["num_classes"]),
            Augment(int(meta["pad"]), meta["flip"] == "1"),
        )
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        log(WARNING, "node cache: %s is unreadable (%s); rebuilding it", path.name, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: the last to be trimmed
    return info, Split(tensors["tx"], tensors["ty"]), Split(tensors["vx"], tensors["vy"])


def _write(path: Path, key: str, data: ClientData) -> None:
    """Write through a temporary file and a rename, so a reader (another SuperNode on this
    machine, a message killed mid-write) never sees half a file."""
    from safetensors.torch import save_file

    info, train, val = data
    meta = {
        "key": key,
        "in_channels": str(info.in_channels),
        "num_classes": str(info.num_classes),
        "pad": str(info.augment.pad),
        "flip": "1" if info.augment.flip else "0",
    }
    tensors = {
        "tx": train.x.contiguous(),
        "ty": train.y.contiguous(),
        "vx": val.x.contiguous(),
        "vy": val.y.contiguous(),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=_SUFFIX)
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
        tmp = None
        _trim(path.parent, keep=path)
    except OSError as exc:
        log(WARNING, "node cache: cannot write %s (%s); this node works without it", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _trim(folder: Path, keep: Path) -> None:
    """Delete the least recently used files until the folder fits its limit."""
    files = []
    for path in folder.glob(f"{_PREFIX}*{_SUFFIX}"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            files.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    limit = _limit_bytes()
    for _, size, path in sorted(files):
        if total <= limit:
            break
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
