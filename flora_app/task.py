"""What both apps derive from the configuration: the data to load, the model to build, and
how a client trains it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from flora_app.config import FloraConfig
from flora_app.ml.data import (
    DataInfo,
    DataSpec,
    Split,
    client_splits,
    load_dataset,
    source_stamp,
)
from flora_app.ml.lora import ModelSpec
from flora_app.ml.training import train
from flora_app.node_cache import cached_client_data

# The query a ClientApp answers with its node config's ``partition-id`` (the server asks it
# once per node, ``flora_app.node_order``); here, beside ``partition_of``, so the ClientApp
# knows it without importing server code.
ASK_KEY = "flora.ask"
ASK_PARTITION = "partition-id"


class NodeConfigError(ValueError):
    """A SuperNode was started without the node config this app needs."""


def data_spec(cfg: FloraConfig) -> DataSpec:
    d = cfg.data
    return DataSpec(
        dataset=d.dataset,
        source=d.dataset_source,
        seed=cfg.run.seed,
        synthetic_samples=d.synthetic_samples,
        synthetic_image_size=d.synthetic_image_size,
    )


def model_spec(cfg: FloraConfig, dataset: DataInfo) -> ModelSpec:
    return ModelSpec(
        model=cfg.model.model,
        in_channels=dataset.in_channels,
        num_classes=dataset.num_classes,
        width=cfg.model.model_width,
        seed=cfg.run.seed,
        norm=cfg.model.norm,
        pretrained=cfg.model.pretrained,
        image_size=cfg.model.image_size,
        use_lora=cfg.use_lora,
        lora_r=cfg.lora.lora_r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_mode=cfg.lora.lora_mode,
        lora_freeze_a=cfg.lora.lora_freeze_a,
    )


def partition_of(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the SuperNode's node config, checked."""
    try:
        pid, num = node_config["partition-id"], node_config["num-partitions"]
    except KeyError as exc:
        raise NodeConfigError(
            f"node config lacks {exc.args[0]!r}: start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
    if not (isinstance(pid, int) and isinstance(num, int) and 0 <= pid < num):
        raise NodeConfigError(
            f"node config partition-id={pid!r} num-partitions={num!r}: "
            "expected integers with 0 <= partition-id < num-partitions"
        )
    return pid, num


def node_data_spec(cfg: FloraConfig, node_config: Mapping[str, Any]) -> DataSpec:
    """The run's ``DataSpec``, with this SuperNode's own ``data-path`` if it was given one.

    ``--node-config "data-path=/data/cifar10 ..."`` lets each edge device read its own local
    copy (CIFAR-10's Hub format, like ``dataset-source``) instead of the run-wide source; the
    device still takes partition ``partition-id`` of ``num-partitions`` of it (use
    ``partition-id=0 num-partitions=1`` when the local copy already is this device's share).
    """
    spec = data_spec(cfg)
    path = node_config.get("data-path")
    if path is None or path == "":
        return spec
    if cfg.data.dataset != "cifar10":
        raise NodeConfigError(
            f"node config data-path={path!r}: only for dataset 'cifar10', not {cfg.data.dataset!r}"
        )
    return dataclasses.replace(spec, source=str(path))


def load_client_data(
    cfg: FloraConfig, node_config: Mapping[str, Any]
) -> tuple[DataInfo, Split, Split]:
    """What this node's dataset is like, and its train and validation splits: from the node's
    disk cache when it has them (``flora_app.node_cache``: a deployment starts a process per
    message), else loaded (once per process) and partitioned."""
    pid, num = partition_of(node_config)
    spec = node_data_spec(cfg, node_config)
    d = cfg.data

    def build() -> tuple[DataInfo, Split, Split]:
        dataset = load_dataset(spec)
        train, val = client_splits(
            dataset, pid, num, d.partitioner, d.dirichlet_alpha, d.val_fraction, cfg.run.seed
        )
        return dataset.info, train, val

    key = {
        "data": dataclasses.asdict(spec),
        "files": source_stamp(spec),
        "partition": [pid, num],
        "partitioner": d.partitioner,
        "dirichlet-alpha": d.dirichlet_alpha,
        "val-fraction": d.val_fraction,
        "seed": cfg.run.seed,
    }
    return cached_client_data(key, build)


def local_train(
    model: torch.nn.Module,
    cfg: FloraConfig,
    dataset: DataInfo,
    split: Split,
    *,
    server_round: int,
    partition: int,
    overrides: Mapping[str, Any] | None = None,
) -> float:
    """One client's local training, as the run-config asks and the server's per-round
    ``overrides`` (``local-epochs``, ``batch-size``, ``lr``, ``momentum``) change; its mean loss.

    Its seed follows (run seed, round, partition), never the node id, so a partition trains
    the same way in every run and in every tool that replays a client (``codec_bench``)."""
    local = dict(overrides or {})
    t = cfg.training
    seed = np.random.SeedSequence([cfg.run.seed, server_round, partition]).generate_state(1)[0]
    return train(
        model,
        split,
        epochs=int(local.get("local-epochs", t.local_epochs)),
        batch_size=int(local.get("batch-size", t.batch_size)),
        lr=float(local.get("lr", t.lr)),
        momentum=float(local.get("momentum", t.momentum)),
        augment=dataset.augment,
        seed=int(seed),
        frozen_batchnorm=cfg.model.batchnorm_stats == "frozen",
    )
