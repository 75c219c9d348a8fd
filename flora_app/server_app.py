"""flora ServerApp: read the configuration, build the strategy, start it, save the results.

The configuration is checked before anything else, so a bad key ends the run with one line
and no training. Bytes are measured on the Grid (``MeteredGrid``); after every round
``RoundKeeper`` (``flora_app.rounds``) scores the global model, records the round and
checkpoints the run; ``resume-from`` picks a run up after its last complete round.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from logging import ERROR, INFO

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from flora_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_differences,
    load_checkpoint,
    restore_rng,
)
from flora_app.config import ConfigError, FloraConfig
from flora_app.metering import MeteredGrid
from flora_app.ml.data import DatasetUnavailableError, load_dataset
from flora_app.ml.lora import (
    base_fingerprint_of,
    base_parameter_count,
    build_trainable,
    exchanged_state,
    save_adapter,
)
from flora_app.node_order import PartitionOrderedGrid
from flora_app.results import RunRecorder, make_run_dir, resolve_output_path
from flora_app.rounds import RoundKeeper
from flora_app.strategy_factory import build_strategy
from flora_app.task import data_spec, model_spec
from flora_app.tiers import NodeTiers, parse_tiers
from strategies import RoundOffset
from strategies.chain import innermost, strategy_chain
from strategies.link_clock import LinkClock
from strategies.links import PROFILES, Link, node_link
from strategies.optimizer_state import load_optimizer_state
from strategies.privacy import PrivacyAccounting
from strategies.wire import numpy_to_record

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of the configured strategy and write the run folder."""
    try:
        cfg = FloraConfig.from_run_config(context.run_config)
        resume = resume_point(cfg)
        load_dataset(data_spec(cfg))  # a missing dataset stops the run here, before training
    except (ConfigError, DatasetUnavailableError) as exc:
        # One readable line first; re-raising marks the run as failed in Flower (a SystemExit
        # would be recorded as a normal finish).
        log(ERROR, "flora: %s", exc)
        raise
    try:
        run(grid, cfg, resume)
    except CheckpointError as exc:  # the run folder cannot take the round's checkpoint
        log(ERROR, "flora: %s", exc)
        raise


def resume_point(cfg: FloraConfig) -> Checkpoint | None:
    """The checkpoint ``resume-from`` names, checked against this run's configuration."""
    if not cfg.run.resume_from:
        return None
    folder = resolve_output_path(cfg.run.resume_from)
    try:
        ckpt = load_checkpoint(folder)
    except CheckpointError as exc:
        raise ConfigError(f"run-config 'resume-from' = {cfg.run.resume_from!r}: {exc}") from None
    changed = config_differences(ckpt.run_config, cfg.to_run_config())
    if changed:
        key, saved, now = changed[0]
        raise ConfigError(
            f"run-config '{key}' = {now!r} differs from {saved!r} in the checkpoint of "
            f"{folder}: a resumed run must keep its configuration"
        )
    if ckpt.round >= cfg.run.num_server_rounds:
        raise ConfigError(
            f"run-config 'num-server-rounds' = {cfg.run.num_server_rounds}: the run in {folder} "
            f"already completed {ckpt.round} rounds; ask for more to continue it"
        )
    return ckpt


def train_config(cfg: FloraConfig, fingerprint: str) -> ConfigRecord:
    """What every training message tells the nodes (Flower's strategy adds the round)."""
    train = cfg.training
    return ConfigRecord(
        {
            "lr": train.lr,
            "local-epochs": train.local_epochs,
            "batch-size": train.batch_size,
            "momentum": train.momentum,
            "base-fingerprint": fingerprint,
        }
    )


