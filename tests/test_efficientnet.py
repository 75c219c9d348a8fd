"""EfficientNet-Lite0: pretrained weights, peft-compatible convs, exact outputs, LoRA training."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import torch
from torch import nn

from flora_app.ml.efficientnet import (
    FEATURES,
    InputAdapter,
    SamePad2d,
    build_efficientnet_lite0,
    load_pretrained_state,
    package_model,
    peft_compatible,
    weights_path,
    weights_sha256,
)


def _lora_config(model: nn.Module, r: int = 4) -> object:
    """flora's layout: LoRA on groups == 1 convs, norms and the last Linear (head) saved."""
    from peft import LoraConfig

    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return LoraConfig(r=r, lora_alpha=2.0 * r, target_modules=convs, modules_to_save=[*norms, head])


@pytest.fixture(scope="module")
def pretrained_packages() -> dict[int | None, nn.Module]:
    """The package's own pretrained model, with static (224) and dynamic SAME padding."""
    with torch.random.fork_rng(devices=[]):
        return {size: package_model(True, image_size=size).eval() for size in (224, None)}


@pytest.mark.parametrize("image_size", [224, None], ids=["static", "dynamic"])
@pytest.mark.parametrize("size", [224, 64, 37])
def test_converted_network_computes_exactly_what_the_package_computes(
    pretrained_packages: dict[int | None, nn.Module], image_size: int | None, size: int
) -> None:
    original = pretrained_packages[image_size]
    converted = peft_compatible(copy.deepcopy(original)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        expected, actual = original(x), converted(x)
    # The same F.pad and F.conv2d(padding=0) calls on the same tensors: bit-identical.
    assert torch.equal(actual, expected)
    assert expected.shape == (2, 1000)


def test_training_mode_randomness_is_unchanged_by_the_conversion(
    pretrained_packages: dict[int | None, nn.Module],
) -> None:
    original = copy.deepcopy(pretrained_packages[224]).train()
    converted = peft_compatible(copy.deepcopy(original)).train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outputs = []
    for model in (original, converted):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)  # the same dropout and drop-connect draws
            outputs.append(model(x))
    assert torch.equal(*outputs)


def test_the_package_classes_are_what_peft_cannot_wrap() -> None:
    """The known problem this module exists for (if it stops failing, the shim is moot)."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        original = package_model(False)
    with pytest.raises(AssertionError):
        get_peft_model(original, _lora_config(original))


def test_after_conversion_every_conv_is_a_plain_conv2d_and_peft_wraps_it() -> None:
    from peft import get_peft_model

    model = build_efficientnet_lite0(num_classes=10, in_channels=1, pretrained=True, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 49 and all(type(m) is nn.Conv2d for m in convs)
    assert all(m.padding == (0, 0) for m in convs)  # padding lives in the pad modules
    assert sum(m.groups == 1 for m in convs) == 33  # stem, 1x1 expand/project convs, head conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 49
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["net._fc"]

    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        base_out = model(x)
    assert base_out.shape == (2, 10)
    peft_model = get_peft_model(copy.deepcopy(model), _lora_config(model)).eval()
    with torch.no_grad():
        lora_out = peft_model(x)
    assert lora_out.shape == (2, 10)
    torch.testing.assert_close(lora_out, base_out)  # B starts at zero: LoRA is a no-op at init
    stem = peft_model.base_model.model.net._conv_stem.conv
    assert stem.lora_A["default"].weight.shape == (4, 3, 3, 3)


def test_pretrained_weights_load_from_the_installed_file() -> None:
    digest = weights_sha256()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert weights_sha256() == digest
    assert hashlib.sha256(weights_path().read_bytes()).hexdigest() == digest
    # The file's name carries the first 8 hex digits of its digest (torch hub's convention).
    assert weights_path().name == f"efficientnet-lite0-{digest[:8]}.pth"

    state = load_pretrained_state()
    pretrained = build_efficientnet_lite0(10, 1, pretrained=True, seed=0)
    random = build_efficientnet_lite0(10, 1, pretrained=False, seed=0)
    file_stem = state["_conv_stem.weight"]
    assert torch.equal(pretrained.net._conv_stem.conv.weight, file_stem)
    assert not torch.equal(random.net._conv_stem.conv.weight, file_stem)
    assert torch.equal(pretrained.net._bn1.running_var, state["_bn1.running_var"])
    assert torch.all(random.net._bn1.running_var == 1)  # PyTorch's init: untouched statistics
    assert pretrained.net._bn1.eps == 1e-3 and pretrained.net._bn1.momentum == pytest.approx(0.01)


def test_builds_are_a_pure_function_of_the_seed() -> None:
    a = build_efficientnet_lite0(10, 1, pretrained=True, seed=3).state_dict()
    b = build_efficientnet_lite0(10, 1, pretrained=True, seed=3).state_dict()
    c = build_efficientnet_lite0(10, 1, pretrained=True, seed=4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        is_head = key.startswith("net._fc.")
        assert torch.equal(a[key], c[key]) != is_head, key  # only the head follows the seed
    assert a["net._fc.weight"].shape == (10, FEATURES)

    # Random init: the backbone follows the seed too; the head is the pretrained build's.
    r3 = build_efficientnet_lite0(10, 1, pretrained=False, seed=3).state_dict()
    r4 = build_efficientnet_lite0(10, 1, pretrained=False, seed=4).state_dict()
    assert torch.equal(r3["net._fc.weight"], a["net._fc.weight"])
    assert not torch.equal(r3["net._conv_stem.conv.weight"], r4["net._conv_stem.conv.weight"])


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_efficientnet_lite0(10, 1, pretrained=False, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_one_sgd_step_changes_only_the_trainable_tensors() -> None:
    from peft import get_peft_model

    base = build_efficientnet_lite0(10, 1, pretrained=True, seed=0, input_size=32)
    model = get_peft_model(base, _lora_config(base))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("modules_to_save" in n) for n in trainable)

    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    statistics = (".running_mean", ".running_var", ".num_batches_tracked")
    for key in changed:  # parameters that moved were trainable; buffers only in saved copies
        assert key in trainable or ("modules_to_save" in key and key.endswith(statistics)), key
    frozen = [k for k in before if k not in trainable and "modules_to_save" not in k]
    assert frozen and not changed.intersection(frozen)  # the backbone stays bit-identical
    assert any("lora_B" in k for k in changed)
    assert any("_fc.modules_to_save" in k and k.endswith(".weight") for k in changed)


def test_input_adapter_repeats_gray_and_resizes() -> None:
    gray = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = InputAdapter(1, 64)(gray)
    assert out.shape == (2, 3, 64, 64)
    assert torch.equal(out[:, 0], out[:, 2])
    expected = nn.functional.interpolate(gray, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :1], expected)
    rgb = torch.randn(2, 3, 64, 64)
    assert torch.equal(InputAdapter(3, 64)(rgb), rgb)  # already the right size: untouched
    with pytest.raises(ValueError, match="input channels"):
        InputAdapter(2, 64)


@pytest.mark.parametrize("size", [7, 8, 37])
def test_same_padding_gives_ceil_of_size_over_stride(size: int) -> None:
    pad = SamePad2d((5, 5), (2, 2), (1, 1))
    conv = nn.Conv2d(1, 1, 5, stride=2)
    assert conv(pad(torch.zeros(1, 1, size, size))).shape[-1] == -(-size // 2)
