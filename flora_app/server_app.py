"""flora ServerApp: validate the configuration, run the strategy, keep the results.

The configuration is checked before anything else, so a bad key ends the run with one line
and no training. Bytes are measured on the Grid (``MeteredGrid``), accuracy centrally on the
held-out test set after every round, and both land in the run folder as the run goes. After
every round the server checkpoints into the run folder; ``resume-from`` picks a run up after
its last complete round and continues it as if it had never stopped.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from torch import nn

from flora_app.batchnorm import batchnorm_part_problem, pool_batchnorm_statistics
from flora_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    config_differences,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from flora_app.config import ConfigError, FloraConfig
from flora_app.data import Split, load_dataset
from flora_app.lora import (
    ModelSpec,
    base_fingerprint_of,
    base_parameter_count,
    build_trainable,
    exchanged_state,
    load_exchanged_state,
    load_running_statistics,
    running_statistics,
    save_adapter,
)
from flora_app.metering import MeteredGrid
from flora_app.results import RunRecorder, make_run_dir, resolve_output_path
from flora_app.task import data_spec, model_spec
from flora_app.training import evaluate
from strategies.codecs import decode_blob
from strategies.compression import CompressionStrategy
from strategies.presets import build_strategy
from strategies.wire import numpy_to_record, record_to_numpy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of the configured strategy and write the run folder."""
    try:
        cfg = FloraConfig.from_run_config(context.run_config)
        resume = resume_point(cfg)
    except ConfigError as exc:
        # One readable line first; re-raising marks the run as failed in Flower (a SystemExit
        # would be recorded as a normal finish).
        log(ERROR, "flora: %s", exc)
        raise
    run(grid, cfg, resume)


def resume_point(cfg: FloraConfig) -> Checkpoint | None:
    """The checkpoint ``resume-from`` names, checked against this run's configuration."""
    if not cfg.resume_from:
        return None
    folder = resolve_output_path(cfg.resume_from)
    try:
        ckpt = load_checkpoint(folder)
    except CheckpointError as exc:
        raise ConfigError(f"run-config 'resume-from' = {cfg.resume_from!r}: {exc}") from None
    changed = config_differences(ckpt.run_config, cfg.to_run_config())
    if changed:
        key, saved, now = changed[0]
        raise ConfigError(
            f"run-config '{key}' = {now!r} differs from {saved!r} in the checkpoint of "
            f"{folder}: a resumed run must keep its configuration"
        )
    if ckpt.round >= cfg.num_server_rounds:
        raise ConfigError(
            f"run-config 'num-server-rounds' = {cfg.num_server_rounds}: the run in {folder} "
            f"already completed {ckpt.round} rounds; ask for more to continue it"
        )
    return ckpt


