"""What the robust combiners make of one round's real replies, per strategy: the measurement
behind docs/robustness.md's reading of why FLASC is defended by neither trimmed-mean nor
multi-krum.

    python -m flora_tools.defence_probe                     # cpu-fmnist-attacks-pt, seed 0
    python -m flora_tools.defence_probe --configs effnet-pt-flasc-d10 --out probe.json
    python -m flora_tools.defence_probe --from-runs benchmarks/cpu-fmnist-attacks-pt  # late
    python -m flora_tools.defence_probe --table benchmarks/defence-probe  # saved results

For each clean configuration of a bench preset, the nodes that the run of ``--seed`` samples in
round 1 (``strategies.node_sampling``, partitions in order) each train once through the real
ClientApp, mods and codecs included, from the initial global that the server would send. Their
updates, decoded as the server decodes them, then go through Flower's own ``trim_mean`` and
``select_multikrum`` at the settings of the preset's defended rows. With ``--from-runs`` the
nodes of the round after each run's last train from that run's final global instead: the
updates late in training. Each node is sent the exact global (a FLASC node would hold what
its sparse downlink rebuilt, close to it) and has no state from earlier rounds (none is kept
without ``error-feedback``).

What it reports, per strategy:

- ``density`` (share of non-zero coordinates in an update) and ``shared_by`` (over the
  coordinates some update touches, how many of the updates touch each, on average);
- ``trimmed_norm`` / ``trimmed_cosine``: the trimmed mean's norm against the mean's, and the
  cosine between the two (how much honest signal trimming keeps with no attacker at all);
- ``median_norm`` / ``median_cosine``: the same for the coordinate-wise median (what Flower's
  ``FedMedian`` computes, ``np.median`` over the stacked replies, inline in its
  ``aggregate_train``, so not importable);
- ``krum_kept_norm``: the mean norm of the updates multi-krum keeps against all the updates'
  (below 1: it prefers small updates);
- ``flip_dropped``: of the updates multi-krum keeps, the share it drops once that one update
  alone is negated (1: it sees every sign flip; 0: none);
- ``flip_passed``: how much of one negated update's change to the mean gets through the trimmed
  mean (the norm of its change to the trimmed mean against its change to the mean);
- ``top_tensor_share``: the share of the updates' squared norm that their largest tensor holds
  (named in the JSON as ``top_tensor``). Every figure above is over whole updates, so where one
  tensor dominates (the fully trained classifier head of the pretrained rows), it is mostly
  that tensor's;
- ``norm_median`` / ``norm_max``: the honest updates' L2 norms over every exchanged coordinate,
  the scale ``max-update-norm`` is set against.

Results saved before a figure existed show "-" in its column.

Beside a running simulation on a small machine, set ``OMP_NUM_THREADS=1``: with default
threads each node's training took ~75 s instead of ~3 s on 2 cores (oversubscription).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from flora_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_differences,
    load_checkpoint,
)
from flora_app.client_app import app
from flora_app.config import FloraConfig
from flora_app.ml.data import load_dataset
from flora_app.ml.lora import base_fingerprint_of, build_trainable, exchanged_state
from flora_app.server_app import train_config
from flora_app.strategy_factory import build_strategy
from flora_app.task import data_spec, model_spec
from flora_tools.bench import PRESETS, robust_keys, select
from flora_tools.preflight import app_defaults
from strategies.blocks import update_of
from strategies.chain import strategy_chain
from strategies.codecs import decode_blob, get_codec
from strategies.node_sampling import NodeSampling
from strategies.wire import encode_content, make_header, numpy_to_record, record_to_blob

PROBE_CONFIGS = "effnet-pt-fedlora,effnet-pt-flocora-q4,effnet-pt-flasc-d10"
COLUMNS = (
    "density",
    "shared_by",
    "trimmed_norm",
    "trimmed_cosine",
    "median_norm",
    "median_cosine",
    "krum_kept_norm",
    "flip_dropped",
    "flip_passed",
    "top_tensor_share",
    "norm_median",
    "norm_max",
)


def _flat(update: OrderedDict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.astype(np.float64).ravel() for v in update.values()])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / scale if scale > 0 else 0.0


def _kept(updates: np.ndarray, malicious: int, keep: int) -> list[int]:
    """The rows Flower's multi-krum keeps (each row one reply)."""
    contents = [RecordDict({"arrays": ArrayRecord([row])}) for row in updates]
    chosen = select_multikrum(contents, num_malicious_nodes=malicious, num_nodes_to_select=keep)
    return [next(i for i, c in enumerate(contents) if c is pick) for pick in chosen]


