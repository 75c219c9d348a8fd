"""``codec_bench --compressors`` measures a real client update: it replays one client's local
training (``flora_app.task.local_train``, the ClientApp's own) from a finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flora_app.checkpoint import load_checkpoint
from flora_app.config import FloraConfig
from flora_app.server_app import run
from flora_tools.codec_bench import compressors, real_update
from tests.helpers import LocalGrid


def test_a_replayed_client_update_is_real_and_repeatable(
    tmp_path: Path, tiny_run_config: dict
) -> None:
    cfg = FloraConfig.from_run_config(
        {**tiny_run_config, "num-server-rounds": 1, "output-dir": str(tmp_path), "run-name": "r"}
    )
    run(LocalGrid(cfg.to_run_config(), 2), cfg)
    update = real_update(tmp_path / "r", partition=3)
    exchanged = load_checkpoint(tmp_path / "r").global_arrays
    assert list(update) == list(exchanged)
    assert all(v.dtype == np.float32 and v.shape == exchanged[k].shape for k, v in update.items())
    assert sum(float(np.abs(v).sum()) for v in update.values()) > 0.0  # it trained
    again = real_update(tmp_path / "r", partition=3)
    for name, value in update.items():
        np.testing.assert_array_equal(value, again[name])  # seeded by (seed, round, partition)
    fp32, affine = compressors(update, ["fp32", "affine:bits=4:gran=channel:meta=fp16"])
    assert affine["bytes"] < fp32["bytes"] / 2  # 4-bit codes (the tiny CNN: headers weigh)
    assert 0 < fp32["zstd-3"] < fp32["bytes"]  # fp32 updates with zero B rows compress


def test_the_adaptive_table_compares_at_equal_bytes() -> None:
    from flora_tools.codec_bench import adaptive_rows
    from tests.test_adaptive_precision import _tensors

    rows = adaptive_rows(_tensors(5, 2.0), (3, 4))
    assert [r["width"] for r in rows] == [3, 4]
    for r in rows:
        assert r["adaptive B"] <= r["fixed B"]
        assert r["adaptive error"] < 0.5 * r["fixed error"]  # scales 100x apart
