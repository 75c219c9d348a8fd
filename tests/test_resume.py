"""Checkpoint and resume: a run stopped after round 2 and resumed to round 4 writes the same
``rounds.jsonl`` as a run that never stopped (timings aside), and a torn write never corrupts
the checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flora_app.checkpoint import CHECKPOINT_FILE, load_checkpoint
from flora_app.config import ConfigError, FloraConfig
from flora_app.server_app import resume_point, run
from tests.helpers import LocalGrid, StopRunError, untimed, untimed_rounds


def _config(tmp_path: Path, tiny_run_config: dict, **extra: object) -> dict:
    return {
        **tiny_run_config,
        "num-server-rounds": 4,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "output-dir": str(tmp_path),
        **extra,
    }


def _stop_at(round_number: int):
    def before_train(train_round: int) -> None:
        if train_round == round_number:
            raise StopRunError(f"server killed before round {round_number}")

    return before_train


@pytest.mark.parametrize(
    "extra",
    [
        {"strategy": "fedlora"},
        {"strategy": "flasc", "density-up": 0.3, "density-down": 0.5},
    ],
    ids=["fedlora", "flasc-adam"],
)
def test_stop_after_two_rounds_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, tiny_run_config: dict, extra: dict
) -> None:
    whole_cfg = FloraConfig.from_run_config(
        _config(tmp_path, tiny_run_config, **extra, **{"run-name": "whole"})
    )
    run(LocalGrid(whole_cfg.to_run_config(), 4), whole_cfg)

    cut = _config(tmp_path, tiny_run_config, **extra, **{"run-name": "cut"})
    with pytest.raises(StopRunError):
        run(LocalGrid(cut, 4, before_train=_stop_at(3)), FloraConfig.from_run_config(cut))
    cut_dir = tmp_path / "cut"
    assert load_checkpoint(cut_dir).round == 2
    assert len(untimed_rounds(cut_dir)) == 2

    resumed = FloraConfig.from_run_config({**cut, "resume-from": str(cut_dir)})
    summary = run(LocalGrid(cut, 4), resumed, resume_point(resumed))

    whole, again = untimed_rounds(tmp_path / "whole"), untimed_rounds(cut_dir)
    assert [r["round"] for r in again] == [1, 2, 3, 4]
    assert again == whole
    assert summary["rounds"] == 4
    assert load_checkpoint(cut_dir).round == 4


def test_a_crash_after_a_round_line_but_before_its_checkpoint_is_rolled_back(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    cfg = _config(tmp_path, tiny_run_config, **{"run-name": "r", "num-server-rounds": 2})
    run(LocalGrid(cfg, 4), FloraConfig.from_run_config(cfg))
    run_dir = tmp_path / "r"
    ckpt = load_checkpoint(run_dir)
    # A half-written next line, as a crash mid-append would leave it:
    with (run_dir / "rounds.jsonl").open("a") as fh:
        fh.write('{"round": 3, "accur')
    more = {**cfg, "num-server-rounds": 3, "resume-from": str(run_dir)}
    resumed = FloraConfig.from_run_config(more)
    run(LocalGrid(more, 4), resumed, resume_point(resumed))
    rounds = untimed_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[:2] == [untimed(r) for r in ckpt.rounds]


def test_a_torn_checkpoint_write_leaves_the_previous_checkpoint(
    tmp_path: Path, tiny_run_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, tiny_run_config, **{"run-name": "t"})
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_second_checkpoint(src, dst):  # type: ignore[no-untyped-def]
        if str(dst).endswith(CHECKPOINT_FILE):
            calls["n"] += 1
            if calls["n"] == 2:
                Path(src).write_bytes(b"half a file")  # the temp file is torn too
                raise StopRunError("power cut during the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_checkpoint)
    with pytest.raises(StopRunError):
        run(LocalGrid(cfg, 4), FloraConfig.from_run_config(cfg))
    ckpt = load_checkpoint(tmp_path / "t")
    assert ckpt.round == 1
    assert all(np.all(np.isfinite(v)) for v in ckpt.global_arrays.values())


def test_resume_refuses_a_changed_configuration_or_a_missing_checkpoint(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    cfg = _config(tmp_path, tiny_run_config, **{"run-name": "c", "num-server-rounds": 1})
    run(LocalGrid(cfg, 4), FloraConfig.from_run_config(cfg))
    changed = FloraConfig.from_run_config(
        {**cfg, "lr": 0.5, "num-server-rounds": 2, "resume-from": str(tmp_path / "c")}
    )
    with pytest.raises(ConfigError, match=r"'lr' = 0\.5 differs from 0\.01"):
        resume_point(changed)
    done = FloraConfig.from_run_config({**cfg, "resume-from": str(tmp_path / "c")})
    with pytest.raises(ConfigError, match="already completed 1 rounds"):
        resume_point(done)
    missing = FloraConfig.from_run_config(
        {**cfg, "num-server-rounds": 2, "resume-from": str(tmp_path / "nowhere")}
    )
    with pytest.raises(ConfigError, match=r"resume-from.*has no checkpoint"):
        resume_point(missing)


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    """The round-2 checkpoint goes to /dev/full (ENOSPC on write, as a full disk): no
    monkeypatching, the real write fails."""
    from flora_app.checkpoint import CheckpointError

    cfg = _config(tmp_path, tiny_run_config, **{"run-name": "full"})
    run_dir = tmp_path / "full"

    def fill_the_disk(train_round: int) -> None:
        if train_round == 2:  # round 1's checkpoint exists; round 2's write will fail
            tmp = run_dir / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
            tmp.symlink_to("/dev/full")

    with pytest.raises(CheckpointError) as caught:
        run(LocalGrid(cfg, 4, before_train=fill_the_disk), FloraConfig.from_run_config(cfg))
    message = str(caught.value)
    assert "\n" not in message
    assert f"could not write {run_dir / CHECKPOINT_FILE} for round 2" in message
    assert "No space left on device" in message
    assert "round 1's checkpoint is intact" in message
    assert load_checkpoint(run_dir).round == 1
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_a_safetensors_file_without_flora_contents_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    from safetensors.numpy import save_file

    from flora_app.checkpoint import CheckpointError

    save_file({"x": np.zeros(3, dtype=np.float32)}, str(tmp_path / CHECKPOINT_FILE))
    with pytest.raises(CheckpointError, match="not a readable flora checkpoint"):
        load_checkpoint(tmp_path)
    save_file(
        {"x": np.zeros(3, dtype=np.float32)},
        str(tmp_path / CHECKPOINT_FILE),
        metadata={"flora": json.dumps({"round": 2})},
    )
    with pytest.raises(CheckpointError, match="lacks flora's checkpoint contents") as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value)
