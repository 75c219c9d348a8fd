"""CIFAR-style ResNets, a tiny CNN and MobileNetV3-Small, with base weights that are a pure
function of the seed.

torchvision's ResNets are the ImageNet variants (7x7 stem, max-pool), so the CIFAR ResNets are
written here; MobileNetV3-Small is torchvision's, built from scratch (no pretrained weights).
Every participant rebuilds the same frozen base from the seed, as FLoCoRA does; only adapters
travel, and ``base_fingerprint`` lets a client prove it rebuilt the same base as the server.

Normalisation is BatchNorm or, as in the FLoCoRA authors' runs, GroupNorm(2, C): the same
affine parameters and no running statistics to federate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from flora_app.ml.names import MODELS, NORMS, PRETRAINED_MODELS

# Builds the normalisation layer for a given number of channels.
NormFactory = Callable[[int], nn.Module]

# Every normalisation layer type a model may hold (what ``norm_module_names`` lists).
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)

# GroupNorm's group count in the FLoCoRA authors' code: every norm layer splits its channels in 2.
GROUP_NORM_GROUPS = 2


class BasicBlock(nn.Module):
    """Two 3x3 convs with normalisation and an identity or 1x1-conv shortcut."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm_layer: NormFactory = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.has_shortcut = stride != 1 or in_planes != planes
        if self.has_shortcut:
            self.shortcut_conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            self.shortcut_bn = norm_layer(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.shortcut_bn(self.shortcut_conv(x)) if self.has_shortcut else x
        return F.relu(out + skip)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem without max-pool, stages of BasicBlocks, global average pool."""

    def __init__(
        self,
        blocks_per_stage: list[int],
        in_channels: int,
        num_classes: int,
        width: int,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(width)
        stages = []
        in_planes = width
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2**i
            layers = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride, norm_layer))
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

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = norm_layer(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _mobilenet_v3_small(
    in_channels: int, num_classes: int, norm_layer: NormFactory | None = None
) -> nn.Module:
    """torchvision's MobileNetV3-Small, random (``weights=None``), reading ``in_channels``.

    The architecture is torchvision's unchanged (ImageNet stem: 3x3 stride 2; BatchNorm with
    eps 1e-3 and momentum 0.01 unless ``norm_layer`` is given), so on 28x28 inputs the last
    stage runs at 1x1. Only the stem conv is rebuilt when the input is not RGB, keeping its
    kernel, stride, padding and bias settings.
    """
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    if in_channels != 3:
        stem: nn.Conv2d = model.features[0][0]
        model.features[0][0] = nn.Conv2d(
            in_channels,
            stem.out_channels,
            stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            dilation=stem.dilation,
            groups=stem.groups,
            bias=stem.bias is not None,
            padding_mode=stem.padding_mode,
        )
    return model


def _norm_factory(norm: str, model: str) -> NormFactory:
    """The layer ``norm`` names; GroupNorm refuses channel counts it cannot split in groups."""
    if norm == "batch":
        return nn.BatchNorm2d

    def group_norm(channels: int) -> nn.Module:
        if channels % GROUP_NORM_GROUPS:
            raise ValueError(
                f"model {model!r} with norm 'group': a layer of {channels} channels does not "
                f"split into {GROUP_NORM_GROUPS} groups (choose another model-width)"
            )
        return nn.GroupNorm(GROUP_NORM_GROUPS, channels)

    return group_norm


def _architecture(
    name: str,
    in_channels: int,
    num_classes: int,
    width: int,
    norm: str,
    pretrained: bool,
    seed: int,
    image_size: int,
) -> nn.Module:
    if name == "efficientnet-lite0":
        if norm != "batch":
            raise ValueError("model 'efficientnet-lite0' comes with BatchNorm only (norm 'batch')")
        # ImageNet-pretrained (or randomly initialised) EfficientNet-Lite0 made peft-compatible,
        # with a new head and an input adapter (grayscale to RGB, resized): ml/efficientnet.py
        from flora_app.ml.efficientnet import DEFAULT_INPUT_SIZE, build_efficientnet_lite0

        size = image_size or DEFAULT_INPUT_SIZE
        return build_efficientnet_lite0(num_classes, in_channels, pretrained, seed, size)
    if image_size:
        raise ValueError(f"model {name!r} takes its inputs as they come (image-size 0)")
    norm_layer = _norm_factory(norm, name)
    if name == "resnet8":
        return ResNet([1, 1, 1], in_channels, num_classes, width, norm_layer)
    if name == "resnet18":
        return ResNet([2, 2, 2, 2], in_channels, num_classes, width, norm_layer)
    if name == "cnn":
        return TinyCNN(in_channels, num_classes, max(1, width // 4), norm_layer)
    if name == "mobilenet-v3-small":
        # torchvision's own BatchNorm settings for "batch"; width has no meaning here.
        return _mobilenet_v3_small(
            in_channels, num_classes, None if norm == "batch" else norm_layer
        )
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")


def _check_choices(name: str, norm: str, pretrained: bool) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    if pretrained and name not in PRETRAINED_MODELS:
        raise ValueError(f"model {name!r} has no pretrained weights")


def _flocora_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, depthwise included, and norm weight 1 / bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, NORM_TYPES):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    width: int = 64,
    seed: int = 0,
    *,
    norm: str = "batch",
    pretrained: bool = False,
    image_size: int = 0,
) -> nn.Module:
    """The base network, initialised deterministically from ``seed`` (FLoCoRA's init).

    Convs get Kaiming-normal (fan_out) and norms weight 1 / bias 0 over whatever the
    constructor drew; Linear layers keep the constructor's init (PyTorch's default for ours,
    N(0, 0.01) with zero bias for torchvision's MobileNet). Both draws come from the seeded,
    forked global RNG, so the weights depend on the seed alone and building a model never
    disturbs the caller's random stream. ``width`` sets the first stage's channels of the
    ResNets (a quarter of it for the tiny CNN) and is ignored by ``mobilenet-v3-small``, whose
    widths are torchvision's. ``norm`` picks BatchNorm or GroupNorm(2, C) (``NORMS``).
    ``pretrained`` starts from published weights and skips the seeded init; only the models in
    ``PRETRAINED_MODELS`` have any, the others raise ValueError.
    """
    _check_choices(name, norm, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _architecture(
            name, in_channels, num_classes, width, norm, pretrained, seed, image_size
        )
        if not pretrained:
            _flocora_init(model)
    return model


def conv_module_names(model: nn.Module) -> list[str]:
    """Names of every Conv2d (stem, shortcuts and depthwise convs included)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def stem_conv_name(model: nn.Module) -> str:
    """The network's first conv in module order: the stem, which ``full-stem`` trains in full."""
    return conv_module_names(model)[0]


def norm_module_names(model: nn.Module) -> list[str]:
    """Names of every normalisation layer (BatchNorm and GroupNorm)."""
    return [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]


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
