"""peft LoRA wrapping, the exchanged state and its exact round trip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flora_app.ml.lora import (
    ModelSpec,
    StateMismatchError,
    build_trainable,
    exchanged_state,
    load_exchanged_state,
    load_saved_model,
    running_statistics,
    save_adapter,
)


def _perturb(state: dict, seed: int) -> dict:
    """Random new values; variances stay positive so the model still computes finite outputs."""
    rng = np.random.default_rng(seed)
    out = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in state.items()}
    return {k: (np.abs(v) + 0.1 if "running_var" in k else v) for k, v in out.items()}


def test_lora_shapes_follow_peft_conv_layout() -> None:
    spec = ModelSpec("resnet8", 3, 10, 64, seed=0, use_lora=True, lora_r=8, lora_alpha=128.0)
    state = exchanged_state(build_trainable(spec), spec)
    assert state["base_model.model.conv1.lora_A.weight"].shape == (8, 3, 3, 3)
    assert state["base_model.model.conv1.lora_B.weight"].shape == (64, 8, 1, 1)
    a = state["base_model.model.layers.2.0.shortcut_conv.lora_A.weight"]
    assert a.shape == (8, 128, 1, 1)
    assert not np.any(state["base_model.model.conv1.lora_B.weight"])  # B starts at zero
    assert not any(
        k.endswith(("num_batches_tracked", "running_mean", "running_var")) for k in state
    )


def test_resnet8_r32_mode2_sends_about_21_percent_of_the_parameters() -> None:
    spec = ModelSpec("resnet8", 3, 10, 64, seed=0, use_lora=True, lora_r=32, lora_alpha=512.0)
    model = build_trainable(spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0.20 < trainable / 1_227_594 < 0.22
    assert sum(v.size for v in exchanged_state(model, spec).values()) == trainable


def test_only_adapters_norms_and_head_train() -> None:
    spec = ModelSpec("resnet8", 3, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(spec)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in names)
    assert any(".fc." in n for n in names) and any(".bn1." in n for n in names)


def test_frozen_norms_and_head_stay_off_the_wire() -> None:
    spec = ModelSpec("cnn", 1, 10, 16, 0, True, 4, 8.0, train_norm=False, train_head=False)
    model = build_trainable(spec)
    state = exchanged_state(model, spec)
    assert not any(k.endswith("bn1.weight") for k in state)
    assert not any(".fc." in k for k in state)
    assert all("lora_" in k for k in state)
    assert any(k.endswith("bn1.running_mean") for k in running_statistics(model, spec))


@pytest.mark.parametrize("use_lora", [True, False])
def test_exchanged_state_round_trip_is_exact(cnn_spec: ModelSpec, use_lora: bool) -> None:
    spec = replace(cnn_spec, use_lora=use_lora)
    sent = _perturb(exchanged_state(build_trainable(spec), spec), seed=1)
    receiver = build_trainable(spec)
    load_exchanged_state(receiver, spec, sent)
    back = exchanged_state(receiver, spec)
    assert list(back) == list(sent)
    for k in sent:
        np.testing.assert_array_equal(back[k], sent[k])


def test_received_adapters_change_the_model_output(cnn_spec: ModelSpec) -> None:
    model = build_trainable(cnn_spec).eval()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    load_exchanged_state(model, cnn_spec, _perturb(exchanged_state(model, cnn_spec), seed=2))
    assert not torch.allclose(before, model(x))


def test_load_rejects_missing_unexpected_misshapen_and_nonfinite(cnn_spec: ModelSpec) -> None:
    model = build_trainable(cnn_spec)
    good = exchanged_state(model, cnn_spec)
    first = next(iter(good))
    with pytest.raises(StateMismatchError, match="missing"):
        load_exchanged_state(model, cnn_spec, {k: v for k, v in good.items() if k != first})
    with pytest.raises(StateMismatchError, match="unexpected"):
        load_exchanged_state(model, cnn_spec, {**good, "extra": np.zeros(1, np.float32)})
    with pytest.raises(StateMismatchError, match="shape"):
        load_exchanged_state(model, cnn_spec, {**good, first: np.zeros((1, 1), np.float32)})
    bad = good[first].copy()
    bad.flat[0] = np.nan
    with pytest.raises(StateMismatchError, match="NaN"):
        load_exchanged_state(model, cnn_spec, {**good, first: bad})


@pytest.mark.parametrize("use_lora", [True, False])
def test_saved_adapter_reloads_to_the_same_model(tmp_path, cnn_spec: ModelSpec, use_lora) -> None:
    spec = replace(cnn_spec, use_lora=use_lora)
    model = build_trainable(spec)
    load_exchanged_state(model, spec, _perturb(exchanged_state(model, spec), seed=3))
    save_adapter(model, spec, tmp_path / "adapter")
    if use_lora:
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded, reloaded_spec = load_saved_model(tmp_path / "adapter")
    assert reloaded_spec == spec
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), reloaded.eval()(x))
