"""peft LoRA wrapping, the exchanged state and its exact round trip."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from flora_app.ml.batchnorm import measure_batchnorm_statistics
from flora_app.ml.data import Split
from flora_app.ml.lora import (
    BASE_SPEC_FILE,
    LORA_MODES,
    ModelSpec,
    StateMismatchError,
    build_trainable,
    exchanged_state,
    load_exchanged_state,
    load_running_statistics,
    load_saved_model,
    lora_target_names,
    running_statistics,
    save_adapter,
)
from flora_app.ml.models import (
    build_model,
    conv_module_names,
    head_module_name,
    norm_module_names,
)

P = "base_model.model."  # peft's prefix of every adapter-state name


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
    spec = ModelSpec("cnn", 1, 10, 16, 0, True, 4, 8.0, lora_mode="lora")
    model = build_trainable(spec)
    state = exchanged_state(model, spec)
    assert not any(k.endswith("bn1.weight") for k in state)
    assert not any(".fc." in k for k in state)
    assert all("lora_" in k for k in state)
    assert any(k.endswith("bn1.running_mean") for k in running_statistics(model, spec))


def _assert_round_trip_is_exact(spec: ModelSpec, seed: int) -> None:
    """Perturbed exchanged tensors loaded into a fresh model come back bit for bit."""
    sent = _perturb(exchanged_state(build_trainable(spec), spec), seed=seed)
    receiver = build_trainable(spec)
    load_exchanged_state(receiver, spec, sent)
    back = exchanged_state(receiver, spec)
    assert list(back) == list(sent)
    for k in sent:
        np.testing.assert_array_equal(back[k], sent[k])


@pytest.mark.parametrize("use_lora", [True, False])
def test_exchanged_state_round_trip_is_exact(cnn_spec: ModelSpec, use_lora: bool) -> None:
    _assert_round_trip_is_exact(replace(cnn_spec, use_lora=use_lora), seed=1)


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


def _exchanged_name(parameter: str) -> str:
    """The name peft gives a trainable parameter in its adapter state (adapter name dropped)."""
    return parameter.replace(".modules_to_save.default", "").replace(".default", "")


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {_exchanged_name(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model", ["resnet8", "cnn"])
def test_default_mode_sends_lora_on_every_conv_all_norms_and_the_head(model: str) -> None:
    spec = ModelSpec(model, 3, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    assert spec.lora_mode == "lora-norm-head" and spec.norm == "batch" and not spec.pretrained
    base = build_model(model, 3, 10, 16, seed=0)
    expected = {f"{P}{c}.lora_{ab}.weight" for c in conv_module_names(base) for ab in "AB"}
    expected |= {f"{P}{n}.{t}" for n in norm_module_names(base) for t in ("weight", "bias")}
    expected |= {f"{P}{head_module_name(base)}.{t}" for t in ("weight", "bias")}
    trained = build_trainable(spec)
    assert set(exchanged_state(trained, spec)) == expected == _trainable_names(trained)


# (model, lora_mode): LoRA A + B tensors, norm weights + biases, head tensors, stem weights.
MODE_COUNTS = [
    ("cnn", "lora", 4, 0, 0, 0),
    ("cnn", "lora-norm", 4, 4, 0, 0),
    ("cnn", "lora-norm-head", 4, 4, 2, 0),
    ("cnn", "full-stem", 2, 4, 2, 1),
    ("resnet8", "lora", 18, 0, 0, 0),
    ("resnet8", "lora-norm", 18, 18, 0, 0),
    ("resnet8", "lora-norm-head", 18, 18, 2, 0),
    ("resnet8", "full-stem", 16, 18, 2, 1),
]


@pytest.mark.parametrize(("model", "mode", "n_lora", "n_norm", "n_head", "n_stem"), MODE_COUNTS)
def test_each_lora_mode_exchanges_exactly_its_tensors(
    model: str, mode: str, n_lora: int, n_norm: int, n_head: int, n_stem: int
) -> None:
    spec = ModelSpec(model, 3, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    spec = replace(spec, lora_mode=mode)
    trained = build_trainable(spec)
    names = list(exchanged_state(trained, spec))
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    norm = [n for n in names if "bn" in n.removeprefix(P).split(".")[-2]]
    head = [n for n in names if n.startswith(f"{P}fc.")]
    stem = [n for n in names if n == f"{P}conv1.weight"]
    assert (len(lora), len(norm), len(head), len(stem)) == (n_lora, n_norm, n_head, n_stem)
    assert len(names) == n_lora + n_norm + n_head + n_stem
    assert set(names) == _trainable_names(trained)  # exactly what trains travels
    assert any(k.endswith("bn1.running_mean") for k in running_statistics(trained, spec))


def test_full_stem_trains_and_sends_the_whole_stem_conv_without_lora() -> None:
    spec = ModelSpec("resnet8", 3, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    spec = replace(spec, lora_mode="full-stem")
    base = build_model("resnet8", 3, 10, 16, seed=0)
    assert "conv1" not in lora_target_names(base, "full-stem")
    assert "layers.0.0.conv1" in lora_target_names(base, "full-stem")
    model = build_trainable(spec)
    state = exchanged_state(model, spec)
    np.testing.assert_array_equal(state[f"{P}conv1.weight"], base.conv1.weight.detach().numpy())
    assert not any(k.startswith(f"{P}conv1.lora_") for k in state)
    assert f"{P}layers.0.0.conv1.lora_A.weight" in state  # block convs named conv1 keep LoRA
    stem = model.base_model.model.conv1
    assert not hasattr(stem, "lora_A")
    assert stem.modules_to_save["default"].weight.requires_grad
    assert not stem.original_module.weight.requires_grad
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert stem.modules_to_save["default"].weight.grad.abs().sum() > 0


def test_full_stem_round_trip_is_exact() -> None:
    spec = ModelSpec("resnet8", 3, 10, 8, seed=0, use_lora=True, lora_r=2, lora_alpha=8.0)
    _assert_round_trip_is_exact(replace(spec, lora_mode="full-stem"), seed=4)


def test_unknown_lora_mode_names_the_allowed_ones() -> None:
    assert LORA_MODES == ("lora", "lora-norm", "lora-norm-head", "full-stem")
    with pytest.raises(ValueError, match="lora, lora-norm, lora-norm-head, full-stem"):
        ModelSpec("cnn", 1, 10, 16, 0, True, lora_mode="norm-only")
    with pytest.raises(ValueError, match="batch, group"):
        ModelSpec("cnn", 1, 10, 16, 0, True, norm="instance")


def test_pretrained_resnet8_is_refused() -> None:
    spec = ModelSpec("resnet8", 3, 10, 8, 0, True, 4, 8.0, pretrained=True)
    with pytest.raises(ValueError, match="model 'resnet8' has no pretrained weights"):
        build_trainable(spec)


def test_mobilenet_lora_goes_on_groups_1_convs_and_the_hidden_linear_only() -> None:
    from peft.tuners.lora import LoraLayer

    spec = ModelSpec("mobilenet-v3-small", 1, 10, 64, 0, True, 4, 8.0)
    base = build_model("mobilenet-v3-small", 1, 10)
    convs = [base.get_submodule(n) for n in conv_module_names(base)]
    dense = {n for n, m in zip(conv_module_names(base), convs, strict=True) if m.groups == 1}
    depthwise = {n for n, m in zip(conv_module_names(base), convs, strict=True) if m.groups > 1}
    assert depthwise and all(
        base.get_submodule(n).groups == base.get_submodule(n).in_channels for n in depthwise
    )
    model = build_trainable(spec)
    with_lora = {n.removeprefix(P) for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert with_lora == dense | {"classifier.0"}
    state = exchanged_state(model, spec)
    assert f"{P}classifier.3.weight" in state and f"{P}classifier.0.lora_A.weight" in state
    assert not any(k.startswith(tuple(f"{P}{n}." for n in depthwise)) for k in state)
    assert set(state) == _trainable_names(model)


def test_mobilenet_lora_step_changes_only_exchanged_tensors() -> None:
    spec = ModelSpec("mobilenet-v3-small", 1, 10, 64, 0, True, 4, 8.0)
    model = build_trainable(spec).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    exchanged = set(exchanged_state(model, spec))
    assert changed and {_exchanged_name(n) for n in changed} <= exchanged
    assert any(".lora_B." in n for n in changed) and any("classifier.3" in n for n in changed)


@pytest.mark.parametrize("model", ["resnet8", "cnn"])
def test_group_norm_models_have_no_statistics_and_send_their_norms(model: str) -> None:
    spec = ModelSpec(model, 1, 10, 16, 0, True, 4, 8.0, norm="group")
    trained = build_trainable(spec)
    assert not running_statistics(trained, spec)
    state = exchanged_state(trained, spec)
    norms = norm_module_names(build_model(model, 1, 10, 16, norm="group"))
    assert {f"{P}{n}.{t}" for n in norms for t in ("weight", "bias")} <= set(state)
    assert set(state) == _trainable_names(trained)
    frozen = replace(spec, lora_mode="lora")
    assert all(".lora_" in k for k in exchanged_state(build_trainable(frozen), frozen))


def test_group_norm_model_passes_through_the_batchnorm_measurement_untouched() -> None:
    spec = ModelSpec("resnet8", 1, 10, 8, 0, True, 4, 8.0, norm="group")
    model = build_trainable(spec)
    split = Split(torch.randn(6, 1, 8, 8), torch.zeros(6, dtype=torch.long))
    state = exchanged_state(model, spec)
    assert not measure_batchnorm_statistics(model, split)
    load_running_statistics(model, spec, {})  # what the server loads when no one measured
    after = exchanged_state(model, spec)
    for k in state:
        np.testing.assert_array_equal(after[k], state[k])


def test_saved_full_stem_group_norm_adapter_reloads_to_the_same_model(tmp_path) -> None:
    from peft import PeftModel

    spec = ModelSpec("resnet8", 1, 10, 8, 0, True, 2, 8.0, norm="group", lora_mode="full-stem")
    model = build_trainable(spec)
    load_exchanged_state(model, spec, _perturb(exchanged_state(model, spec), seed=5))
    save_adapter(model, spec, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / BASE_SPEC_FILE).read_text())
    assert meta["lora_mode"] == "full-stem" and meta["norm"] == "group"
    reloaded, reloaded_spec = load_saved_model(tmp_path / "adapter")
    assert reloaded_spec == spec
    sent, back = exchanged_state(model, spec), exchanged_state(reloaded, spec)
    assert list(back) == list(sent)
    for k in sent:
        np.testing.assert_array_equal(back[k], sent[k])
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), reloaded.eval()(x))
    # A user's plain peft load gives the same function: the trained stem lands in the base conv.
    user = PeftModel.from_pretrained(
        build_model("resnet8", 1, 10, 8, norm="group"), tmp_path / "adapter"
    )
    torch.testing.assert_close(model(x), user.eval()(x))


@pytest.mark.parametrize(
    ("flags", "mode"), [((True, True), "lora-norm-head"), ((False, False), "lora")]
)
def test_adapters_saved_with_norm_and_head_flags_still_load(tmp_path, flags, mode) -> None:
    spec = ModelSpec("cnn", 1, 10, 16, 0, True, 4, 8.0, lora_mode=mode)
    model = build_trainable(spec)
    save_adapter(model, spec, tmp_path / "adapter")
    path = tmp_path / "adapter" / BASE_SPEC_FILE
    meta = json.loads(path.read_text())
    del meta["lora_mode"], meta["norm"], meta["pretrained"]
    meta["train_norm"], meta["train_head"] = flags
    path.write_text(json.dumps(meta))
    assert load_saved_model(tmp_path / "adapter")[1] == spec
    assert asdict(spec)["lora_mode"] == mode


def test_ffa_lora_keeps_a_at_its_seeded_init_and_sends_only_the_rest() -> None:
    """lora-freeze-a: A is not trainable, never in the exchanged state, and the same seeded
    tensor on every participant; B still trains and travels."""
    from flora_app.ml.data import Augment, Split
    from flora_app.ml.training import train

    frozen = ModelSpec(
        "cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0, lora_freeze_a=True
    )
    full = ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(frozen)
    sent = exchanged_state(model, frozen)
    everything = exchanged_state(build_trainable(full), full)
    a_names = [n for n in everything if "lora_A" in n]
    assert a_names and not any("lora_A" in n for n in sent)
    assert set(sent) == set(everything) - set(a_names)
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    other = build_trainable(frozen)  # another participant builds the same A
    for name, value in other.named_parameters():
        if "lora_A" in name:
            torch.testing.assert_close(value, a_before[name], rtol=0, atol=0)
    split = Split(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    train(model, split, 1, 8, 0.1, 0.9, Augment(), seed=0)
    for name, value in model.named_parameters():
        if "lora_A" in name:
            torch.testing.assert_close(value, a_before[name], rtol=0, atol=0)
    after = exchanged_state(model, frozen)
    assert any(not np.array_equal(after[n], sent[n]) for n in sent if "lora_B" in n)


def test_an_ffa_lora_run_exchanges_fewer_parameters_and_completes(
    tmp_path, tiny_run_config: dict
) -> None:
    import json

    from flora_app.config import FloraConfig
    from flora_app.server_app import run
    from tests.helpers import LocalGrid

    exchanged = {}
    for freeze in (False, True):
        name = f"ffa-{freeze}"
        cfg = {
            **tiny_run_config,
            "strategy": "flocora",
            "lora-freeze-a": freeze,
            "num-server-rounds": 2,
            "fraction-train": 1.0,
            "output-dir": str(tmp_path),
            "run-name": name,
        }
        summary = run(LocalGrid(cfg, 2), FloraConfig.from_run_config(cfg))
        assert summary["rounds"] == 2
        exchanged[freeze] = json.loads((tmp_path / name / "config.json").read_text())[
            "exchanged-parameters"
        ]
    assert exchanged[True] < exchanged[False]
