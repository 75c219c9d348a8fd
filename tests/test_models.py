"""Architectures, seeded base weights and the fingerprint."""

from __future__ import annotations

import pytest
import torch

from flora_app.ml.models import (
    MODELS,
    NORMS,
    base_fingerprint,
    build_model,
    conv_module_names,
    head_module_name,
    norm_module_names,
    stem_conv_name,
)


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


def test_model_choices_keep_their_order() -> None:
    assert MODELS[:4] == ("resnet8", "resnet18", "cnn", "mobilenet-v3-small")
    assert NORMS == ("batch", "group")


def test_mobilenet_v3_small_is_torchvisions_from_a_grayscale_stem() -> None:
    model = build_model("mobilenet-v3-small", in_channels=1, num_classes=10, seed=0)
    stem = model.features[0][0]
    assert (stem.in_channels, stem.out_channels) == (1, 16)
    assert stem.kernel_size == (3, 3) and stem.stride == (2, 2) and stem.padding == (1, 1)
    assert stem.bias is None
    assert model.classifier[3].out_features == 10
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.train()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenet_base_is_a_pure_function_of_the_seed_and_ignores_width() -> None:
    a = build_model("mobilenet-v3-small", 1, 10, width=64, seed=3)
    b = build_model("mobilenet-v3-small", 1, 10, width=8, seed=3)
    c = build_model("mobilenet-v3-small", 1, 10, width=64, seed=4)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert base_fingerprint(a) == base_fingerprint(b) != base_fingerprint(c)
    assert not torch.equal(a.features[0][0].weight, c.features[0][0].weight)


def test_mobilenet_gets_the_flocora_init_over_torchvisions() -> None:
    model = build_model("mobilenet-v3-small", 3, 10, seed=0)
    conv = model.features[9].block[0][0]  # 1x1 expand, 48 -> 288: fan_out = 288
    expected_std = (2.0 / 288) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    norms = [model.get_submodule(n) for n in norm_module_names(model)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


@pytest.mark.parametrize("name", ["resnet8", "cnn", "mobilenet-v3-small"])
def test_group_norm_replaces_every_batchnorm(name: str) -> None:
    batch = build_model(name, 1, 10, 16, seed=0)
    group = build_model(name, 1, 10, 16, seed=0, norm="group")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in group.modules())
    assert norm_module_names(group) == norm_module_names(batch)
    norms = [group.get_submodule(n) for n in norm_module_names(group)]
    assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 2 for m in norms)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert sum(p.numel() for p in group.parameters()) == sum(p.numel() for p in batch.parameters())
    assert not list(group.buffers())  # no running statistics
    assert group(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_group_norm_refuses_channels_it_cannot_split_naming_the_model() -> None:
    with pytest.raises(ValueError, match=r"'cnn'.*1 channels"):
        build_model("cnn", 1, 10, width=4, norm="group")  # conv1 has width // 4 = 1 channel


def test_unknown_choices_and_missing_pretrained_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="model 'resnet8' has no pretrained weights"):
        build_model("resnet8", 3, 10, pretrained=True)
    with pytest.raises(ValueError, match=r"unknown norm 'layer'.*batch, group"):
        build_model("resnet8", 3, 10, norm="layer")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9", 3, 10)


def test_stem_is_the_first_conv_and_the_head_the_last_linear() -> None:
    model = build_model("mobilenet-v3-small", 1, 10)
    assert stem_conv_name(model) == "features.0.0"
    assert head_module_name(model) == "classifier.3"
    assert stem_conv_name(build_model("resnet8", 3, 10, 8)) == "conv1"


def test_training_with_dropout_is_a_function_of_its_seed() -> None:
    """Dropout and drop-connect draw from torch's global RNG, whose state in a Ray actor
    depends on the messages it handled before: training seeds it, so it does not matter."""
    import torch
    from torch import nn

    from flora_app.ml.batchnorm import measure_batchnorm_statistics
    from flora_app.ml.data import Augment, Split
    from flora_app.ml.training import train

    def model() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(144, 10)
        )

    g = torch.Generator().manual_seed(2)
    split = Split(torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    states = []
    for noise in (3, 4):
        m = model()
        torch.manual_seed(noise)  # whatever ran before
        train(m, split, 2, 8, 0.1, 0.9, Augment(), seed=7)
        measure_batchnorm_statistics(m, split)
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        after = torch.rand(1)  # the caller's stream goes on as if nothing drew from it
        torch.manual_seed(noise)
        assert torch.equal(after, torch.rand(1))
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
