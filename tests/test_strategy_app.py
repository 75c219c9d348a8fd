"""flora's strategies from someone else's Flower app: built with keyword arguments in a
ServerApp that imports only ``strategies``, with a ClientApp whose only mod is
``compression_mod``, run end to end under ``flwr run`` (tests/apps/strategies_only)."""

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


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_each_strategy_runs_in_a_plain_flower_app(tmp_path: Path, strategy: str) -> None:
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
            f"strategy='{strategy}' result='{result}'",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(result.read_text())
    name, uplink, downlink = EXPECTED[strategy]
    assert out["strategy"] == name and out["uplink"] == uplink
    assert out["downlink"].startswith(downlink)
    losses = out["eval_loss"]
    assert sorted(map(int, losses)) == [1, 2, 3]
    # the clients' training reached the global model through the codecs: the loss falls
    assert losses["3"] < losses["1"] < 1.5  # all-zero weights score about 2.1
