"""Architectures, seeded base weights and the fingerprint."""

from __future__ import annotations

import pytest
import torch

from flora_app.ml.models import base_fingerprint, build_model, conv_module_names


@pytest.mark.parametrize(("name", "expected"), [("resnet8", 1_227_594), ("resnet18", 11_173_962)])
def test_cifar_resnet_parameter_counts_match_the_paper(name: str, expected: int) -> None:
    model = build_model(name, in_channels=3, num_classes=10, width=64, seed=0)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_is_cifar_style_3x3_stem_without_maxpool() -> None:
    model = build_model("resnet8", 3, 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_input_channels_follow_the_dataset() -> None:
    model = build_model("resnet8", in_channels=1, num_classes=10, width=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_base_weights_are_a_pure_function_of_the_seed() -> None:
    a, b = build_model("resnet8", 3, 10, 16, seed=3), build_model("resnet8", 3, 10, 16, seed=3)
    c = build_model("resnet8", 3, 10, 16, seed=4)
    assert base_fingerprint(a) == base_fingerprint(b)
    assert base_fingerprint(a) != base_fingerprint(c)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn", 1, 10, 16, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_flocora_init_kaiming_fan_out_and_unit_norms() -> None:
    model = build_model("resnet18", 3, 10, 64, seed=0)
    conv = model.layers[3][0].conv2  # 512 x 512 x 3 x 3: fan_out = 512 * 9
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.02
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_every_conv_is_listed_for_lora_including_stem_and_shortcuts() -> None:
    names = conv_module_names(build_model("resnet8", 3, 10))
    assert "conv1" in names
    assert sum("shortcut_conv" in n for n in names) == 2
    assert len(names) == 9