def run(grid: Grid, cfg: FloraConfig, resume: Checkpoint | None = None) -> dict:
    """The whole federated run on ``grid``; returns the summary (also in ``summary.json``)."""
    # Flower's strategies sample nodes with the global ``random``; seeding it makes the
    # sequence of sampled nodes a function of ``seed`` too (a resumed run restores it).
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    dataset = load_dataset(data_spec(cfg))
    spec = model_spec(cfg, dataset)
    model = build_trainable(spec)
    fingerprint = base_fingerprint_of(spec)
    initial = exchanged_state(model, spec)
    strategy = build_strategy(
        cfg.strategy, cfg.fraction_train, cfg.fraction_evaluate, cfg.strategy_settings
    )

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
        run_dir = make_run_dir(cfg.output_dir, cfg.run_name, cfg.strategy)
        recorder = RunRecorder(run_dir, run_info)
    else:
        run_dir = resolve_output_path(cfg.resume_from)
        done = resume.round
        recorder = RunRecorder(run_dir, run_info, history=resume)
        initial = OrderedDict((k, resume.global_arrays[k]) for k in initial)
        strategy.load_state(resume.optimizer, completed_rounds=done)
        restore_rng(resume.python_rng, resume.numpy_rng)
        log(INFO, "flora: resuming %s after round %d of %d", run_dir, done, cfg.num_server_rounds)
    log(INFO, "flora: run folder %s", run_dir)
    log(
        INFO,
        "flora: %s on %s, %d of %d parameters exchanged (%d tensors)",
        cfg.strategy,
        cfg.model,
        recorder.config["exchanged-parameters"],
        total_params,
        len(initial),
    )

    # With a lossy downlink (sparse or quantized), also score what clients actually receive.
    bn_shapes = {k: v.shape for k, v in running_statistics(model, spec).items()}
    received_model = build_trainable(spec) if strategy.downlink.spec != "fp32" else None
    metered = MeteredGrid(grid)
    clock = {"last": time.time()}

    def evaluate_fn(local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = local_round + done  # Flower counts from 1 again in a resumed run
        if local_round == 0 and done:
            metered.take()  # the resumed run's starting point was scored before the stop
            clock["last"] = time.time()
            return None
        dense = record_to_numpy(arrays)
        load_exchanged_state(model, spec, dense)
        bn_parts = _batchnorm_parts(server_round, strategy.take_evaluate_contents(), bn_shapes)
        pooled = pool_batchnorm_statistics(bn_parts)
        load_running_statistics(model, spec, pooled)
        loss, accuracy = evaluate(model, dataset.test)
        if server_round == 0:
            recorder.record_initial(accuracy, loss)
            metered.take()
            clock["last"] = time.time()
            log(INFO, "flora: round 0 (initial) | acc %.4f loss %.4f", accuracy, loss)
            return MetricRecord({"accuracy": accuracy, "loss": loss})
        traffic = metered.take()
        now = time.time()
        record = {
            "round": server_round,
            "rounds_total": cfg.num_server_rounds,
            "accuracy": accuracy,
            "loss": loss,
            "bytes_up": traffic.get("train_up_bytes", 0),
            "bytes_down": traffic.get("train_down_bytes", 0),
            "bytes_eval_up": traffic.get("evaluate_up_bytes", 0),
            "bytes_eval_down": traffic.get("evaluate_down_bytes", 0),
            "clients": traffic.get("train_down_messages", 0),
            "replies": traffic.get("train_up_messages", 0),
            "bn_stats_clients": len(bn_parts),
            **_downlink_accuracy(received_model, strategy, spec, dense, pooled, dataset.test),
            "seconds": now - clock["last"],
            **strategy.take_round_metrics(),
        }
        clock["last"] = now
        log(INFO, "flora: %s", recorder.record_round(record))
        python_rng, numpy_rng = capture_rng()
        save_checkpoint(
            run_dir,
            Checkpoint(
                round=server_round,
                global_arrays=dense,
                optimizer=strategy.state(),
                rounds=recorder.rounds,
                initial=recorder.initial,
                run_config=cfg.to_run_config(),
                python_rng=python_rng,
                numpy_rng=numpy_rng,
                wall_seconds=recorder.elapsed(),
            ),
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    train_config = ConfigRecord(
        {
            "lr": cfg.lr,
            "local-epochs": cfg.local_epochs,
            "batch-size": cfg.batch_size,
            "momentum": cfg.momentum,
            "base-fingerprint": fingerprint,
        }
    )
    strategy.start(
        grid=metered,
        initial_arrays=numpy_to_record(initial),
        num_rounds=cfg.num_server_rounds - done,
        timeout=cfg.round_timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord({"base-fingerprint": fingerprint}),
        evaluate_fn=evaluate_fn,
    )
    # evaluate_fn loaded the final global adapters into ``model`` after the last round.
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


def _batchnorm_parts(
    server_round: int,
    contents: list[tuple[int, RecordDict]],
    shapes: dict[str, tuple[int, ...]],
) -> list[tuple[dict[str, np.ndarray], int]]:
    """The clients' BatchNorm measurements that are fit to pool; the rest are logged and left
    out, as bad training replies are (one NaN would poison every BN layer it touched)."""
    parts = []
    for node, content in contents:
        if "bn-stats" not in content:
            continue
        try:
            stats = record_to_numpy(content["bn-stats"])
            reason = batchnorm_part_problem(stats, content["metrics"].get("bn-examples"), shapes)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"unreadable ({exc})"
        if reason:
            log(
                WARNING,
                "round %d: BatchNorm statistics from node %d rejected: %s",
                server_round,
                node,
                reason,
            )
            continue
        parts.append((stats, int(content["metrics"]["bn-examples"])))
    return parts


def _downlink_accuracy(
    received_model: nn.Module | None,
    strategy: CompressionStrategy,
    spec: ModelSpec,
    dense: dict[str, np.ndarray],
    pooled: dict[str, np.ndarray],
    test: Split,
) -> dict[str, float]:
    """Accuracy of the global model as the downlink codec delivers it (sparse or quantized)."""
    if received_model is None:
        return {}
    received = decode_blob(strategy.downlink.encode(dense))
    load_exchanged_state(received_model, spec, received)
    load_running_statistics(received_model, spec, pooled)
    _, accuracy = evaluate(received_model, test)
    return {"downlink_accuracy": accuracy}
