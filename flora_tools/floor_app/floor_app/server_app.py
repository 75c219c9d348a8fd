"""FedAvg over the trivial ClientApp; writes each round's wall seconds to ``result``."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class _Timed(FedAvg):
    """FedAvg that stamps the start of every round (its training configuration)."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.starts: list[float] = []

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.starts.append(time.monotonic())
        return super().configure_train(server_round, arrays, config, grid)


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = _Timed(
        fraction_train=float(context.run_config["fraction-train"]),
        fraction_evaluate=float(context.run_config["fraction-evaluate"]),
        min_available_nodes=2,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(torch.nn.Linear(64, 10).state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({}),
    )
    stamps = [*strategy.starts, time.monotonic()]
    seconds = [b - a for a, b in itertools.pairwise(stamps)]
    Path(str(context.run_config["result"])).write_text(json.dumps({"seconds": seconds}))
