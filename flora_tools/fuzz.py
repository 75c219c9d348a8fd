"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that reads untrusted bytes.

Targets:

- ``decoder``: a payload in every codec the server accepts (``decode_blob`` against the
  model's shapes); only ``CodecError`` may come out;
- ``reply``: a whole training reply through ``CompressionStrategy.aggregate_train`` (header,
  payload, metrics); it must never raise: a bad reply is rejected and counted;
- ``run-config``: a ``--run-config`` string through Flower's parser and ``FloraConfig``; only
  the syntax error and ``ConfigError`` may come out;
- ``checkpoint``: a ``checkpoint.safetensors`` through ``load_checkpoint``; only
  ``CheckpointError`` may come out.

Anything else is a finding: libFuzzer stops and writes the input as ``crash-*``. Memory is
bounded by ``-rss_limit_mb`` (the decoders promise allocations no larger than the model).

    python -m flora_tools.fuzz decoder -runs=1000000 tests/fuzz_corpus/decoder   # one target
    python -m flora_tools.fuzz --all --seconds 120                  # make fuzz: every target
    python -m flora_tools.fuzz --all --runs 1000000       # make fuzz FUZZ_RUNS=1000000
    python -m flora_tools.fuzz --seed-corpus tests/fuzz_corpus       # (re)write the seeds
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz_corpus"
TARGETS = ("decoder", "reply", "run-config", "checkpoint")
RSS_LIMIT_MB = 2048
# What the targets read untrusted bytes with, imported under instrumentation; only modules
# under INSTRUMENTED get coverage counters.
FUZZED_MODULES = (
    "flora_app.checkpoint",
    "flora_app.config",
    "flora_tools.preflight",
    "flwr.common.config",
    "safetensors.numpy",
    "strategies.codecs",
    "strategies.compression",
    "strategies.validation",
    "strategies.wire",
)
INSTRUMENTED = (
    "flora_app",
    "flora_tools.preflight",
    "flwr.common.config",
    "flwr.common.record",
    "json",
    "safetensors",
    "strategies",
)


def _arrays(seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        a=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        w=rng.normal(size=(5, 6)).astype(np.float32),
        b=rng.normal(size=5).astype(np.float32),
    )


def _codecs() -> list[str]:
    from strategies.codecs import codec_spec, sparse_spec, with_entropy

    return [
        "fp32",
        "fp16",
        codec_spec(4),
        codec_spec(3, "tensor", "fp32"),
        sparse_spec(0.3, "global", 32),
        sparse_spec(0.3, "tensor", 8),
        codec_spec(8, budget=400),  # widths per tensor under a byte budget
        with_entropy(codec_spec(4), "zstd"),
        with_entropy(sparse_spec(0.3, "global", 32), "zstd"),
    ]


# --- targets ----------------------------------------------------------------------------------
def decoder_target() -> Callable[[bytes], None]:
    from strategies.codecs import CodecError, decode_blob, get_codec

    codecs = [get_codec(c) for c in _codecs()]
    shapes = {k: v.shape for k, v in _arrays(0).items()}

    def one(data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(CodecError):
            decode_blob(data[1:], shapes, accept=codecs[data[0] % len(codecs)])

    return one


def reply_target() -> Callable[[bytes], None]:
    import time

    from flwr.app import ConfigRecord, Message, Metadata, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from strategies.compression import CompressionStrategy
    from strategies.wire import HEADER_KEY, blob_to_record, make_header, numpy_to_record

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    class _OneNode:  # the grid a round is configured on: one node, 7
        def get_node_ids(self) -> list[int]:
            return [7]

    codecs = _codecs()
    strategies = []
    for codec in codecs:
        inner = FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.1)
        strategy = CompressionStrategy(inner, "fp32", codec, reply="update")
        strategy.configure_train(1, numpy_to_record(_arrays(0)), ConfigRecord({}), _OneNode())
        strategies.append((strategy, codec))

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        strategy, codec = strategies[data[0] % len(strategies)]
        metrics_len = data[1]
        metrics_blob, payload = data[2 : 2 + metrics_len], data[2 + metrics_len :]
        content = RecordDict({"arrays": blob_to_record(payload)})
        content[HEADER_KEY] = make_header(codec, reply="update")
        n = int.from_bytes(metrics_blob[:8].ljust(8, b"\0"), "little", signed=True)
        content["metrics"] = MetricRecord({"num-examples": n})
        metadata = Metadata(
            run_id=1,
            message_id="m",
            src_node_id=7,
            dst_node_id=0,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=3600.0,
            message_type="train",
        )
        strategy.aggregate_train(1, [Message(metadata=metadata, content=content)])

    return one


def run_config_target() -> Callable[[bytes], None]:
    from flora_app.config import ConfigError
    from flora_tools.preflight import RunConfigSyntaxError, parse_run_config, run_config_problem

    def one(data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        with contextlib.suppress(RunConfigSyntaxError, ConfigError):
            run_config_problem(parse_run_config(text))

    return one


def checkpoint_target() -> Callable[[bytes], None]:
    from flora_app.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="flora-fuzz-ckpt-"))
    path = folder / CHECKPOINT_FILE

    def one(data: bytes) -> None:
        path.write_bytes(data)
        with contextlib.suppress(CheckpointError):
            load_checkpoint(folder)

    return one


