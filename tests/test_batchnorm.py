"""Federated BatchNorm statistics: exact measurement and exact pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flora_app.ml.batchnorm import (
    measure_batchnorm_statistics,
    pool_batchnorm_statistics,
)
from flora_app.ml.data import Split
from flora_app.ml.lora import (
    ModelSpec,
    StateMismatchError,
    build_trainable,
    exchanged_state,
    load_running_statistics,
    running_statistics,
)


def test_measured_statistics_are_the_population_moments_of_the_first_norm_input() -> None:
    spec = ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(spec)
    x = torch.randn(50, 1, 8, 8) * 3 + 1
    assert measure_batchnorm_statistics(model, Split(x, torch.zeros(50, dtype=torch.long)), 7)
    conv = model.base_model.model.conv1  # LoRA conv feeding bn1 (B = 0, so it is the base conv)
    with torch.no_grad():
        h = conv(x).double()
    state = running_statistics(model, spec)
    np.testing.assert_allclose(
        state["base_model.model.bn1.running_mean"], h.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        state["base_model.model.bn1.running_var"],
        h.var((0, 2, 3), unbiased=False).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_pooling_equals_the_moments_of_the_concatenated_data() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(loc=i, scale=1 + i, size=(n, 3)) for i, n in enumerate([10, 40, 25])]
    parts = [({"l.running_mean": c.mean(0), "l.running_var": c.var(0)}, len(c)) for c in chunks]
    pooled = pool_batchnorm_statistics(parts)
    everything = np.concatenate(chunks)
    np.testing.assert_allclose(pooled["l.running_mean"], everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(pooled["l.running_var"], everything.var(0), rtol=1e-5)


def test_pooling_ignores_clients_without_samples_and_nothing_gives_nothing() -> None:
    stats = {"l.running_mean": np.ones(2), "l.running_var": np.ones(2)}
    assert pool_batchnorm_statistics([]) == {}
    assert pool_batchnorm_statistics([(stats, 0)]) == {}
    np.testing.assert_allclose(pool_batchnorm_statistics([(stats, 5)])["l.running_var"], 1.0)


def test_statistics_stay_out_of_training_messages_and_load_checked() -> None:
    spec = ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(spec)
    assert not any("running" in k for k in exchanged_state(model, spec))
    stats = running_statistics(model, spec)
    key = "base_model.model.bn1.running_var"
    load_running_statistics(model, spec, {key: np.full_like(stats[key], 2.0)})
    np.testing.assert_array_equal(running_statistics(model, spec)[key], 2.0)
    with pytest.raises(StateMismatchError, match="negative"):
        load_running_statistics(model, spec, {key: -np.ones_like(stats[key])})
    with pytest.raises(StateMismatchError, match="unexpected"):
        load_running_statistics(model, spec, {"bn9.running_var": stats[key]})


def _trained(frozen: bool) -> tuple[ModelSpec, torch.nn.Module, dict, float]:
    from flora_app.ml.data import Augment
    from flora_app.ml.training import train

    spec = ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(spec)
    before = running_statistics(model, spec)
    split = Split(torch.randn(40, 1, 8, 8) * 3 + 1, torch.randint(0, 10, (40,)))
    loss = train(model, split, 1, 8, 0.05, 0.9, Augment(), seed=1, frozen_batchnorm=frozen)
    return spec, model, before, loss


def test_frozen_statistics_stay_as_they_were_through_local_training() -> None:
    spec, model, before, _ = _trained(frozen=True)
    after = running_statistics(model, spec)
    assert before.keys() == after.keys() and before
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    # ... while measured ones move, so the comparison above could fail
    spec, model, before, _ = _trained(frozen=False)
    after = running_statistics(model, spec)
    assert any(not np.array_equal(after[n], before[n]) for n in before)


def test_frozen_batchnorm_normalises_with_the_running_statistics_in_training() -> None:
    """In train mode with frozen norms the model is the eval-mode function: batch statistics
    play no part, so two halves of one batch get the outputs they get alone."""
    from flora_app.ml.batchnorm import freeze_batchnorm_statistics

    spec = ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)
    model = build_trainable(spec)
    x = torch.randn(16, 1, 8, 8) * 3 + 1
    model.train()
    assert freeze_batchnorm_statistics(model) > 0
    with torch.no_grad():
        whole, half = model(x), model(x[:8])
        model.eval()
        evaluated = model(x)
    torch.testing.assert_close(whole[:8], half)
    torch.testing.assert_close(whole, evaluated)


def test_frozen_statistics_need_batchnorm() -> None:
    from flora_app.config import ConfigError, FloraConfig

    with pytest.raises(ConfigError, match="'batchnorm-stats' = 'frozen' with norm = 'group'"):
        FloraConfig.from_run_config({"batchnorm-stats": "frozen", "norm": "group"})
    cfg = FloraConfig.from_run_config({"batchnorm-stats": "frozen"})
    assert cfg.model.batchnorm_stats == "frozen"
