"""What the server does after every round: score, record, checkpoint.

Flower's ``Strategy.start`` calls an ``evaluate_fn(server_round, arrays)`` once before the first
round and after every round; ``RoundKeeper`` is that callable. Per round it pools the clients'
BatchNorm measurements into the global model, scores it centrally on the held-out test set (and,
with a lossy downlink, scores the model as clients receive it), writes the round's line to
``rounds.jsonl`` with the measured bytes and the strategy's extras, and checkpoints the run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common.logger import log
from torch import nn

from flora_app.checkpoint import Checkpoint, capture_rng, save_checkpoint
from flora_app.metering import MeteredGrid
from flora_app.ml.batchnorm import VAR_SUFFIX, pool_batchnorm_statistics
from flora_app.ml.data import Split
from flora_app.ml.lora import (
    ModelSpec,
    build_trainable,
    load_exchanged_state,
    load_running_statistics,
    running_statistics,
)
from flora_app.ml.training import evaluate
from flora_app.results import RunRecorder
from strategies.chain import innermost, take_round_metrics
from strategies.compression import CompressionStrategy
from strategies.optimizer_state import optimizer_state
from strategies.validation import RejectedReplyError, check_count
from strategies.wire import record_to_numpy

# The largest ``bn-examples`` an evaluate reply may claim for its BatchNorm measurement.
MAX_BN_EXAMPLES = 1_000_000


@dataclass
class RoundKeeper:
    """Flower's ``evaluate_fn`` for a flora run (see the module docstring).

    ``done``: rounds completed before this ``start`` (a resumed run). Flower counts from 1
    again, so the keeper adds them; round 0 of a resumed run was scored before the stop.
    """

    model: nn.Module
    spec: ModelSpec
    test: Split
    strategy: CompressionStrategy
    grid: MeteredGrid
    recorder: RunRecorder
    run_dir: Path
    run_config: dict
    num_rounds: int
    done: int = 0

    def __post_init__(self) -> None:
        self._bn_shapes = {k: v.shape for k, v in running_statistics(self.model, self.spec).items()}
        # With a lossy downlink (sparse or quantized), also score what clients actually receive.
        lossy = self.strategy.downlink.spec != "fp32"
        self._received_model = build_trainable(self.spec) if lossy else None
        self._last = time.time()

    def __call__(self, local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = local_round + self.done
        if local_round == 0 and self.done:
            self._restart_clock()
            return None
        started = time.perf_counter()
        dense = record_to_numpy(arrays)
        load_exchanged_state(self.model, self.spec, dense)
        contents = self.strategy.take_evaluate_contents()
        bn_parts = batchnorm_parts(server_round, contents, self._bn_shapes)
        pooled = pool_batchnorm_statistics(bn_parts)
        load_running_statistics(self.model, self.spec, pooled)
        loss, accuracy = evaluate(self.model, self.test)
        if server_round == 0:
            self.recorder.record_initial(accuracy, loss)
            self._restart_clock()
            log(INFO, "flora: round 0 (initial) | acc %.4f loss %.4f", accuracy, loss)
            return MetricRecord({"accuracy": accuracy, "loss": loss})
        downlink = self._downlink_accuracy(dense, pooled)
        # The central scoring, part of ``seconds``: it grows with the test set, not with the
        # federation (flora_tools.scale_bench also reports rounds without it).
        eval_seconds = time.perf_counter() - started
        traffic = self.grid.take()
        now = time.time()
        record = {
            "round": server_round,
            "rounds_total": self.num_rounds,
            "accuracy": accuracy,
            "loss": loss,
            "bytes_up": traffic.get("train_up_bytes", 0),
            "bytes_down": traffic.get("train_down_bytes", 0),
            "bytes_eval_up": traffic.get("evaluate_up_bytes", 0),
            "bytes_eval_down": traffic.get("evaluate_down_bytes", 0),
            "clients": traffic.get("train_down_messages", 0),
            "replies": traffic.get("train_up_messages", 0),
            "bn_stats_clients": len(bn_parts),
            **downlink,
            "seconds": now - self._last,
            "eval_seconds": eval_seconds,
            **take_round_metrics(self.strategy),
        }
        self._last = now
        log(INFO, "flora: %s", self.recorder.record_round(record))
        self._checkpoint(server_round, dense)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _restart_clock(self) -> None:
        """Round 1's bytes and seconds start now (what came before is set-up, not a round)."""
        self.grid.take()
        self._last = time.time()

    def _downlink_accuracy(
        self, dense: dict[str, np.ndarray], pooled: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Accuracy of the global model as a node sampled for the first time rebuilds it."""
        if self._received_model is None:
            return {}
        received = self.strategy.first_copy(dense)
        load_exchanged_state(self._received_model, self.spec, received)
        load_running_statistics(self._received_model, self.spec, pooled)
        _, accuracy = evaluate(self._received_model, self.test)
        return {"downlink_accuracy": accuracy}

    def _checkpoint(self, server_round: int, dense: dict[str, np.ndarray]) -> None:
        python_rng, numpy_rng = capture_rng()
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                round=server_round,
                global_arrays=dense,
                optimizer=optimizer_state(innermost(self.strategy)),
                rounds=self.recorder.rounds,
                initial=self.recorder.initial,
                run_config=self.run_config,
                python_rng=python_rng,
                numpy_rng=numpy_rng,
                wall_seconds=self.recorder.elapsed(),
            ),
        )


def batchnorm_part_problem(
    stats: Mapping[str, np.ndarray], count: object, shapes: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Why one client's BatchNorm measurement must not be pooled, or None if it is fit."""
    try:
        check_count("bn-examples", count, MAX_BN_EXAMPLES)
    except RejectedReplyError as exc:
        return str(exc)
    if set(stats) != set(shapes):
        return "statistics names differ from the model's"
    for name, value in stats.items():
        if value.shape != tuple(shapes[name]):
            return f"{name!r} has shape {value.shape}, model expects {tuple(shapes[name])}"
        if not np.all(np.isfinite(value)):
            return f"{name!r} holds NaN or Inf"
        if name.endswith(VAR_SUFFIX) and np.any(value < 0):
            return f"{name!r} holds a negative variance"
    return None


def batchnorm_parts(
    server_round: int,
    contents: list[tuple[int, RecordDict]],
    shapes: Mapping[str, tuple[int, ...]],
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
