"""``byzantine-clients``: a test knob that turns some SuperNodes into attackers whose replies
are *valid*.

Unlike ``chaos-clients`` (malformed replies the server must reject), an attacker's reply
decodes, is finite, has the right shapes and an honest ``num-examples``: validation cannot
catch it, only robust aggregation can limit it. The attackers are the partitions
0 .. ``byzantine-clients`` - 1, for the whole run (a real adversary keeps its devices). Attacks:

- ``sign-flip``: the update (trained minus received) is sent negated;
- ``scale``: the update is sent multiplied by ``attack-scale``;
- ``noise``: Gaussian noise with the L2 norm of the real update is sent in its place;
- ``label-flip``: the attacker trains honestly on flipped labels (class c becomes C - 1 - c).

The first three live in ``attack_mod``, placed *inside* ``compression_mod`` so that it sees the
decoded global and the plain trained tensors, and the codec then encodes the attacked reply as
it would any other. Label flipping acts on the data, in the ClientApp's training handler.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from strategies.blocks import leading_block, update_of
from strategies.wire import numpy_to_record, record_to_numpy

# The ``attack`` choices.
ATTACKS = ("sign-flip", "scale", "noise", "label-flip")
UPDATE_ATTACKS = ("sign-flip", "scale", "noise")  # those that rewrite the reply


def is_attacker(partition: int, byzantine_clients: int) -> bool:
    """Whether ``partition`` is one of the run's attackers (partitions 0 .. count - 1)."""
    return 0 <= partition < byzantine_clients


def attacked_update(
    update: OrderedDict[str, np.ndarray], attack: str, scale: float, rng: np.random.Generator
) -> OrderedDict[str, np.ndarray]:
    """What an attacker sends in place of ``update`` (all tensors as one vector)."""
    if attack == "sign-flip":
        return OrderedDict((k, -v) for k, v in update.items())
    if attack == "scale":
        return OrderedDict(
            (k, (v.astype(np.float64) * scale).astype(np.float32)) for k, v in update.items()
        )
    if attack == "noise":
        noise = OrderedDict((k, rng.standard_normal(v.shape)) for k, v in update.items())
        norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values()))
        noise_norm = np.sqrt(sum(float(np.sum(n**2)) for n in noise.values()))
        factor = norm / noise_norm if noise_norm > 0 else 0.0
        return OrderedDict((k, (n * factor).astype(np.float32)) for k, n in noise.items())
    raise ValueError(f"attack {attack!r}: expected one of {', '.join(UPDATE_ATTACKS)}")


def flipped_labels(y: Any, num_classes: int) -> Any:
    """Class c as C - 1 - c (numpy or torch labels): every label wrong, the balance kept."""
    return (num_classes - 1) - y


def _only_arrays(content: RecordDict) -> tuple[str, ArrayRecord] | None:
    records = list(content.array_records.items())
    return records[0] if len(records) == 1 else None


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Rewrite an attacker's training reply as its ``attack`` says; everything else passes."""
    from flora_app.config import FloraConfig  # config lists ATTACKS: imported at call time

    reply = call_next(msg, context)
    cfg = FloraConfig.from_run_config(context.run_config)
    robust = cfg.robustness
    partition = int(context.node_config.get("partition-id", -1))
    if (
        msg.metadata.message_type != "train"
        or reply.has_error()
        or robust.attack not in UPDATE_ATTACKS
        or not is_attacker(partition, robust.byzantine_clients)
    ):
        return reply
    sent, got = _only_arrays(msg.content), _only_arrays(reply.content)
    if sent is None or got is None:
        return reply
    received, (key, record) = record_to_numpy(sent[1]), got
    trained = record_to_numpy(record)
    try:
        update = update_of(trained, received)
    except ValueError:
        return reply
    config = next((r for r in msg.content.config_records.values() if "server-round" in r), {})
    server_round = int(config.get("server-round", 0))
    rng = np.random.default_rng([cfg.run.seed, server_round, partition, 7])
    bad = attacked_update(update, robust.attack, robust.attack_scale, rng)
    reply.content[key] = numpy_to_record(
        OrderedDict(
            (k, (leading_block(received[k], b.shape) + b).astype(np.float32))
            for k, b in bad.items()
        )
    )
    return reply
