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