def run(grid: Grid, cfg: FloraConfig, resume: Checkpoint | None = None) -> dict:
    """The whole federated run on ``grid``; returns the summary (also in ``summary.json``)."""
    # flora's strategies sample nodes from ``seed`` themselves (strategies.node_sampling); the
    # global generators are seeded as well for anything else that draws from them.
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    dataset = load_dataset(data_spec(cfg))
    spec = model_spec(cfg, dataset.info)
    model = build_trainable(spec)
    fingerprint = base_fingerprint_of(spec)
    initial = exchanged_state(model, spec)
    # Nodes in partition order (same seed, same run); its partition queries are not metered.
    ordered = PartitionOrderedGrid(grid)
    tiers = parse_tiers(cfg.compression.tiers)
    ranks = parse_tiers(cfg.compression.rank_tiers)
    strategy = build_strategy(
        cfg,
        NodeTiers(tiers, cfg.run.seed, ordered) if tiers else None,
        NodeTiers(ranks, cfg.run.seed, ordered) if ranks else None,
    )
    # What every node rebuilds before its first message (flora_app.client_app's origin), also
    # when resuming: downlink changes to new nodes start from it.
    strategy.set_delta_origin(initial)

    total_params = base_parameter_count(spec)
    run_info = {
        **cfg.to_run_config(),
        "base-fingerprint": fingerprint,
        "exchanged-tensors": len(initial),
        "exchanged-parameters": int(sum(v.size for v in initial.values())),
        "model-parameters": int(total_params),
    }
    done = 0
    if resume is None:
        run_dir = make_run_dir(cfg.run.output_dir, cfg.run.run_name, cfg.run.strategy)
        recorder = RunRecorder(run_dir, run_info)
    else:
        run_dir = resolve_output_path(cfg.run.resume_from)
        done = resume.round
        recorder = RunRecorder(run_dir, run_info, history=resume)
        initial = OrderedDict((k, resume.global_arrays[k]) for k in initial)
        load_optimizer_state(innermost(strategy), resume.optimizer)
        for part in strategy_chain(strategy):  # DP: epsilon continues from the rounds done
            if isinstance(part, PrivacyAccounting):
                part.replay(resume.rounds)
        restore_rng(resume.python_rng, resume.numpy_rng)
        log(
            INFO,
            "flora: resuming %s after round %d of %d",
            run_dir,
            done,
            cfg.run.num_server_rounds,
        )
    log(INFO, "flora: run folder %s", run_dir)
    log(
        INFO,
        "flora: %s on %s, %d of %d parameters exchanged (%d tensors)",
        cfg.run.strategy,
        cfg.model.model,
        recorder.config["exchanged-parameters"],
        total_params,
        len(initial),
    )

    metered = MeteredGrid(ordered)
    if cfg.robustness.link_profile != "none":
        # Beneath the codecs (decoded replies), above node sampling (which keeps the first
        # arrivals); each node's link follows its partition, as its tier does.
        profile = PROFILES[cfg.robustness.link_profile]

        def link_of(node: int) -> Link | None:
            declared = ordered.declared_link(node)  # a deployed device's own (node config)
            if declared is not None:
                return Link(declared[0] * 1e6, declared[1] * 1e6, profile.rtt_s)
            partition = ordered.partition_of(node)
            return None if partition is None else node_link(profile, cfg.run.seed, partition)

        strategy.strategy = LinkClock(
            strategy.strategy, link_of=link_of, bytes_of=metered.train_bytes
        )
    keeper = RoundKeeper(
        model=model,
        spec=spec,
        test=dataset.test,
        strategy=strategy,
        grid=metered,
        recorder=recorder,
        run_dir=run_dir,
        run_config=cfg.to_run_config(),
        num_rounds=cfg.run.num_server_rounds,
        done=done,
    )
    # A resumed run continues the round numbering (schedules, Adam, the clients' round).
    starter = RoundOffset(strategy, done) if done else strategy
    starter.start(
        grid=metered,
        initial_arrays=numpy_to_record(initial),
        num_rounds=cfg.run.num_server_rounds - done,
        timeout=cfg.run.round_timeout,
        train_config=train_config(cfg, fingerprint),
        evaluate_config=ConfigRecord({"base-fingerprint": fingerprint}),
        evaluate_fn=keeper,
    )
    # The keeper loaded the final global adapters into ``model`` after the last round.
    save_adapter(model, spec, run_dir / "adapter")
    summary = recorder.finish()
    log(
        INFO,
        "flora: done | final acc %.4f | up %.2f MB down %.2f MB | %.0f s | %s",
        summary["final_accuracy"] or 0.0,
        summary["bytes_up_total"] / 1e6,
        summary["bytes_down_total"] / 1e6,
        summary["wall_seconds"],
        run_dir,
    )
    return summary
