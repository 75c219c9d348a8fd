"""A quickstart-shaped ServerApp: read config, build flora's strategies with keyword
arguments, start each in turn on the same grid, save what came out.

``strategy`` names one strategy or several, comma-separated: one ``flwr run`` then exercises
every strategy through the same SuperNodes, each from its own fresh start (the ClientApp keeps
nothing between messages that a strategy relies on)."""

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


def _start(name: str, grid: Grid, num_rounds: int) -> dict:
    strategy = _strategy(name)
    initial = ArrayRecord([np.zeros((8, 4), np.float32), np.zeros(4, np.float32)])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=num_rounds,
        train_config=ConfigRecord({}),
    )
    w, b = result.arrays.to_numpy_ndarrays()
    losses = {int(r): float(m["eval-loss"]) for r, m in result.evaluate_metrics_clientapp.items()}
    return {
        "strategy": type(strategy).__name__,
        "uplink": strategy.uplink,
        "downlink": strategy.downlink.spec,
        "eval_loss": losses,
        "w": w.tolist(),
        "b": b.tolist(),
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    names = str(context.run_config["strategy"]).split(",")
    out = {name: _start(name, grid, rounds) for name in names}
    Path(str(context.run_config["result"])).write_text(json.dumps(out))