def _top_tensor(updates: list[OrderedDict[str, np.ndarray]]) -> tuple[str, float]:
    """The tensor holding most of the updates' squared norm, and its share of it."""
    squares = {
        k: sum(float(np.square(u[k], dtype=np.float64).sum()) for u in updates) for k in updates[0]
    }
    name = max(squares, key=squares.__getitem__)
    total = sum(squares.values())
    return name, squares[name] / total if total > 0 else 0.0


def analyse(
    updates: list[OrderedDict[str, np.ndarray]], trim_fraction: float, malicious: int, keep: int
) -> dict[str, Any]:
    """The probe's figures (the module docstring) for one round's decoded updates."""
    rows = np.stack([_flat(u) for u in updates])
    top_tensor, top_share = _top_tensor(updates)
    n = len(rows)
    touched = rows != 0.0
    union = touched.any(axis=0)
    mean = rows.mean(axis=0)
    trimmed = trim_mean(rows, trim_fraction)
    median = np.median(rows, axis=0)
    norms = np.linalg.norm(rows, axis=1)
    kept = _kept(rows, malicious, keep)
    dropped, passed = [], []
    for i in range(n):
        flipped = rows.copy()
        flipped[i] = -rows[i]
        if i in kept:
            dropped.append(i not in _kept(flipped, malicious, keep))
        to_mean = np.linalg.norm(flipped.mean(axis=0) - mean)
        to_trimmed = np.linalg.norm(trim_mean(flipped, trim_fraction) - trimmed)
        passed.append(to_trimmed / to_mean if to_mean > 0 else 0.0)
    mean_norm = float(np.linalg.norm(mean))
    return {
        "replies": float(n),
        "density": float(touched.mean()),
        "shared_by": float(touched[:, union].sum(axis=0).mean()) if union.any() else 0.0,
        "trimmed_norm": float(np.linalg.norm(trimmed)) / mean_norm if mean_norm > 0 else 0.0,
        "trimmed_cosine": _cosine(trimmed, mean),
        "median_norm": float(np.linalg.norm(median)) / mean_norm if mean_norm > 0 else 0.0,
        "median_cosine": _cosine(median, mean),
        "krum_kept_norm": float(norms[kept].mean() / norms.mean()) if norms.any() else 0.0,
        "flip_dropped": float(np.mean(dropped)) if dropped else 0.0,
        "flip_passed": float(np.mean(passed)),
        "top_tensor": top_tensor,
        "top_tensor_share": top_share,
        "norm_median": float(np.median(norms)),
        "norm_max": float(norms.max()),
    }


