"""A quickstart-shaped ServerApp: read config, build one of flora's strategies with keyword
arguments, start it, save what came out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from strategies import FLASC, FedLoRA, FLoCoRA

app = ServerApp()


def _strategy(name: str):
    sampling = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_available_nodes": 3}
    if name == "fedlora":
        return FedLoRA(**sampling)
    if name == "flocora":
        return FLoCoRA(quant_bits=4, quant_bits_down=8, **sampling)
    if name == "flasc":
        return FLASC(
            density_up=0.5,
            density_down=0.5,
            server_optimizer="sgd",
            server_lr=1.0,
            server_lr_schedule="constant",
            **sampling,
        )
    raise ValueError(f"strategy {name!r}: expected fedlora, flocora or flasc")


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = _strategy(str(context.run_config["strategy"]))
    initial = ArrayRecord([np.zeros((8, 4), np.float32), np.zeros(4, np.float32)])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({}),
    )
    w, b = result.arrays.to_numpy_ndarrays()
    losses = {int(r): float(m["eval-loss"]) for r, m in result.evaluate_metrics_clientapp.items()}
    out = {
        "strategy": type(strategy).__name__,
        "uplink": strategy.uplink,
        "downlink": strategy.downlink.spec,
        "eval_loss": losses,
        "w": w.tolist(),
        "b": b.tolist(),
    }
    Path(str(context.run_config["result"])).write_text(json.dumps(out))
