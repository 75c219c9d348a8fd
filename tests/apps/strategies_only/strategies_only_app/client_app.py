"""A quickstart-shaped ClientApp: plain arrays in, plain arrays out; only ``compression_mod``.

Each node fits a linear model to its own synthetic data by a few gradient steps, so the
handlers know nothing of codecs or of which strategy runs.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from strategies import compression_mod

app = ClientApp(mods=[compression_mod])

TRUE_W = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(8, 4)


def _data(node_id: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(node_id % 1000)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    return x, x @ TRUE_W + 0.5


def _loss(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w + b - y) ** 2))


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    w, b = (a.copy() for a in arrays)
    x, y = _data(context.node_id)
    for _ in range(20):
        err = x @ w + b - y
        w -= 0.05 * (x.T @ err) / len(x)
        b -= 0.05 * err.mean(axis=0)
    content = RecordDict(
        {
            "arrays": ArrayRecord([w, b]),
            "metrics": MetricRecord({"train-loss": _loss(w, b, x, y), "num-examples": len(x)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    w, b = msg.content["arrays"].to_numpy_ndarrays()
    x, y = _data(context.node_id)
    metrics = MetricRecord({"eval-loss": _loss(w, b, x, y), "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
