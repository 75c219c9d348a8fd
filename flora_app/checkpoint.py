"""One file per run that lets the server pick a run up after its last complete round.

``checkpoint.safetensors`` in the run folder holds the global adapters and the server
optimizer's state as tensors, and in its metadata the round number, the metrics history, the
RNG states and the run configuration. It is written to a temporary file, flushed to disk and
renamed over the old one, so a crash at any point leaves either the previous checkpoint or the
new one, never a torn file. safetensors rather than pickle: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save

CHECKPOINT_FILE = "checkpoint.safetensors"
_META_KEY = "flora"
_GLOBAL = "global/"
_OPTIMIZER = "optimizer/"
# Keys that may differ between the interrupted run and its resumption.
RESUMABLE_KEYS = frozenset(
    {"num-server-rounds", "resume-from", "run-name", "output-dir", "round-timeout"}
)


@dataclass
class Checkpoint:
    """Everything a resumed server needs after ``round`` complete rounds."""

    round: int
    global_arrays: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    initial: dict[str, Any] | None
    run_config: dict[str, Any]
    python_rng: Any = None
    numpy_rng: Any = None
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> tuple[Any, Any]:
    """The global RNG states, for whatever on the server still draws from them (flora's own
    node sampling needs none: each round's sample is a function of the seed and the round)."""
    state = np.random.get_state()
    return random.getstate(), [state[0], state[1].tolist(), *state[2:]]


def restore_rng(python_rng: Any, numpy_rng: Any) -> None:
    version, internal, gauss = python_rng
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = numpy_rng
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically into ``run_dir``; return the file's path."""
    tensors = {f"{_GLOBAL}{k}": np.ascontiguousarray(v) for k, v in ckpt.global_arrays.items()}
    tensors.update({f"{_OPTIMIZER}{k}": np.ascontiguousarray(v) for k, v in ckpt.optimizer.items()})
    meta = {
        "round": ckpt.round,
        "rounds": ckpt.rounds,
        "initial": ckpt.initial,
        "run_config": ckpt.run_config,
        "python_rng": ckpt.python_rng,
        "numpy_rng": ckpt.numpy_rng,
        "wall_seconds": ckpt.wall_seconds,
        "extra": ckpt.extra,
        "global_order": list(ckpt.global_arrays),
    }
    data = save(tensors, metadata={_META_KEY: json.dumps(meta)})
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(f".{CHECKPOINT_FILE}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(run_dir)
    except OSError as exc:  # a full disk, a vanished folder: the last good file stays
        with contextlib.suppress(OSError):
            tmp.unlink()
        kept = (
            f"round {_saved_round(path)}'s checkpoint is intact"
            if path.exists()
            else ("no earlier checkpoint exists")
        )
        raise CheckpointError(
            f"could not write {path} for round {ckpt.round} ({exc.strerror or exc}); {kept}"
        ) from None
    return path


def _saved_round(path: Path) -> str:
    try:
        return str(load_checkpoint(path.parent).round)
    except CheckpointError:
        return "the earlier"


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    """A run folder has no usable checkpoint."""


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {CHECKPOINT_FILE} (no round completed there)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {})[_META_KEY])
        tensors = load_file(str(path))
    except Exception as exc:  # a damaged file: say which, whatever the library raised
        raise CheckpointError(f"{path} is not a readable flora checkpoint: {exc}") from None
    try:
        order = meta["global_order"]
        return Checkpoint(
            round=int(meta["round"]),
            global_arrays={k: tensors[f"{_GLOBAL}{k}"] for k in order},
            optimizer={
                k[len(_OPTIMIZER) :]: v for k, v in tensors.items() if k.startswith(_OPTIMIZER)
            },
            rounds=list(meta["rounds"]),
            initial=meta["initial"],
            run_config=dict(meta["run_config"]),
            python_rng=meta["python_rng"],
            numpy_rng=meta["numpy_rng"],
            wall_seconds=float(meta["wall_seconds"]),
            extra=meta.get("extra", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:  # readable file, not ours or cut short
        raise CheckpointError(f"{path} lacks flora's checkpoint contents ({exc!r})") from None


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(key, saved, current) for every run-config key a resumption must not change."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    return [
        (k, saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)
    ]