BUILDERS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "decoder": decoder_target,
    "reply": reply_target,
    "run-config": run_config_target,
    "checkpoint": checkpoint_target,
}
assert tuple(BUILDERS) == TARGETS


# --- seeds --------------------------------------------------------------------------------------
def write_seed_corpus(root: Path) -> None:
    """Valid inputs for every target, so the fuzzer starts from the real formats."""
    from strategies.codecs import get_codec

    codecs = _codecs()
    for target in TARGETS:
        (root / target).mkdir(parents=True, exist_ok=True)
    for i, codec in enumerate(codecs):
        blob = get_codec(codec).encode(_arrays(i + 1))
        (root / "decoder" / f"seed-{i}").write_bytes(bytes([i]) + blob)
        metrics = (10).to_bytes(8, "little")
        (root / "reply" / f"seed-{i}").write_bytes(bytes([i, len(metrics)]) + metrics + blob)
    configs = [
        "strategy='flasc' density-up=0.2 density-down=0.5",
        "strategy='flocora' quant-bits=4 tiers='0.5:2,0.5:8'",
        "dp-noise-multiplier=1.0 dp-clipping-norm=0.5 aggregation='mean'",
        "model='efficientnet-lite0' pretrained=true image-size=32 batchnorm-stats='frozen'",
    ]
    for i, text in enumerate(configs):
        (root / "run-config" / f"seed-{i}").write_text(text)
    from flora_app.checkpoint import CHECKPOINT_FILE, Checkpoint, capture_rng, save_checkpoint

    python_rng, numpy_rng = capture_rng()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpoint(
            round=1,
            global_arrays=_arrays(0),
            optimizer={},
            rounds=[{"round": 1, "accuracy": 0.5}],
            initial=None,
            run_config={"strategy": "fedlora"},
            python_rng=python_rng,
            numpy_rng=numpy_rng,
        )
        save_checkpoint(Path(tmp), ckpt)
        shutil.copy(Path(tmp) / CHECKPOINT_FILE, root / "checkpoint" / "seed-0")


# --- running ------------------------------------------------------------------------------------
def fuzz_one(target: str, libfuzzer_args: list[str]) -> None:
    """Run atheris on ``target`` in this process (it does not return)."""
    import logging

    import atheris

    # Our own packages and the Python parsers they hand bytes to (Flower's run-config and
    # records, json and safetensors for a checkpoint's header): the same coverage counts as
    # instrumenting everything they pull in (flwr, grpc, protobuf, torch), which took about 20 s
    # a start instead of 3-6 s.
    with atheris.instrument_imports(include=INSTRUMENTED):
        for module in FUZZED_MODULES:
            importlib.import_module(module)
    one = BUILDERS[target]()
    # Every rejected reply is logged as a warning: at a million inputs the log is the cost.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    atheris.Setup([sys.argv[0], f"-rss_limit_mb={RSS_LIMIT_MB}", *libfuzzer_args], one)
    atheris.Fuzz()


RUNS = re.compile(r"Done (\d+) runs in (\d+) second")


def fuzz_all(seconds: int, corpus: Path, runs: int = 0) -> int:
    """Every target for ``seconds`` each (or, with ``runs``, for that many executions each),
    in its own process; new inputs go to a scratch folder (the committed corpus stays as it
    is). Prints executions and seconds per target."""
    failed = 0
    for target in TARGETS:
        with tempfile.TemporaryDirectory() as scratch:
            cmd = [
                sys.executable,
                "-m",
                "flora_tools.fuzz",
                target,
                f"-runs={runs}" if runs else f"-max_total_time={seconds}",
                "-print_final_stats=1",
                scratch,
                str(corpus / target),
            ]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        found = RUNS.search(proc.stderr)
        done, took = (int(found.group(1)), int(found.group(2))) if found else (0, seconds)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"{target:12} {done:>12,} executions in {took:>5} s  {status}", flush=True)
        if proc.returncode != 0:
            failed += 1
            print(proc.stderr[-3000:], file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TARGETS:
        fuzz_one(argv[0], argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="fuzz every target in turn")
    parser.add_argument("--seconds", type=int, default=120, help="per target, with --all")
    parser.add_argument(
        "--runs", type=int, default=0, help="executions per target, with --all (not seconds)"
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--seed-corpus", type=Path, default=None, help="write seed inputs here")
    args = parser.parse_args(argv)
    if args.seed_corpus is not None:
        write_seed_corpus(args.seed_corpus)
        return 0
    if args.all:
        return fuzz_all(args.seconds, args.corpus, args.runs)
    parser.error(f"give a target ({', '.join(TARGETS)}), --all or --seed-corpus")
    return 2


if __name__ == "__main__":
    sys.exit(main())
