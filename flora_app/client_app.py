"""flora ClientApp: receive adapters, train them locally, send them back.

The handlers are as plain as Flower's quickstart: an fp32 ``ArrayRecord`` in, one out. Wire
codecs are applied around them by ``compression_mod`` as each message's header asks, so this
file knows no strategy and no codec.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flora_app.attacks import attack_mod, flipped_labels, is_attacker
from flora_app.chaos import chaos_mod
from flora_app.config import FloraConfig
from flora_app.ml.batchnorm import measure_batchnorm_statistics
from flora_app.ml.data import Split
from flora_app.ml.lora import (
    ModelSpec,
    base_fingerprint_of,
    build_trainable,
    exchanged_state,
    keep_rank,
    load_exchanged_state,
    rank_block,
    running_statistics,
)
from flora_app.ml.training import evaluate as evaluate_model
from flora_app.task import (
    ASK_KEY,
    ASK_PARTITION,
    load_client_data,
    local_train,
    model_spec,
    partition_of,
)
from flora_app.tiers import TIER_KEY
from strategies.blocks import leading_block, with_block
from strategies.choices import DOWNLINK_MBPS_KEY, RANK_KEY, UPLINK_MBPS_KEY
from strategies.mod import client_clipping_mod, make_compression_mod
from strategies.wire import numpy_to_record, record_to_numpy


@functools.lru_cache(maxsize=2)
def _initial_adapters(spec: ModelSpec) -> OrderedDict[str, np.ndarray]:
    return exchanged_state(build_trainable(spec), spec)


def initial_adapters(context: Context) -> Mapping[str, np.ndarray]:
    """The adapters this node holds before its first message: the run's seeded initial ones,
    built exactly as the ServerApp builds them (``flora_app.ml.lora.build_trainable``), so a
    downlink delta can start from them (``strategies.mod.make_compression_mod``)."""
    cfg = FloraConfig.from_run_config(context.run_config)
    dataset, _, _ = load_client_data(cfg, context.node_config)
    return _initial_adapters(model_spec(cfg, dataset))


# chaos_mod is outermost, so with ``chaos-clients`` it spoils the reply as it would travel;
# attack_mod is inside the compression mod, so the codec encodes the attacked reply, and outside
# client_clipping_mod (DP with dp-clipping='client'), as an attacker would skip the clipping.
app = ClientApp(
    mods=[
        chaos_mod,
        make_compression_mod(origin=initial_adapters),
        attack_mod,
        client_clipping_mod,
    ]
)


class BaseModelMismatchError(RuntimeError):
    """This client rebuilt a different frozen base than the server's."""


def _prepare(msg: Message, context: Context):
    """Config, data and a model loaded with the received adapters, after the base check."""
    cfg = FloraConfig.from_run_config(context.run_config)
    dataset, train_split, val_split = load_client_data(cfg, context.node_config)
    spec = model_spec(cfg, dataset)
    expected = msg.content["config"].get("base-fingerprint")
    local = base_fingerprint_of(spec)
    if expected is not None and expected != local:
        raise BaseModelMismatchError(
            f"node {context.node_id}: frozen base fingerprint {local} differs from the server's "
            f"{expected}; check that seed, model, model-width and the torch version match"
        )
    model = build_trainable(spec)
    arrays = record_to_numpy(msg.content["arrays"])
    rank = msg.content["config"].get(RANK_KEY)
    if rank is not None:  # a node of a smaller rank is sent only its blocks (strategies.blocks)
        arrays = _within_rank(arrays, exchanged_state(model, spec), int(rank))
    load_exchanged_state(model, spec, arrays)
    return cfg, dataset, train_split, val_split, spec, model


def _within_rank(
    arrays: Mapping[str, np.ndarray], full: Mapping[str, np.ndarray], rank: int
) -> OrderedDict[str, np.ndarray]:
    """The received blocks of ``rank`` put into the model's shapes, zero beyond them (the
    components ``keep_rank`` zeroes anyway); anything else is left for the exact load check."""
    out = OrderedDict(arrays)
    for name, value in full.items():
        got = arrays.get(name)
        block = rank_block(name, value.shape, rank)
        if got is not None and got.shape == block != value.shape:
            out[name] = with_block(np.zeros_like(value), got)
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received adapters on this node's partition."""
    cfg, dataset, train_split, _, spec, model = _prepare(msg, context)
    partition, _ = partition_of(context.node_config)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    robust = cfg.robustness
    if robust.attack == "label-flip" and is_attacker(partition, robust.byzantine_clients):
        train_split = Split(train_split.x, flipped_labels(train_split.y, dataset.num_classes))
    rank = config.get(RANK_KEY)  # a smaller rank than the global one (strategies.rank_tiers)
    if rank is not None:
        keep_rank(model, int(rank))
    loss = local_train(
        model,
        cfg,
        dataset,
        train_split,
        server_round=server_round,
        partition=partition,
        overrides=config,
    )
    trained = exchanged_state(model, spec)
    if rank is not None:  # only the components it trained: the leading blocks of its rank
        trained = OrderedDict(
            (k, leading_block(v, rank_block(k, v.shape, int(rank)))) for k, v in trained.items()
        )
    content = RecordDict(
        {
            "arrays": numpy_to_record(trained),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(train_split)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model on this node's validation split, and measure it.

    Besides validation metrics, the reply carries the BatchNorm moments of the received global
    model on this node's training data (``bn-stats``), which the server pools into exact
    statistics for the global model (see ``flora_app.ml.batchnorm``); none when they are frozen.
    """
    cfg, _, train_split, val_split, spec, model = _prepare(msg, context)
    measured = cfg.model.batchnorm_stats == "measured" and measure_batchnorm_statistics(
        model, train_split
    )
    loss, accuracy = evaluate_model(model, val_split)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "val-loss": loss,
                    "val-accuracy": accuracy,
                    "num-examples": max(len(val_split), 1),
                    "bn-examples": len(train_split) if measured else 0,
                }
            )
        }
    )
    if measured:
        content["bn-stats"] = numpy_to_record(running_statistics(model, spec))
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server this node's ``partition-id``, so that it samples by partition and the
    same seed gives the same run (``flora_app.node_order``)."""
    config = msg.content.get("config", {})
    asked = config.get(ASK_KEY)
    if asked != ASK_PARTITION:
        raise ValueError(f"unknown query {asked!r}: this ClientApp answers {ASK_PARTITION!r}")
    partition, _ = partition_of(context.node_config)
    answer = {ASK_PARTITION: partition}
    tier = context.node_config.get(TIER_KEY)
    if isinstance(tier, int) and not isinstance(tier, bool):
        answer[TIER_KEY] = tier  # a deployed device's declared tier (flora_app.tiers)
    for key in (DOWNLINK_MBPS_KEY, UPLINK_MBPS_KEY):  # its declared link (link-profile)
        value = context.node_config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            answer[key] = float(value)
    content = RecordDict({"metrics": MetricRecord(answer)})
    return Message(content=content, reply_to=msg)
