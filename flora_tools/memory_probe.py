"""Peak memory of one client's local training, measured in a fresh process.

LoRA's promise for edge devices is less memory as well as fewer bytes: no gradients and no
optimizer state for the frozen base. This probe measures what a client's local training adds,
the way a ClientApp does it, in a process of its own (``python -m flora_tools.memory_probe``):

1. import what a ClientApp imports (torch, and peft even for ``fedavg``, so that peft's own
   weight is never counted as training memory), load the dataset and this client's partition,
   and decode the "received" global state (that message exists before training starts);
   then, unless ``--no-warmup``, train a throwaway copy once: a ClientApp is a long-lived
   process and pays torch's one-time allocations in its first round only, and those are the
   same for every strategy (measured here: about 23 MB on digits), so they would blur the
   difference this probe is for;
2. return freed heap memory to the kernel (``malloc_trim``), reset the kernel's peak-RSS
   counter (``/proc/self/clear_refs`` = 5) and read the current RSS as the baseline;
3. build the model exactly as the client does (``lora.build_trainable`` of ``task.model_spec``),
   load the received state, and run local training (``training.train``) on the partition;
4. report the peak RSS (``VmHWM``) minus the baseline. Where the counter cannot be reset, the
   fallback is ``ru_maxrss`` after minus before, which can only under-count.

RSS only shows live memory if freed memory goes back to the kernel: glibc keeps freed heap
chunks (and raises its mmap threshold after large frees), so after the warm-up a second
training can reuse them and add almost nothing (measured: +0.0 MB for fedavg). The probe
therefore runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (set by re-executing itself), which
gives every tensor above 64 KB its own mapping, returned on free: the peak then is the peak
of live memory. On CUDA, ``torch.cuda.max_memory_allocated`` over steps 3-4 is reported as
well. One thread is used, as a simulated ClientApp with ``num-cpus=1`` has. Output: one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024
MMAP_THRESHOLD = "65536"


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _trim_heap() -> None:
    """Give freed heap memory back to the kernel (glibc), so RSS is live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def largest_partition(run_config: dict[str, Any], num_partitions: int) -> int:
    """The partition with the most training examples: the client with the largest batches."""
    from flora_app.config import FloraConfig
    from flora_app.task import load_client_data

    cfg = FloraConfig.from_run_config(run_config)
    sizes = [
        len(load_client_data(cfg, {"partition-id": i, "num-partitions": num_partitions})[1])
        for i in range(num_partitions)
    ]
    return max(range(num_partitions), key=lambda i: (sizes[i], -i))


def measure(
    run_config: dict[str, Any],
    partition_id: int,
    num_partitions: int,
    epochs: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """Peak memory added by building the client's model and training it ``epochs`` epochs."""
    import peft  # noqa: F401  imported before the baseline for every strategy (see above)
    import torch

    from flora_app.config import FloraConfig
    from flora_app.ml.lora import build_trainable, exchanged_state, load_exchanged_state
    from flora_app.ml.training import select_device, train
    from flora_app.task import load_client_data, model_spec

    torch.set_num_threads(1)
    cfg = FloraConfig.from_run_config(run_config)
    node = {"partition-id": partition_id, "num-partitions": num_partitions}
    dataset, train_split, _ = load_client_data(cfg, node)
    spec = model_spec(cfg, dataset)
    received = exchanged_state(build_trainable(spec), spec)  # stands for the decoded message
    if warmup:  # a ClientApp's first round: torch's and the allocator's one-time costs
        train(
            build_trainable(spec),
            train_split,
            epochs=1,
            batch_size=cfg.training.batch_size,
            lr=cfg.training.lr,
            momentum=cfg.training.momentum,
            augment=dataset.augment,
            seed=cfg.run.seed,
        )
    device = select_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
        cuda_baseline = torch.cuda.memory_allocated(device)

    _trim_heap()
    reset = _reset_peak()
    baseline_kb = _status_kb("VmRSS") if reset else None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    model = build_trainable(spec)
    load_exchanged_state(model, spec, received)
    loss = train(
        model,
        train_split,
        epochs=epochs,
        batch_size=cfg.training.batch_size,
        lr=cfg.training.lr,
        momentum=cfg.training.momentum,
        augment=dataset.augment,
        seed=cfg.run.seed,
    )
    seconds = time.perf_counter() - started
    if reset and baseline_kb is not None:
        peak_kb = _status_kb("VmHWM") or 0
        delta_kb, method = peak_kb - baseline_kb, "VmHWM after clear_refs minus VmRSS"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        delta_kb, method = peak_kb - maxrss_before, "ru_maxrss after minus before"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out: dict[str, Any] = {
        "strategy": cfg.run.strategy,
        "model": cfg.model.model,
        "lora_r": cfg.lora.lora_r if cfg.use_lora else None,
        "partition_id": partition_id,
        "train_examples": len(train_split),
        "epochs": epochs,
        "batch_size": cfg.training.batch_size,
        "trainable_parameters": int(trainable),
        "device": str(device),
        "rss_baseline_mb": (baseline_kb or maxrss_before) / 1024,
        "rss_peak_mb": peak_kb / 1024,
        "rss_delta_mb": delta_kb / 1024,
        "method": method,
        "train_seconds": seconds,
        "train_loss": loss,
        "warmup": warmup,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - cuda_baseline
        out["cuda_peak_mb"] = peak / MB
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True, help="JSON object of run-config keys")
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument(
        "--partition-id", type=int, default=-1, help="default: the largest partition"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--no-warmup", action="store_true", help="measure a cold process (first round)"
    )
    args = parser.parse_args(argv)
    if argv is None and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        cmd = [sys.executable, "-m", "flora_tools.memory_probe", *sys.argv[1:]]
        os.execve(sys.executable, cmd, env)  # the allocator reads it at process start
    run_config = json.loads(args.run_config)
    pid = args.partition_id
    if pid < 0:
        pid = largest_partition(run_config, args.num_partitions)
    result = measure(run_config, pid, args.num_partitions, args.epochs, not args.no_warmup)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
