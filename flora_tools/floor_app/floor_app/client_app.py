"""The smallest torch ClientApp: one SGD step of a linear layer on a few random samples.

It imports torch at module level, as any torch ClientApp must, so the floor includes what
every message of a torch app pays in Flower's process-per-message deployment.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _model(msg: Message) -> torch.nn.Linear:
    model = torch.nn.Linear(64, 10)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = _model(msg)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": float(loss), "num-examples": 32}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = _model(msg)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(x), y))
    metrics = MetricRecord({"eval-loss": loss, "num-examples": 32})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
