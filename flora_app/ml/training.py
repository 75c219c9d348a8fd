"""Local training and evaluation loops on in-memory tensors.

Batches are sliced from one tensor with a seeded permutation: no DataLoader workers to fork
inside Ray actors, and the same seed reproduces the same local run.

Device: the loops run on CUDA when torch sees a GPU (``FLORA_DEVICE`` overrides: ``cpu``,
``cuda``, ``cuda:1``). The model is moved there for the loop and back to the CPU afterwards,
so everything around the loops (adapter exchange, BatchNorm measurement) stays on the CPU and
nothing changes on CPU-only machines. Augmentation stays on the CPU generator, so a seed gives
the same batches on either device.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from flora_app.ml.batchnorm import freeze_batchnorm_statistics
from flora_app.ml.data import Augment, Split, augment_batch


def select_device() -> torch.device:
    """``FLORA_DEVICE`` when set, else CUDA if torch sees a GPU, else the CPU."""
    name = os.environ.get("FLORA_DEVICE", "").strip()
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train(
    model: nn.Module,
    split: Split,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    augment: Augment,
    seed: int,
    frozen_batchnorm: bool = False,
) -> float:
    """SGD (Nesterov when momentum > 0, as FLoCoRA) over the trainable parameters only.

    ``frozen_batchnorm`` normalises with the model's running statistics and leaves them as
    they are (``batchnorm-stats = frozen``). Returns the mean training loss over all batches.
    An empty split trains nothing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if len(split) == 0 or not params:
        return 0.0
    device = select_device()
    model.to(device)  # in place: ``params`` are the same Parameter objects afterwards
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    if frozen_batchnorm:
        freeze_batchnorm_statistics(model)
    # Dropout and drop-connect (EfficientNet-Lite0) draw from torch's global RNG, whose state
    # in a Ray actor or a tool depends on whatever ran before: seed it from ``seed`` for the
    # duration (forked, so the caller's stream is untouched), so a seed is the same training.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        total, batches = _epochs(
            model,
            split,
            optimizer,
            generator,
            device,
            epochs,
            batch_size,
            augment,
            frozen_batchnorm,
        )
    return total / max(batches, 1)


def _epochs(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    epochs: int,
    batch_size: int,
    augment: Augment,
    frozen_batchnorm: bool,
) -> tuple[float, int]:
    """The epochs of ``train``: (summed loss, batches)."""
    total, batches = 0.0, 0
    try:
        for _ in range(epochs):
            order = torch.randperm(len(split), generator=generator)
            for start in range(0, len(split), batch_size):
                idx = order[start : start + batch_size]
                if idx.numel() < 2 and len(split) >= 2 and not frozen_batchnorm:
                    continue  # BatchNorm cannot normalise a batch of one
                x = augment_batch(split.x[idx], augment, generator).to(device)
                loss = F.cross_entropy(model(x), split.y[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
    finally:
        model.to("cpu")
    return total, batches


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (eval mode: running stats)."""
    if len(split) == 0:
        return 0.0, 0.0
    device = select_device()
    model.to(device)
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for start in range(0, len(split), batch_size):
            x = split.x[start : start + batch_size].to(device)
            y = split.y[start : start + batch_size].to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.to("cpu")
    return loss_sum / len(split), correct / len(split)
