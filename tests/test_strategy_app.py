"""flora's strategies from someone else's Flower app: built with keyword arguments in a
ServerApp that imports only ``strategies``, with a ClientApp whose only mod is
``compression_mod``, run end to end under ``flwr run`` (tests/apps/strategies_only). One run
starts the three strategies in turn on the same SuperNodes: a simulation's start-up costs
more than its rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "apps" / "strategies_only"
EXPECTED = {
    "fedlora": ("FedLoRA", "fp32", "fp32"),
    "flocora": ("FLoCoRA", "affine:bits=4:gran=channel:meta=fp16", "affine:bits=8:"),
    "flasc": ("FLASC", "topk:density=0.5:scope=global:values=32", "topk:density=0.5:"),
}


def test_each_strategy_runs_in_a_plain_flower_app(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flora_tools.run_simulation",
            "--app",
            str(APP),
            "--supernodes",
            "3",
            "--flwr-home",
            str(tmp_path / "flwr-home"),
            "--run-config",
            f"strategy='{','.join(EXPECTED)}' result='{result}'",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(result.read_text())
    assert list(results) == list(EXPECTED)
    for strategy, (name, uplink, downlink) in EXPECTED.items():
        out = results[strategy]
        assert out["strategy"] == name and out["uplink"] == uplink, strategy
        assert out["downlink"].startswith(downlink), strategy
        losses = out["eval_loss"]
        assert sorted(map(int, losses)) == [1, 2, 3], strategy
        # the clients' training reached the global model through the codecs: the loss falls
        assert losses["3"] < losses["1"] < 1.5, (strategy, losses)  # all-zero weights: ~2.1
