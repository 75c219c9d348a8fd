"""``make bench``: the papers' comparison, accuracy against measured bytes, in one command.

Runs a sweep of configurations on one federation, one or more seeds each, every run a real
``flwr run`` through ``flora_tools.run_simulation`` (local simulation SuperLink, free ports,
cleaned up after), one at a time; then measures each model's client-side training memory in a
fresh process (``flora_tools.memory_probe``) and writes ``report.md`` / ``report.json`` and two
plots (``flora_tools.bench_report``) next to every run's own folder::

    python -m flora_tools.bench                       # the CPU sweep below, seed 0
    python -m flora_tools.bench --seeds 3             # seeds 0, 1, 2: mean ± 95 % interval
    python -m flora_tools.bench --preset cpu-fmnist --list     # a preset's sweep and seeds
    python -m flora_tools.bench --configs fedavg,flocora-q4 --rounds 10 --out outputs/b
    python -m flora_tools.bench --report-only --out outputs/b   # rebuild the report
    python -m flora_tools.bench --headline fedavg,fedlora,flocora-q4 --out outputs/b  # docs table
    python -m flora_tools.bench --headline fedavg,fedlora --link --out outputs/b  # over edge links
    python -m flora_tools.bench --headline fedlora,fedlora-dp1 --dp --out outputs/b  # ε beside acc
    python -m flora_tools.bench --preset cifar10-paper          # FLoCoRA's setup, needs the Hub

The sweep (``SWEEP``): ``fedavg`` (full model); ``fedlora`` r = 8, 16, 32 (alpha = 16 r, as
FLoCoRA); ``flocora`` r = 16 with 8 / 4 / 2-bit uplink and 8-bit both ways; ``flasc`` with
uplink density 0.25 / 0.1 / 0.05 (downlink 0.25), and 0.1 with 8-bit values; and error
feedback on the 2-bit uplink, where quantization error is largest (the variant docs/benchmark.md's
runs measured). Every configuration sets its distinguishing keys explicitly; the rest (e.g.
FLASC's server optimizer and rate) are the app's ``pyproject.toml`` defaults, and each run's
resolved ``config.json`` is what the report prints.

The CPU preset (``cpu-digits``) is the issue's federation: digits, ResNet-8 width 64, 100
SuperNodes, 10 sampled per round, Dirichlet(0.5) label skew. Why these rounds and epochs:

- digits has 1,437 train images; 100 Dirichlet partitions hold 5-30 (median 13) after the
  10 % validation hold-out (flora_app.ml.data lowers flwr-datasets' minimum partition size until
  the split exists; no client is empty, 1-3 have no validation images, which the client
  handles). One local epoch is therefore a single SGD step, and a round's cost is almost all
  fixed per-message work (Ray dispatch, model build, codecs, evaluation), not training.
- so ``local-epochs = 5`` (FLoCoRA's own value) costs little more than 1 and makes each round
  five steps of progress; ``fraction-evaluate = 0.1`` (10 clients measure the global model's
  BatchNorm statistics, about 120 images) halves the evaluate phase against 0.2.
- ``num-server-rounds = 25``, from measurements (docs/benchmark.md; taken while other
  simulations shared the 2 cores, so wall times were inflated 2-4x and CPU seconds are the
  firmer number): fedlora r=16 on this federation first passes 90 % at round 14, is at
  90-95 % from round 20 and at its 93-98 % plateau from about round 27 (60-round run).
  Per ``flwr run``, start-up to the end of round 1 (SuperLink, Ray, two ClientApp actors
  importing torch and peft) costs 53-72 CPU-s and teardown ~5; a later round costs 4.0 CPU-s
  (fedlora), 5.3 (fedavg), 7.0 (flasc, which also scores its sparse download). The app's
  older 10-node runs did 4.7 CPU-s rounds in 2.2 s of wall time, i.e. both cores busy. For
  13 runs that gives about 13 x 45-55 s of start-up plus 24 x 32 s of later rounds: 21-26
  minutes with the memory probes, under 30; 30 rounds would be 25-30, too close to it.
  100 simulated SuperNodes start as cheaply as 10 (53 vs 54 CPU-s to the end of round 1).

Seeds: ``--seeds N`` runs seeds 0..N-1 of every configuration; a configuration with its own
``seeds`` runs at least that many (``cpu-fmnist``: the headline rows 3, the rest 1), so the
rows a comparison rests on get confidence intervals without tripling the whole sweep. A
preset may carry its own sweep (``BenchPreset.sweep``, default ``SWEEP``); ``--configs`` and
``--list`` work on the chosen preset's.

``cpu-fmnist`` is Fashion-MNIST on ResNet-8 width 16 with GroupNorm (FLoCoRA's normalisation),
100 SuperNodes, 10 per round, Dirichlet(0.5): fedavg, fedlora, FLoCoRA 8/4/2-bit and 8-bit
both ways, FLASC densities 0.25/0.1/0.05, and ImageNet-pretrained EfficientNet-Lite0 (BatchNorm,
alpha 16 as FLASC) with fedlora / FLoCoRA 4-bit / FLASC 0.1 next to the same model trained
from scratch, so the report shows what pretraining buys. Headline rows run 3 seeds, the rest
one; jobs go seed by seed, so a sweep stopped early (it resumes where it stopped) already has a
whole table of seed 0. Why its width, rank, epochs and rounds: the comment in the preset.

``cifar10-paper`` is FLoCoRA's setup (CIFAR-10, ResNet-8, 100 clients, 10 per round,
Dirichlet 0.5, 5 local epochs, 100 rounds, batch 32, SGD 0.01 Nesterov). It needs the Hugging
Face Hub (or ``--set "dataset-source='/path/to/copy'"``); local training and evaluation use
CUDA when torch sees a GPU (``flora_app.ml.training.select_device``). Ray would hide the GPU
from ClientApp actors that ask for no GPU, so this preset sets
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1`` and all actors share it. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flora_tools.bench_report import (
    DP_COLUMNS,
    HEADLINE_COLUMNS,
    LINK_COLUMNS,
    Group,
    Run,
    headline_table,
    write_report,
)
from flora_tools.deployment.processes import wait_or_kill
from flora_tools.preflight import (
    RunConfigSyntaxError,
    app_defaults,
    parse_run_config,
    run_config_problem,
)

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = "flora_tools.run_simulation"  # run as ``python -m``
HEARTBEAT_FAILURE = "No heartbeat received"


@dataclass(frozen=True)
class SweepConfig:
    """One configuration of the sweep: a name, the run-config keys that make it and, where
    it needs more seeds than the rest (a headline row), at least how many (None: ``--seeds``)."""

    name: str
    keys: dict[str, Any]
    seeds: int | None = None


def seeds_for(config: SweepConfig, floor: int) -> int:
    """Seeds to run for ``config``: ``--seeds`` is the floor for every configuration, its own
    ``seeds`` a minimum on top (so ``--seeds 2`` gives 1-seed rows two, and 3-seed rows 3)."""
    return floor if config.seeds is None else max(floor, config.seeds)


SWEEP: tuple[SweepConfig, ...] = (
    SweepConfig("fedavg", {"strategy": "fedavg"}),
    SweepConfig("fedlora-r8", {"strategy": "fedlora", "lora-r": 8, "lora-alpha": 128.0}),
    SweepConfig("fedlora-r16", {"strategy": "fedlora", "lora-r": 16, "lora-alpha": 256.0}),
    SweepConfig("fedlora-r32", {"strategy": "fedlora", "lora-r": 32, "lora-alpha": 512.0}),
    *(
        SweepConfig(
            f"flocora-q{bits}",
            {"strategy": "flocora", "quant-bits": bits, "quant-bits-down": 32},
        )
        for bits in (8, 4, 2)
    ),
    SweepConfig("flocora-q8-down8", {"strategy": "flocora", "quant-bits": 8, "quant-bits-down": 8}),
    *(
        SweepConfig(
            f"flasc-d{round(100 * density):02d}",
            {
                "strategy": "flasc",
                "density-up": density,
                "density-down": 0.25,
                "sparse-value-bits": 32,
            },
        )
        for density in (0.25, 0.1, 0.05)
    ),
    SweepConfig(
        "flasc-d10-v8",
        {"strategy": "flasc", "density-up": 0.1, "density-down": 0.25, "sparse-value-bits": 8},
    ),
    SweepConfig(
        "flocora-q2-ef",
        {"strategy": "flocora", "quant-bits": 2, "quant-bits-down": 32, "error-feedback": True},
    ),
)


@dataclass(frozen=True)
class BenchPreset:
    """A federation: run-config keys shared by every configuration, how to run it, and the
    configurations to compare on it (a preset's question may need its own rows)."""

    name: str
    run_config: dict[str, Any]
    supernodes: int
    target_accuracy: float
    env: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    sweep: tuple[SweepConfig, ...] = SWEEP


_COMMON = {
    "model": "resnet8",
    "model-width": 64,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "fraction-train": 0.1,
    "fraction-evaluate": 0.1,
    "local-epochs": 5,
    "batch-size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "lora-r": 16,
    "lora-alpha": 256.0,
}

# Pretrained rows: ImageNet EfficientNet-Lite0 keeps its BatchNorm (its statistics are part of
# what was pretrained) and a smaller LoRA scale, alpha 16 with r 16, as FLASC fine-tunes.
# FLASC's setting: LoRA fine-tuning of a pretrained network (r = alpha = 16, as FLASC). Inputs
# are resized to 32 x 32 (image-size): at the default 64 a round costs ~2.5x more on 2 cores,
# and 32 keeps the whole sweep near 150 minutes. Fewer rounds than the ResNet rows: a
# pretrained model starts far ahead (the from-scratch row shows how far).
_EFFNET = {
    "model": "efficientnet-lite0",
    "pretrained": True,
    "norm": "batch",
    "image-size": 32,
    "lora-r": 16,
    "lora-alpha": 16.0,
    "local-epochs": 1,
    "num-server-rounds": 8,
    # The pretrained statistics serve throughout: measured federated statistics made this row
    # peak at round 4 and fall ~20 points (the bn-measured row keeps that run).
    "batchnorm-stats": "frozen",
}


def _flocora(bits: int, down: int = 32) -> dict[str, Any]:
    return {"strategy": "flocora", "quant-bits": bits, "quant-bits-down": down}


def _flasc(density: float) -> dict[str, Any]:
    return {
        "strategy": "flasc",
        "density-up": density,
        "density-down": 0.25,
        "sparse-value-bits": 32,
    }


def _frontier(up: int, down: int) -> dict[str, Any]:
    """Every technique past both papers at once: ``up`` bits up, the change from each node's
    copy at ``down`` bits down, 1-D tensors quantized too, A frozen (never sent), then zstd."""
    return {
        **_flocora(up, down),
        **_EFFNET,
        "downlink-delta": True,
        "quant-vectors": "quant",
        "lora-freeze-a": True,
        "entropy-coder": "zstd",
    }


# cpu-fmnist: the rows the comparison's claims rest on get 3 seeds, the variants 1.
FMNIST_SWEEP: tuple[SweepConfig, ...] = (
    SweepConfig("fedavg", {"strategy": "fedavg"}, seeds=3),
    SweepConfig("fedlora", {"strategy": "fedlora"}, seeds=3),
    # What GroupNorm (the authors' choice, every other ResNet row) changes against BatchNorm
    # with flora's federated BatchNorm statistics.
    SweepConfig("fedlora-batchnorm", {"strategy": "fedlora", "norm": "batch"}),
    SweepConfig("flocora-q8", _flocora(8)),
    SweepConfig("flocora-q4", _flocora(4), seeds=3),
    SweepConfig("flocora-q2", _flocora(2)),
    SweepConfig("flocora-q8-down8", _flocora(8, down=8), seeds=3),
    SweepConfig("flasc-d25", _flasc(0.25)),
    SweepConfig("flasc-d10", _flasc(0.1), seeds=3),
    SweepConfig("flasc-d05", _flasc(0.05)),
    SweepConfig("effnet-pt-fedlora", {"strategy": "fedlora", **_EFFNET}, seeds=3),
    SweepConfig(
        "effnet-pt-fedlora-bn-measured",
        {"strategy": "fedlora", **_EFFNET, "batchnorm-stats": "measured"},
    ),
    SweepConfig("effnet-pt-flocora-q4", {**_flocora(4), **_EFFNET}, seeds=3),
    SweepConfig("effnet-pt-flasc-d10", {**_flasc(0.1), **_EFFNET}, seeds=3),
    SweepConfig(
        "effnet-scratch-fedlora",
        # A random network has no statistics worth freezing: measured, as the ResNet rows.
        {"strategy": "fedlora", **_EFFNET, "pretrained": False, "batchnorm-stats": "measured"},
        seeds=1,
    ),
    # Issue 14, past both papers, in the pretrained setting (where Δ is measurable): each new
    # technique on its own, then the frontier. The entropy stage is lossless (the same run as
    # without it, bytes aside), so one seed measures it; FedAvg's row is the byte reference.
    SweepConfig("effnet-pt-fedavg", {"strategy": "fedavg", **_EFFNET}, seeds=1),
    SweepConfig(
        "effnet-pt-flocora-q4-zstd", {**_flocora(4), **_EFFNET, "entropy-coder": "zstd"}, seeds=1
    ),
    SweepConfig(
        "effnet-pt-flocora-q4-vec", {**_flocora(4), **_EFFNET, "quant-vectors": "quant"}, seeds=3
    ),
    SweepConfig(
        "effnet-pt-ffa-flocora-q4", {**_flocora(4), **_EFFNET, "lora-freeze-a": True}, seeds=3
    ),
    SweepConfig(
        "effnet-pt-flasc-d10-v8-zstd",
        {**_flasc(0.1), **_EFFNET, "sparse-value-bits": 8, "entropy-coder": "zstd"},
        seeds=3,
    ),
    # Adaptive precision at the 4-bit row's bytes: the 408,633 B of a 4-bit effnet update
    # (docs/results.md, entropy stage), each tensor's width in 1..8 chosen to fit them.
    SweepConfig(
        "effnet-pt-flocora-adaptive-q4-bytes",
        {**_flocora(8), **_EFFNET, "uplink-budget-bytes": 408_633},
        seeds=3,
    ),
    # The broadcast, FLoCoRA's biggest message once the uplink is 4-bit: coded directly, or
    # as the change from each node's own copy (downlink-delta) at the same and at half the bits.
    SweepConfig("effnet-pt-flocora-q4-down4", {**_flocora(4, down=4), **_EFFNET}, seeds=1),
    SweepConfig(
        "effnet-pt-flocora-q4-down4-delta",
        {**_flocora(4, down=4), **_EFFNET, "downlink-delta": True},
        seeds=1,
    ),
    SweepConfig(
        "effnet-pt-flocora-q4-down2-delta",
        {**_flocora(4, down=2), **_EFFNET, "downlink-delta": True},
        seeds=3,
    ),
    SweepConfig("effnet-pt-frontier", _frontier(4, 2), seeds=3),
    # Toward 200x (0.135 MB a client a round): the frontier sends 0.133 MB up and 0.083 down
    # (seeds 0-2), so both directions must shrink: 2 bits up, then 1 bit down as well.
    SweepConfig("effnet-pt-frontier-q2", _frontier(2, 2), seeds=3),
    SweepConfig("effnet-pt-frontier-q2-down1", _frontier(2, 1), seeds=3),
    # Back toward 100x at less accuracy: of the frontier's techniques only the 2-bit change
    # down cost points on its own (-2.2, 1 seed), and 2 bits up cost nothing against 4; 2 up
    # and a 4-bit change down is about 0.25 MB a client a round, ~110x.
    SweepConfig("effnet-pt-frontier-q2-down4", _frontier(2, 4), seeds=3),
    # The same with each uplink tensor's width chosen for the least error (1..8 bits) within
    # the bytes of 3-bit codes everywhere (142,640 B for these tensors, before zstd): at 2-bit
    # bytes the allocator can only give every tensor 2 bits, and at the 4-bit row's bytes
    # adaptive widths scored +1.0 point over fixed 4 bits on every seed.
    SweepConfig(
        "effnet-pt-frontier-adaptive-down4",
        {**_frontier(8, 4), "uplink-budget-bytes": 142_640},
        seeds=3,
    ),
)

_FMNIST = {
    "dataset": "fashion-mnist",
    "model": "resnet8",
    # Measured here (2 cores, 10 clients a round): ResNet-8 width 16 rounds take ~9 s
    # (LoRA) at 1 local epoch, ~14 s at 2; 19 ResNet runs x 20 rounds + 10 EfficientNet
    # runs fit the ~150-minute budget. r = 4 keeps FLoCoRA's rank-to-width ratio (r = 16
    # at width 64) and alpha = 16 r; r = 16 at width 16 would send more than the convs.
    "model-width": 16,
    "norm": "group",  # FLoCoRA's ResNet-8; the EfficientNet rows set "batch"
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "fraction-train": 0.1,
    "fraction-evaluate": 0.05,
    "local-epochs": 2,
    "num-server-rounds": 20,
    "batch-size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "lora-r": 4,
    "lora-alpha": 64.0,
}


# cpu-fmnist-attacks (issue 17): the cpu-fmnist federation with valid but malicious replies
# from partitions 0..N-1 (byzantine-clients N of 100 nodes = N %). Seed 0 runs the whole grid
# before any second seed: first the clean rows (the same configurations as cpu-fmnist's, so
# those runs can be copied over: the same seed gives the same run), then 20 % sign-flip and
# scaling against every defence, then the other shares and attacks against the mean and the
# trimmed mean. The 20 % rows of the two defences expected to hold get 3 seeds.
_ATTACKED_STRATEGIES = {"fedlora": {"strategy": "fedlora"}, "flocora-q4": _flocora(4)}
_ATTACKED_STRATEGIES["flasc-d10"] = _flasc(0.1)
# Krum's family assumes f Byzantine replies per round: 2 of the 10 sampled (20 %); multi-krum
# averages the 6 best-scored replies.
_ROBUST_KEYS = {
    "krum": {"malicious-nodes": 2},
    "multi-krum": {"malicious-nodes": 2, "multi-krum-select": 6},
}


def robust_keys(aggregation: str) -> dict[str, Any]:
    """The keys of one aggregation choice (Krum's family needs its assumptions too)."""
    return {"aggregation": aggregation, **_ROBUST_KEYS.get(aggregation, {})}


def _attacked(
    attack: str,
    share: int,
    aggregation: str,
    seeds: int | None = None,
    prefix: str = "",
    model: dict[str, Any] | None = None,
) -> tuple[SweepConfig, ...]:
    return tuple(
        SweepConfig(
            f"{prefix}{name}-{attack}{share}-{aggregation}",
            {
                **keys,
                **(model or {}),
                "byzantine-clients": share,
                "attack": attack,
                **robust_keys(aggregation),
            },
            seeds=seeds,
        )
        for name, keys in _ATTACKED_STRATEGIES.items()
    )


def _other_attacks(
    prefix: str = "", model: dict[str, Any] | None = None
) -> tuple[SweepConfig, ...]:
    """The rest of the issue's grid, one seed each: the other attacker shares (10 and 30 %)
    and the other attacks (noise, label flipping), against the mean and the trimmed mean."""
    return tuple(
        row
        for attack, share in (
            ("sign-flip", 10),
            ("sign-flip", 30),
            ("noise", 20),
            ("label-flip", 20),
        )
        for aggregation in ("mean", "trimmed-mean")
        for row in _attacked(attack, share, aggregation, None, prefix, model)
    )


ATTACK_SWEEP: tuple[SweepConfig, ...] = (
    *(SweepConfig(name, keys, seeds=3) for name, keys in _ATTACKED_STRATEGIES.items()),
    *(
        row
        for attack in ("sign-flip", "scale")
        for aggregation, seeds in (("mean", 1), ("trimmed-mean", 3), ("multi-krum", 3))
        for row in _attacked(attack, 20, aggregation, seeds)
    ),
    *(row for attack in ("sign-flip", "scale") for row in _attacked(attack, 20, "median")),
    *_other_attacks(),
)


# cpu-fmnist-attacks-pt (issue 17): the same attacks on the pretrained EfficientNet-Lite0 rows.
# The ResNet-8 rows from scratch are too noisy to show a 2-point effect: their clean seeds span
# 37-52 % (fedlora) and 29-50 % (FLoCoRA), while the pretrained clean rows span 68-75 %. The
# clean rows are cpu-fmnist's, so its runs stand for them. Seed 0 first takes 20 % sign-flip
# against the mean and the two defences expected to hold, then each defence without attackers
# (what the defence itself costs, so that an attacked row's loss is not all put on the attack),
# then scaling, and scaling against the plain mean under an update-norm bound, then the
# median, then the rest of the grid as in cpu-fmnist-attacks.
_PT = "effnet-pt-"


def _defended(aggregation: str) -> tuple[SweepConfig, ...]:
    return tuple(
        SweepConfig(
            f"{_PT}{name}-{aggregation}",
            {**keys, **_EFFNET, **robust_keys(aggregation)},
        )
        for name, keys in _ATTACKED_STRATEGIES.items()
    )


# FLASC's server Adam or its sparsity: which one the defences fail on. defence_probe finds
# trimmed-mean and multi-krum treat FLASC's round-1 updates as they treat the dense ones (as
# many coordinates shared, as many sign flips dropped), so these rows swap Adam for the plain
# mean of the updates at full step (FedAvgM without momentum at server-lr 1, as fedlora
# applies its mean): clean, attacked under the mean, and multi-krum without attackers.
_FLASC_SGD = {
    **_flasc(0.1),
    **_EFFNET,
    "server-optimizer": "sgd",
    "server-lr": 1.0,
    "server-lr-schedule": "constant",
}
_FLASC_SGD_ROWS = (
    SweepConfig(f"{_PT}flasc-d10-sgd", _FLASC_SGD),
    SweepConfig(
        f"{_PT}flasc-d10-sgd-sign-flip20-mean",
        {**_FLASC_SGD, "byzantine-clients": 20, "attack": "sign-flip", **robust_keys("mean")},
    ),
    SweepConfig(f"{_PT}flasc-d10-sgd-multi-krum", {**_FLASC_SGD, **robust_keys("multi-krum")}),
)

# The update-norm bound against scaling: defence_probe measures the honest round-1 updates at
# norm 1.23-1.35 (median) and at most 1.93 for every strategy, so a bound of 5 rejects a reply
# scaled by 10 while leaving 2.6x headroom over the largest honest one; each round's
# rejected_replies then counts the attackers sampled, or the honest replies wrongly refused.
# The best choice against scaling, so a headline row: 3 seeds.
_NORM_BOUND = {"max-update-norm": 5.0, "update-norm-action": "reject"}
_BOUNDED_ROWS = tuple(
    SweepConfig(f"{row.name}-bound5", {**row.keys, **_NORM_BOUND}, seeds=3)
    for row in _attacked("scale", 20, "mean", None, _PT, _EFFNET)
)

# The median-direction filter against sign flips: a flipped update keeps an honest norm, but
# its cosine with the round's coordinate-wise median update is negative, while an honest one's
# is positive; min-update-cosine 0 drops the former and, where no honest reply is dropped,
# leaves the plain mean bit for bit (so no attacker, no cost). 3 seeds against 20 % sign-flip
# (a headline row); without attackers, against label flipping, and against 30 % sign-flip (where
# a round of 10 often holds 3-6 attackers, past the median's majority), seed 0.
_DIRECTION = {"min-update-cosine": 0.0}


def _filtered_rows(suffix: str, keys: dict[str, Any]) -> tuple[SweepConfig, ...]:
    """A filter's headline rows: against 20 % sign-flip (3 seeds), and without attackers."""
    return (
        *(
            SweepConfig(f"{row.name}-{suffix}", {**row.keys, **keys}, seeds=3)
            for row in _attacked("sign-flip", 20, "mean", None, _PT, _EFFNET)
        ),
        *(
            SweepConfig(f"{_PT}{name}-{suffix}", {**strategy, **_EFFNET, **keys})
            for name, strategy in _ATTACKED_STRATEGIES.items()
        ),
    )


_DIRECTION_ROWS = (
    *_filtered_rows("cos0", _DIRECTION),
    *(
        SweepConfig(f"{row.name}-cos0", {**row.keys, **_DIRECTION})
        for attack, share in (("label-flip", 20), ("sign-flip", 30))
        for row in _attacked(attack, share, "mean", None, _PT, _EFFNET)
    ),
)
# The same filter with each reply's cosine the median of its tensors' cosines
# (update-cosine-scope 'tensor'): over the whole update the classifier head, most of its norm,
# decides it, and honest non-IID heads disagree; benchmarks/defence-probe/attack_cosines.py
# measured one round where it separates every sign flip from every honest reply and the whole
# update misses one. 3 seeds against 20 % sign-flip, and without attackers (seed 0).
_TENSOR_DIRECTION_ROWS = _filtered_rows("tcos0", {**_DIRECTION, "update-cosine-scope": "tensor"})

_PT_DEFENCES = (("mean", 1), ("trimmed-mean", 3), ("multi-krum", 3))
ATTACK_PT_SWEEP: tuple[SweepConfig, ...] = (
    *(SweepConfig(f"{_PT}{n}", {**k, **_EFFNET}, seeds=3) for n, k in _ATTACKED_STRATEGIES.items()),
    *(
        row
        for agg, seeds in _PT_DEFENCES
        for row in _attacked("sign-flip", 20, agg, seeds, _PT, _EFFNET)
    ),
    *(row for aggregation in ("trimmed-mean", "multi-krum") for row in _defended(aggregation)),
    *(
        row
        for agg, seeds in _PT_DEFENCES
        for row in _attacked("scale", 20, agg, seeds, _PT, _EFFNET)
    ),
    *_BOUNDED_ROWS,
    *_DIRECTION_ROWS,
    *_TENSOR_DIRECTION_ROWS,
    *(
        row
        for attack in ("sign-flip", "scale")
        for row in _attacked(attack, 20, "median", 1, _PT, _EFFNET)
    ),
    *_other_attacks(_PT, _EFFNET),
    *_FLASC_SGD_ROWS,
)


# cpu-fmnist-dp (issue 15): central DP in the pretrained setting, where the clean rows are
# stable; accuracy against ε for each strategy. Clipping at 5 first; measured, no reply of the
# noise-0.03 runs reached it (clipped_replies 0 in every round), so 5 only scales the noise up.
# The clip-1 rows spend the same ε as noise 0.1 at a fifth of its noise; at clip 1 most
# updates after round 1 are not clipped either (1-5 of 10 a round for fedlora and FLoCoRA, 4-7
# for FLASC), hence clip 0.3 at noise 0.3 (ε 68, about a twelfth of noise 0.1's): the least
# noise yet for the least ε. 10 of 100 clients a round is far from the thousands DP-FL usually
# averages: the noise on the mean is z * C / 10 per coordinate, so expect usable accuracy only
# at large ε.
_DP_STRATEGIES = {
    "fedlora": {"strategy": "fedlora"},
    "flocora-q4": _flocora(4),
    "flasc-d10": _flasc(0.1),
}
_DP_CLIP = 5.0  # the first rows' clipping norm; their names leave it out
_DP_SETTINGS = (
    (0.03, _DP_CLIP),
    (0.1, _DP_CLIP),
    (0.3, _DP_CLIP),
    (1.0, _DP_CLIP),
    (0.1, 1.0),
    (0.3, 0.3),
)
DP_SWEEP: tuple[SweepConfig, ...] = (
    # Each strategy without DP, the row its private rows are paired with: cpu-fmnist's own
    # configurations, so those runs stand for them (copy them into the folder).
    *(
        SweepConfig(f"effnet-pt-{name}", {**keys, **_EFFNET})
        for name, keys in _DP_STRATEGIES.items()
    ),
    *(
        SweepConfig(
            f"effnet-pt-{name}-dp{noise:g}" + ("" if clip == _DP_CLIP else f"-clip{clip:g}"),
            {**keys, **_EFFNET, "dp-noise-multiplier": noise, "dp-clipping-norm": clip},
            seeds=1,
        )
        for noise, clip in _DP_SETTINGS
        for name, keys in _DP_STRATEGIES.items()
    ),
)
# cpu-fmnist-tiers (issue 15): heterogeneous devices against uniform compression at equal
# expected bytes (half the nodes at each tier value), in the pretrained setting.
TIERS_SWEEP: tuple[SweepConfig, ...] = (
    SweepConfig("effnet-pt-flasc-d10", {**_flasc(0.1), **_EFFNET}, seeds=3),
    SweepConfig(
        "effnet-pt-flasc-tiers-d05-d15",
        {**_flasc(0.1), **_EFFNET, "tiers": "0.5:0.05,0.5:0.15"},
        seeds=3,
    ),
    SweepConfig("effnet-pt-flocora-q4", {**_flocora(4), **_EFFNET}, seeds=3),
    SweepConfig(
        "effnet-pt-flocora-tiers-q2-q6", {**_flocora(4), **_EFFNET, "tiers": "0.5:2,0.5:6"}, seeds=3
    ),
    SweepConfig("effnet-pt-fedlora", {"strategy": "fedlora", **_EFFNET}, seeds=3),
    SweepConfig(
        "effnet-pt-fedlora-ranks-8-16",
        {"strategy": "fedlora", **_EFFNET, "rank-tiers": "0.5:8,0.5:16"},
        seeds=3,
    ),
)

PRESETS: dict[str, BenchPreset] = {
    "cpu-digits": BenchPreset(
        "cpu-digits",
        {**_COMMON, "dataset": "digits", "num-server-rounds": 25},
        supernodes=100,
        target_accuracy=0.9,
        summary="digits, ResNet-8 w64, 100 clients, 10/round, Dirichlet 0.5, 5 local epochs",
    ),
    "cifar10-paper": BenchPreset(
        "cifar10-paper",
        # GroupNorm(2, C), as every run in the FLoCoRA authors' script.
        {**_COMMON, "dataset": "cifar10", "num-server-rounds": 100, "norm": "group"},
        supernodes=100,
        target_accuracy=0.7,
        env={"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"},
        summary="CIFAR-10, ResNet-8 w64 GroupNorm, 100 clients, 10/round, Dirichlet 0.5, 5 local "
        "epochs, 100 rounds (FLoCoRA); CUDA when present",
    ),
    "cpu-fmnist": BenchPreset(
        "cpu-fmnist",
        _FMNIST,
        supernodes=100,
        # 20 rounds do not reach a plateau on 2 cores (fedavg 64 %, fedlora 49 % at seed 0):
        # the target is one most rows reach, so "MB to target" compares them.
        target_accuracy=0.45,
        summary="Fashion-MNIST, ResNet-8 w16 GroupNorm and pretrained EfficientNet-Lite0, "
        "100 clients, 10/round, Dirichlet 0.5",
        sweep=FMNIST_SWEEP,
    ),
    "cpu-fmnist-dp": BenchPreset(
        "cpu-fmnist-dp",
        _FMNIST,
        supernodes=100,
        target_accuracy=0.65,
        summary="cpu-fmnist's pretrained EfficientNet-Lite0 under central DP (clipping 5)",
        sweep=DP_SWEEP,
    ),
    "cpu-fmnist-tiers": BenchPreset(
        "cpu-fmnist-tiers",
        _FMNIST,
        supernodes=100,
        target_accuracy=0.65,
        summary="cpu-fmnist's pretrained EfficientNet-Lite0: tiers of devices against uniform "
        "compression at equal expected bytes",
        sweep=TIERS_SWEEP,
    ),
    "cpu-fmnist-attacks": BenchPreset(
        "cpu-fmnist-attacks",
        _FMNIST,
        supernodes=100,
        target_accuracy=0.45,
        summary="cpu-fmnist's ResNet-8 federation with Byzantine clients: attacks x defences "
        "x strategies",
        sweep=ATTACK_SWEEP,
    ),
    "cpu-fmnist-attacks-pt": BenchPreset(
        "cpu-fmnist-attacks-pt",
        _FMNIST,
        supernodes=100,
        target_accuracy=0.65,
        summary="cpu-fmnist's pretrained EfficientNet-Lite0 with Byzantine clients: attacks x "
        "defences x strategies",
        sweep=ATTACK_PT_SWEEP,
    ),
}


def format_value(value: Any) -> str:
    """One value in ``flwr run --run-config`` syntax (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "'" in value:
            raise ValueError(f"run-config value {value!r} contains a single quote")
        return f"'{value}'"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"run-config value {value!r}: expected bool, int, float or str")


def format_run_config(keys: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in keys.items())


@dataclass(frozen=True)
class Job:
    """One run of the sweep: a configuration at a seed, and where it goes."""

    config: SweepConfig
    seed: int
    keys: dict[str, Any]  # what is passed to ``--run-config`` (all but the app defaults)
    run_dir: Path
    log: Path


def plan(
    preset: BenchPreset,
    configs: list[SweepConfig],
    seeds: int,
    overrides: dict[str, Any],
    out: Path,
) -> list[Job]:
    """Jobs seed by seed: every configuration's seed 0, then the seed 1 of those that have
    one, ... so a sweep stopped half-way (it resumes later) already holds a complete table of
    one seed. ``seeds`` is the floor for every configuration (``seeds_for``). Precedence:
    preset < overrides < configuration."""
    jobs = []
    counts = {config.name: seeds_for(config, seeds) for config in configs}
    for seed in range(max(counts.values(), default=0)):
        for config in configs:
            if seed >= counts[config.name]:
                continue
            name = f"{config.name}-s{seed}"
            keys = {
                **preset.run_config,
                **overrides,
                **config.keys,
                "seed": seed,
                "output-dir": str(out / "runs"),
                "run-name": name,
            }
            jobs.append(Job(config, seed, keys, out / "runs" / name, out / "logs" / f"{name}.log"))
    return jobs


def _finished(job: Job) -> bool:
    """The run folder is complete and was made with the same keys (so a sweep can resume).

    Where the folder is (``output-dir``, ``run-name``) is not compared, so a clone elsewhere
    resumes the committed sweep; a key a run predates counts as the default it then ran with."""
    if not (job.run_dir / "summary.json").exists():
        return False
    made = {**app_defaults(), **json.loads((job.run_dir / "config.json").read_text())}
    where = {"output-dir", "run-name"}
    different = {k for k, v in job.keys.items() if k not in where and made.get(k) != v}
    if different:
        raise SystemExit(
            f"{job.run_dir} exists with different {sorted(different)}; use another --out"
        )
    return True


def launch(job: Job, supernodes: int, flwr_home: Path, env: dict[str, str], timeout: float) -> int:
    """One ``flwr run`` through the launcher; its output goes to the log, progress to stdout."""
    cmd = [
        sys.executable,
        "-m",
        LAUNCHER,
        "--supernodes",
        str(supernodes),
        "--flwr-home",
        str(flwr_home),
        "--run-config",
        format_run_config(job.keys),
    ]
    job.log.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + timeout
    with job.log.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                found = re.search(r"flora: (round \d+/\d+.*)", line)
                if found:
                    print(f"  {job.config.name} s{job.seed}: {found.group(1)}", flush=True)
                if time.time() > deadline:
                    print(f"  {job.config.name}: over {timeout:.0f} s, stopping", flush=True)
                    # Ctrl-C: the launcher stops its SuperLink on KeyboardInterrupt
                    wait_or_kill(proc, 60.0, first=signal.SIGINT)
                    break
            return proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the launcher got the same Ctrl-C and is cleaning up
            raise


def run_job(
    job: Job, supernodes: int, flwr_home: Path, env: dict[str, str], timeout: float
) -> float:
    """Run (or skip, when already complete) one job; retry once after a lost heartbeat."""
    if _finished(job):
        print(f"{job.run_dir.name}: already complete, skipped", flush=True)
        return 0.0
    started = time.time()
    for attempt in (1, 2):
        if job.run_dir.exists():  # a partial folder of an interrupted or failed attempt
            shutil.rmtree(job.run_dir)
        code = launch(job, supernodes, flwr_home, env, timeout)
        if code == 0 and (job.run_dir / "summary.json").exists():
            return time.time() - started
        retry = attempt == 1 and HEARTBEAT_FAILURE in job.log.read_text()
        print(f"{job.run_dir.name}: failed (exit {code}); log {job.log}", flush=True)
        if not retry:
            break
        print(f"{job.run_dir.name}: lost heartbeat (CPU contention?), retrying once", flush=True)
    raise SystemExit(f"run {job.run_dir.name} failed; see {job.log}")


MEMORY_KEYS = (
    "dataset",
    "dataset-source",
    "model",
    "model-width",
    "norm",
    "pretrained",
    "lora-r",
    "lora-alpha",
    "lora-mode",
    "batch-size",
    "partitioner",
    "dirichlet-alpha",
    "val-fraction",
)
# What ``lora-mode`` replaced; still hashed where an older run's config.json has them.
LEGACY_MEMORY_KEYS = ("lora-train-norm", "lora-train-head")


def memory_key(config: dict[str, Any]) -> str:
    """Configurations whose local training is identical share one probe: same model, rank,
    data and batch size (codecs run outside local training).

    Only keys the config has are hashed, so an older run folder (``lora-train-norm`` /
    ``lora-train-head``, no ``norm`` / ``pretrained`` / ``lora-mode``) keeps the digest its
    probe file was saved under."""
    lora = config["strategy"] != "fedavg"
    relevant = {
        k: config[k]
        for k in (*MEMORY_KEYS, *LEGACY_MEMORY_KEYS)
        if k in config and (lora or not k.startswith("lora-"))
    }
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]
    kind = f"lora-r{config['lora-r']}" if lora else "full"
    return f"{config['model']}-w{config['model-width']}-{kind}-{digest}"


def probe_memory(config: dict[str, Any], supernodes: int, out: Path, env: dict[str, str]) -> dict:
    """The memory probe for this run's model, in a fresh process (cached in ``out/memory``)."""
    path = out / "memory" / f"{memory_key(config)}.json"
    if path.exists():
        return json.loads(path.read_text())
    keys = {k: v for k, v in config.items() if k in app_defaults()}
    keys["seed"] = 0
    cmd = [
        sys.executable,
        "-m",
        "flora_tools.memory_probe",
        "--run-config",
        json.dumps(keys),
        "--num-partitions",
        str(supernodes),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"memory probe failed for {path.stem}:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"memory {path.stem}: +{result['rss_delta_mb']:.1f} MB RSS "
        f"({result['trainable_parameters']:,} trainable parameters)",
        flush=True,
    )
    return result


def machine() -> str:
    """CPU model and count, and whether torch sees CUDA."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return f"{os.cpu_count()} x {model}, {gpu}, torch {torch.__version__}"


def federation(config: dict[str, Any], supernodes: int) -> str:
    """The shared setting of a run, from its resolved ``config.json``."""
    part = config["partitioner"]
    if part == "dirichlet":
        part = f"Dirichlet({config['dirichlet-alpha']:g})"
    per_round = max(1, round(config["fraction-train"] * supernodes))
    norm = f" ({config['norm']} norm)" if config.get("norm") else ""
    return (
        f"{config['dataset']}, {config['model']} width {config['model-width']}{norm}, "
        f"{supernodes} SuperNodes, {per_round} per round, {part} partitions, "
        f"{config['num-server-rounds']} rounds of {config['local-epochs']} local epochs "
        f"(batch {config['batch-size']}, SGD lr {config['lr']:g}), "
        f"fraction-evaluate {config['fraction-evaluate']:g}"
    )


def load_groups(out: Path) -> tuple[list[Group], dict[str, Any]]:
    """A results folder's configurations (runs and memory probe) and its ``bench.json``.

    Only complete runs (with ``summary.json``) count, so the report of a sweep that is still
    going, or was stopped to resume later, shows what is done; ``meta["planned_runs"]`` and
    ``meta["complete_runs"]`` say how much that is.
    """
    meta = json.loads((out / "bench.json").read_text())
    groups = []
    planned = complete = 0
    for entry in meta["configs"]:
        planned += len(entry["runs"])
        done = [n for n in entry["runs"] if (out / "runs" / n / "summary.json").exists()]
        complete += len(done)
        if not done:
            continue
        runs = [Run.load(out / "runs" / name) for name in done]
        memory_file = out / "memory" / f"{memory_key(runs[0].config)}.json"
        memory = json.loads(memory_file.read_text()) if memory_file.exists() else None
        groups.append(Group(entry["name"], runs, memory))
    meta["planned_runs"], meta["complete_runs"] = planned, complete
    return groups, meta


def _seeds_line(groups: list[Group]) -> str:
    """The header's seeds: one range when every row ran the same, else the spread of n."""
    counts = sorted({len(g.runs) for g in groups})
    if len(counts) == 1:
        return f"seeds 0..{counts[0] - 1}"
    return f"seeds 0..n-1 per configuration, n = {counts[0]}..{counts[-1]} (the seeds column)"


def build_report(
    out: Path,
    target: float | None = None,
    reference: str = "fedlora",
    byte_reference: str = "fedavg",
) -> Path:
    """Read ``bench.json`` and the run folders back; write the report and plots."""
    groups, meta = load_groups(out)
    target = meta["target_accuracy"] if target is None else target
    walls = meta.get("run_seconds", {})
    header = "\n".join(
        [
            f"# flora benchmark: {meta['preset']}",
            "",
            f"- command: `{meta['command']}`",
            f"- federation: {federation(groups[0].runs[0].config, meta['supernodes'])}; "
            f"{_seeds_line(groups)}",
            f"- machine: {meta['machine']}",
            f"- started {meta['started']}; sweep wall time {sum(walls.values()) / 60:.1f} min "
            f"({len(walls)} runs, each with its flwr run start-up)",
            *(
                [
                    f"- **partial**: {meta['complete_runs']} of {meta['planned_runs']} planned "
                    "runs are complete (the sweep resumes where it stopped); rows show the "
                    "seeds done so far"
                ]
                if meta["complete_runs"] < meta["planned_runs"]
                else []
            ),
        ]
    )
    return write_report(out, groups, target, header, reference, byte_reference)


def _command(args: list[str]) -> str:
    """The command line as one would type it (run-config values keep their single quotes)."""

    def quote(arg: str) -> str:
        if re.fullmatch(r"[\w@%+=:,./-]+", arg):
            return arg
        if not re.search(r'["$`\\]', arg):
            return f'"{arg}"'
        return shlex.quote(arg)

    return " ".join(["python", "-m", "flora_tools.bench", *(quote(a) for a in args)])


def select(names: str, sweep: tuple[SweepConfig, ...] = SWEEP) -> list[SweepConfig]:
    """The ``--configs`` names from ``sweep`` (the preset's), in the order given; all if empty."""
    if not names:
        return list(sweep)
    known = {c.name: c for c in sweep}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def merged_configs(previous: list[dict], current: list[dict]) -> list[dict]:
    """``bench.json``'s configurations after a sweep of ``current`` into a folder that already
    lists ``previous``: a ``--configs`` subset (a resumed or extended sweep) adds its rows and
    runs and keeps every other, so the report still shows all that the folder holds."""
    merged = {entry["name"]: list(entry["runs"]) for entry in previous}
    for entry in current:
        runs = merged.setdefault(entry["name"], [])
        runs += [name for name in entry["runs"] if name not in runs]
    return [{"name": name, "runs": runs} for name, runs in merged.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-digits")
    parser.add_argument("--configs", default="", help="comma-separated names (see --list)")
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1")
    parser.add_argument("--rounds", type=int, help="num-server-rounds (default: the preset's)")
    parser.add_argument("--local-epochs", type=int, help="default: the preset's")
    parser.add_argument("--supernodes", type=int, help="default: the preset's")
    parser.add_argument("--set", default="", help='extra run-config for every run, "k=v ..."')
    parser.add_argument("--target", type=float, help="accuracy for 'MB to target'")
    parser.add_argument("--out", type=Path, help="default: outputs/bench-<preset>-<time>")
    parser.add_argument("--run-timeout", type=float, default=4 * 3600.0, help="s per run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report of --out")
    parser.add_argument("--reference", default="fedlora", help="row accuracy Δs are paired with")
    parser.add_argument("--byte-reference", default="fedavg", help="row byte reductions divide")
    parser.add_argument(
        "--headline", default="", help="print the headline table of --out for these configs"
    )
    parser.add_argument(
        "--link", action="store_true", help="with --headline: simulated time over edge links"
    )
    parser.add_argument(
        "--dp", action="store_true", help="with --headline: ε spent beside accuracy (DP sweeps)"
    )
    parser.add_argument("--list", action="store_true", help="print the preset's sweep and exit")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.list:
        for config in preset.sweep:
            seeds = seeds_for(config, args.seeds)
            print(f"{config.name:30} seeds {seeds}  {format_run_config(config.keys)}")
        return 0
    if args.report_only or args.headline:
        if args.out is None:
            raise SystemExit("--report-only and --headline need --out")
        if args.headline:
            groups, meta = load_groups(args.out)
            names = [n.strip() for n in args.headline.split(",") if n.strip()]
            target = args.target or meta["target_accuracy"]
            columns = LINK_COLUMNS if args.link else DP_COLUMNS if args.dp else HEADLINE_COLUMNS
            print(
                headline_table(groups, names, target, args.reference, args.byte_reference, columns)
            )
            return 0
        print(build_report(args.out, args.target, args.reference, args.byte_reference))
        return 0

    configs = select(args.configs, preset.sweep)
    try:
        overrides = parse_run_config(args.set)
    except RunConfigSyntaxError as exc:
        print(f"flora: --set: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs
    supernodes = args.supernodes or preset.supernodes
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    out = (args.out or ROOT / "outputs" / f"bench-{preset.name}-{stamp}").resolve()
    env = {
        **os.environ,
        **preset.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    jobs = plan(preset, configs, args.seeds, overrides, out)
    # Every run's config is checked before the first starts: a bad --set fails in a second.
    for job in jobs:
        problem = run_config_problem(job.keys)
        if problem:
            print(f"flora: {job.run_dir.name}: {problem}", file=sys.stderr, flush=True)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "bench.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(
        {
            "preset": preset.name,
            "summary": preset.summary,
            "supernodes": supernodes,
            "seeds": args.seeds,
            "target_accuracy": args.target or preset.target_accuracy,
            "command": _command(argv or sys.argv[1:]),
            "machine": machine(),
            "started": meta.get("started", stamp),
            "configs": merged_configs(
                meta.get("configs", []),
                [
                    {"name": c.name, "runs": [j.run_dir.name for j in jobs if j.config is c]}
                    for c in configs
                ],
            ),
        }
    )
    meta.setdefault("run_seconds", {})
    print(f"bench: {len(jobs)} runs into {out}", flush=True)
    started = time.time()
    for i, job in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {job.run_dir.name}", flush=True)
        seconds = run_job(job, supernodes, out / ".flwr-home", env, args.run_timeout)
        if seconds:
            meta["run_seconds"][job.run_dir.name] = seconds
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            elapsed = time.time() - started
            left = elapsed / (i + 1) * (len(jobs) - i - 1)
            print(f"  {seconds:.0f} s; sweep {elapsed / 60:.1f} min, ~{left / 60:.1f} left")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if not args.no_memory:
        for job in jobs:
            if job.seed == 0:
                config = json.loads((job.run_dir / "config.json").read_text())
                probe_memory(config, supernodes, out, env)
    report = build_report(out, None, args.reference, args.byte_reference)
    print(f"bench: report {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