def round_updates(
    run_config: dict[str, Any], supernodes: int, start: Checkpoint | None = None
) -> tuple[int, list[int], list[OrderedDict[str, np.ndarray]]]:
    """The round after ``start`` (round 1 without it), the partitions that round of
    ``run_config``'s run samples among ``supernodes`` nodes, and each one's update from
    ``start``'s global (the initial one without it) as the server decodes it: the real
    ClientApp, codecs and all."""
    cfg = FloraConfig.from_run_config(run_config)
    spec = model_spec(cfg, load_dataset(data_spec(cfg)).info)
    initial = exchanged_state(build_trainable(spec), spec)
    server_round = 1
    if start is not None:
        initial = OrderedDict((k, start.global_arrays[k]) for k in initial)
        server_round = start.round + 1
    strategy = build_strategy(cfg)
    sampling = next(p for p in strategy_chain(strategy) if isinstance(p, NodeSampling))
    positions = sampling.positions(server_round, "train", supernodes)
    if positions is None:
        raise ValueError(f"{cfg.run.strategy}: its strategy does not sample by a fraction")
    config = ConfigRecord(
        {**train_config(cfg, base_fingerprint_of(spec)), "server-round": server_round}
    )
    fp32 = get_codec("fp32")
    header = make_header(
        fp32.spec,
        reply_codec=strategy.uplink,
        reply=strategy.reply,
        error_feedback=strategy.error_feedback,
    )
    message = encode_content(
        RecordDict({"arrays": numpy_to_record(initial), "config": config}), fp32, header
    )
    partitions = [int(p) for p in positions]
    updates = []
    for partition in partitions:
        metadata = Metadata(
            run_id=1,
            message_id=f"probe-{partition}",
            src_node_id=0,
            dst_node_id=1 + partition,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=3600.0,
            message_type="train",
        )
        context = Context(
            run_id=1,
            node_id=1 + partition,
            node_config={"partition-id": partition, "num-partitions": supernodes},
            state=RecordDict(),
            run_config=run_config,
        )
        reply = app(Message(metadata=metadata, content=message), context)
        if reply.has_error():
            raise RuntimeError(f"partition {partition}: {reply.error.reason}")
        sent = decode_blob(record_to_blob(reply.content["arrays"]))
        updates.append(sent if strategy.reply == "update" else update_of(sent, initial))
        print(f"  round {server_round}, partition {partition}: trained", flush=True)
    return server_round, partitions, updates


def probe(preset_name: str, names: str, seed: int, runs: Path | None = None) -> dict[str, Any]:
    """Every configuration's figures, with the settings they were taken at; from the final
    checkpoint of each one's run of ``seed`` in the results folder ``runs`` when given."""
    preset = PRESETS[preset_name]
    defaults = app_defaults()
    krum = robust_keys("multi-krum")
    out: dict[str, Any] = {"preset": preset_name, "seed": seed, "configs": {}}
    for config in select(names, preset.sweep):
        run_config = {**defaults, **preset.run_config, **config.keys, "seed": seed}
        start = None
        if runs is not None:
            try:
                start = load_checkpoint(runs / "runs" / f"{config.name}-s{seed}")
            except CheckpointError as exc:  # runs copied without weights have none
                raise SystemExit(f"{config.name}: {exc}") from None
            changed = config_differences(start.run_config, run_config)
            if changed:
                raise SystemExit(f"{config.name}: its run differs from the preset in {changed}")
        robust = FloraConfig.from_run_config({**run_config, **krum}).robustness
        print(f"{config.name}:", flush=True)
        server_round, partitions, updates = round_updates(run_config, preset.supernodes, start)
        figures = analyse(
            updates, robust.trim_fraction, robust.malicious_nodes, robust.multi_krum_select
        )
        out["configs"][config.name] = {
            "round": server_round,
            "partitions": partitions,
            **figures,
        }
        out["settings"] = {
            "trim-fraction": robust.trim_fraction,
            "malicious-nodes": robust.malicious_nodes,
            "multi-krum-select": robust.multi_krum_select,
        }
    return out


def table(results: Sequence[dict[str, Any]]) -> str:
    """Probe results as one markdown table, a row per configuration, seed and round."""
    lines = [
        "| configuration | seed | round | " + " | ".join(COLUMNS) + " |",
        "| --- | --- | --- |" + " --- |" * len(COLUMNS),
    ]
    for result in results:
        for name, figures in result["configs"].items():
            cells = " | ".join(f"{figures[c]:.2f}" if c in figures else "-" for c in COLUMNS)
            lines.append(f"| {name} | {result['seed']} | {figures['round']} | {cells} |")
    return "\n".join(lines)


def folder_table(folder: Path) -> str:
    """The table of every probe result (``--out``) saved in ``folder``, by file name."""
    return table([json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-fmnist-attacks-pt", choices=sorted(PRESETS))
    parser.add_argument("--configs", default=PROBE_CONFIGS, help="comma-separated clean rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-runs",
        type=Path,
        help="a results folder: start from each run's final checkpoint instead of round 1",
    )
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    parser.add_argument("--table", type=Path, help="only print the results saved in a folder")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(folder_table(args.table))
        return
    result = probe(args.preset, args.configs, args.seed, args.from_runs)
    print(table([result]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
