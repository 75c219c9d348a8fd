"""Deployment round time against Flower's floor: ``python -m flora_tools.deploy_bench``.

A benchmark that prints (not a test). Flower 1.21+ starts a fresh ``flwr-clientapp`` process
for every message and polls for work, which sets a floor under any deployed round. This runs,
one after the other in the same ``make deploy`` machinery (one SuperLink, the same SuperNodes
count, TLS, the same rounds and evaluate fraction):

- ``floor``: ``flora_tools/floor_app``, the smallest torch ClientApp (a linear layer, one SGD
  step) under Flower's FedAvg;
- ``flora``: this app with ``make deploy``'s run-config plus ``--run-config``;

and prints each one's seconds per round (rounds 2 onwards: round 1 also pays the first
processes' start) and flora's ratio to the floor. ``--breakdown`` also times, in fresh
processes, what one flora training message pays before it trains: Python and torch, Flower's
ClientApp machinery, flora's ClientApp module, the node's data partition (with the node cache
off and warm), importing peft, and the frozen base with its peft adapters.
``--breakdown-only`` prints that table alone (seconds instead of a deployment's minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flora_app.results import read_rounds
from flora_tools.deploy import DEFAULT_RUN_CONFIG
from flora_tools.deployment import processes
from flora_tools.deployment.deployment import Deployment

ROOT = Path(__file__).resolve().parent.parent
FLOOR_APP = Path(__file__).resolve().parent / "floor_app"

# What one flora training message pays before training, each step in a fresh interpreter:
# name -> (code, the step it adds to). The partition is timed twice, with the node cache off
# (every message read and partitioned the dataset before flora_app.node_cache) and warm.
_PARTITION = (
    "import flora_app.client_app\n"
    "from flora_app.config import FloraConfig\n"
    "from flora_app.task import load_client_data, model_spec\n"
    "cfg = FloraConfig.from_run_config({RUN})\n"
    "info, _, _ = load_client_data(cfg, {{'partition-id': 0, 'num-partitions': 3}})\n"
)
BREAKDOWN: dict[str, tuple[str, str | None]] = {
    "python + torch": ("import torch", None),
    "+ Flower's ClientApp machinery": ("import torch, flwr.clientapp", "python + torch"),
    "+ flora's ClientApp module": (
        "import flora_app.client_app",
        "+ Flower's ClientApp machinery",
    ),
    "+ the node's data partition, node cache off": (
        "import os\nos.environ['FLORA_NODE_CACHE'] = 'off'\n" + _PARTITION,
        "+ flora's ClientApp module",
    ),
    "+ the node's data partition, from the node cache": (
        _PARTITION,
        "+ flora's ClientApp module",
    ),
    # peft imports transformers, and through it torch's compiler and distributed stacks:
    # timed apart from building the model, since no ClientApp that uses peft can avoid it.
    "+ import peft": (
        _PARTITION + "import peft",
        "+ the node's data partition, from the node cache",
    ),
    "+ the frozen base and its peft adapters": (
        _PARTITION + "from flora_app.ml.lora import build_trainable\n"
        "build_trainable(model_spec(cfg, info))",
        "+ import peft",
    ),
}


def run_app(
    name: str, app: Path, run_config: list[str], supernodes: int, workdir: Path, timeout: float
) -> list[float]:
    """Seconds of each round of one run of ``app`` on a fresh TLS deployment (``run_config``:
    ``--run-config`` strings, later ones overriding earlier ones)."""
    result = workdir / f"{name}-result"
    dep = Deployment(
        workdir / name,
        app,
        secure=True,
        output_root=workdir,
        node_threads=max(1, (os.cpu_count() or 1) // supernodes),
        echo=lambda text: print(f"[{name}] {text}", flush=True),
    )
    try:
        dep.start_superlink()
        for i in range(supernodes):
            dep.start_supernode(i, supernodes)
        dep.wait_for_nodes(supernodes)
        extra = (
            f"result='{result}'"
            if name == "floor"
            else f"output-dir='{workdir}' run-name='{name}-run'"
        )
        flwr = dep.submit([*run_config, extra], log=workdir / f"{name}-flwr.log")
        if processes.wait_or_kill(flwr, timeout) is None:
            raise SystemExit(f"{name}: flwr run not done after {timeout:.0f} s; see {workdir}")
        status, details, _ = dep.final_status()
        if status != "finished:completed":
            raise SystemExit(f"{name} run did not complete ({details}); see {workdir}")
    finally:
        dep.close()
    if name == "floor":
        return [float(s) for s in json.loads(result.read_text())["seconds"]]
    return [float(r["seconds"]) for r in read_rounds(workdir / f"{name}-run")]


def _steady(seconds: list[float]) -> float:
    rest = seconds[1:] or seconds
    return sum(rest) / len(rest)


def breakdown(run_config: dict) -> list[tuple[str, float, float]]:
    """Each step's (seconds on top of the step it adds to, seconds in all); best of 3 fresh
    interpreters each, with a node cache of its own (filled by the first warm step)."""
    import tempfile

    totals: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="flora-node-cache-") as cache:
        env = {**os.environ, "FLORA_NODE_CACHE": cache}
        for step, (code, after) in BREAKDOWN.items():
            script = code.format(RUN=repr(run_config))
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env)
                best = min(best, time.perf_counter() - started)
            totals[step] = best
            rows.append((step, best - (totals[after] if after else 0.0), best))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--run-config", default="", help="flora overrides (as make deploy)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".flwr" / "deploy-bench")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--breakdown", action="store_true", help="also time one message's parts")
    parser.add_argument(
        "--breakdown-only", action="store_true", help="time one message's parts, run nothing"
    )
    args = parser.parse_args(argv)
    # The same rounds and evaluate fraction (flora's default) for both apps.
    common = f"num-server-rounds={args.rounds} fraction-evaluate=0.2"
    flora_config = [DEFAULT_RUN_CONFIG, args.run_config, common]
    if args.breakdown_only:
        _print_breakdown(flora_config)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = {
        "floor": run_app("floor", FLOOR_APP, [common], args.supernodes, args.workdir, args.timeout),
        "flora": run_app("flora", ROOT, flora_config, args.supernodes, args.workdir, args.timeout),
    }
    floor = _steady(runs["floor"])
    shown = " ".join(c for c in flora_config if c)
    print(f"\n{args.supernodes} SuperNodes, {args.rounds} rounds, TLS; flora: {shown}\n")
    print("| app | s / round (rounds 2+) | each round (s) | vs floor |")
    print("| --- | --- | --- | --- |")
    for name, seconds in runs.items():
        each = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"| {name} | {_steady(seconds):.1f} | {each} | {_steady(seconds) / floor:.2f}x |")
    if args.breakdown:
        _print_breakdown(flora_config)
    return 0


def _print_breakdown(flora_config: list[str]) -> None:
    from flora_tools.preflight import app_defaults, parse_run_config

    config = app_defaults()
    for text in flora_config:
        config.update(parse_run_config(text))
    print("\n| what one flora training message pays before training | s | s in all |")
    print("| --- | --- | --- |")
    for step, seconds, total in breakdown(config):
        print(f"| {step} | {seconds:.2f} | {total:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
