"""Federated BatchNorm statistics: measured on the global model, pooled exactly on the server.

Averaging the clients' running statistics does not give the statistics of the averaged model:
the average of models is a different function from each of them (LoRA's A and B are averaged
separately, and alpha = 16 r moves weights fast). On digits that mismatch made the server's
accuracy swing by 20-30 points between rounds while the same weights with correct statistics
were stable. So in each round's evaluate phase the sampled clients measure per-channel moments
of the *received global model* on their training data, and the server pools them exactly
(weighted means of the mean and of E[x^2]) before its centralised evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flora_app.ml.data import Split

MEAN_SUFFIX = ".running_mean"
VAR_SUFFIX = ".running_var"


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm_statistics(model: nn.Module) -> int:
    """Put every BatchNorm in eval mode (normalise with, and keep, its running statistics)
    inside a model otherwise in train mode; returns how many there are. ``model.train()``
    undoes it, so call this after it."""
    norms = _batchnorms(model)
    for module in norms:
        module.eval()
    return len(norms)


@torch.no_grad()
def measure_batchnorm_statistics(model: nn.Module, split: Split, batch_size: int = 256) -> bool:
    """Set every BatchNorm's running statistics to the exact moments of its input on ``split``.

    Forward hooks sum x and x^2 per channel over all samples (train-mode forward, as BN
    recalibration does), so the result is the population mean and variance, not an average of
    batch statistics. Returns False (and changes nothing) when there is nothing to measure.
    """
    norms = _batchnorms(model)
    if not norms or len(split) == 0:
        return False
    sums: dict[nn.Module, list] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].double()
        dims = [0, *range(2, x.dim())]
        acc = sums.setdefault(module, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [m.register_forward_hook(hook) for m in norms]
    was_training = model.training
    try:
        model.train()
        # Train mode also runs dropout and drop-connect (EfficientNet-Lite0), which draw from
        # torch's global RNG: a fixed seed, forked, makes the measurement a function of the
        # model and the data alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for start in range(0, len(split), batch_size):
                model(split.x[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for module, (count, total, total_sq) in sums.items():
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        module.running_mean.copy_(mean.to(module.running_mean.dtype))
        module.running_var.copy_(var.to(module.running_var.dtype))
    return True


def pool_batchnorm_statistics(
    parts: list[tuple[dict[str, np.ndarray], int]],
) -> dict[str, np.ndarray]:
    """Exact pooled mean and variance from per-client (statistics, sample count) pairs.

    mean = sum n_i m_i / N and var = sum n_i (v_i + m_i^2) / N - mean^2: the moments of all
    clients' data together, including the spread between client means.
    """
    parts = [(stats, n) for stats, n in parts if n > 0]
    if not parts:
        return {}
    total = float(sum(n for _, n in parts))
    pooled: dict[str, np.ndarray] = {}
    for key in parts[0][0]:
        if not key.endswith(MEAN_SUFFIX):
            continue
        var_key = key[: -len(MEAN_SUFFIX)] + VAR_SUFFIX
        mean = sum(n * s[key].astype(np.float64) for s, n in parts) / total
        second = (
            sum(
                n * (s[var_key].astype(np.float64) + s[key].astype(np.float64) ** 2)
                for s, n in parts
            )
            / total
        )
        pooled[key] = mean.astype(np.float32)
        pooled[var_key] = np.maximum(second - mean**2, 0.0).astype(np.float32)
    return pooled
