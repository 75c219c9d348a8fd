"""CIFAR-style ResNets and a tiny CNN, with base weights that are a pure function of the seed.

torchvision is not used (see docs/design.md, notes on these machines), and its ResNets are the
ImageNet variants anyway (7x7 stem, max-pool), so the CIFAR architectures are written here.
Every participant rebuilds the same frozen base from the seed, as FLoCoRA does; only adapters
travel, and ``base_fingerprint`` lets a client prove it rebuilt the same base as the server.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.has_shortcut = stride != 1 or in_planes != planes
        if self.has_shortcut:
            self.shortcut_conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.shortcut_bn(self.shortcut_conv(x)) if self.has_shortcut else x
        return F.relu(out + skip)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem without max-pool, stages of BasicBlocks, global average pool."""

    def __init__(
        self, blocks_per_stage: list[int], in_channels: int, num_classes: int, width: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_planes = width
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2**i
            layers = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class TinyCNN(nn.Module):
    """Two convs and a linear head: small enough for end-to-end tests on 2 cores."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# The ``model`` choices, built by ``_architecture``.
MODELS = ("resnet8", "resnet18", "cnn")


def _architecture(name: str, in_channels: int, num_classes: int, width: int) -> nn.Module:
    if name == "resnet8":
        return ResNet([1, 1, 1], in_channels, num_classes, width)
    if name == "resnet18":
        return ResNet([2, 2, 2, 2], in_channels, num_classes, width)
    if name == "cnn":
        return TinyCNN(in_channels, num_classes, max(1, width // 4))
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")


def build_model(
    name: str, in_channels: int, num_classes: int, width: int = 64, seed: int = 0
) -> nn.Module:
    """The base network, initialised deterministically from ``seed`` (FLoCoRA's init).

    Kaiming-normal (fan_out) convs, norm weight 1 / bias 0, and PyTorch's default Linear init;
    the global RNG is forked so building a model never disturbs the caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _architecture(name, in_channels, num_classes, width)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model


def conv_module_names(model: nn.Module) -> list[str]:
    """Names of every Conv2d (stem and shortcuts included): where LoRA goes."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def norm_module_names(model: nn.Module) -> list[str]:
    """Names of every normalisation layer."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def head_module_name(model: nn.Module) -> str:
    """The classifier head: the last Linear layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1]


def base_fingerprint(model: nn.Module) -> str:
    """A short digest of every tensor of the base, in name order, to detect mismatched bases.

    Clients compare theirs with the server's before training: a different torch version, seed
    or width yields different frozen weights, and adapters trained on those would be garbage.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
