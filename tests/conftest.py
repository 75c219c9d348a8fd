"""Shared fixtures: hand-built Flower messages and contexts, small model specs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from flwr.supercore.logger import FLOWER_LOGGER

from flora_app.ml.lora import ModelSpec


@pytest.fixture
def cnn_spec() -> ModelSpec:
    return ModelSpec("cnn", 1, 10, 16, seed=0, use_lora=True, lora_r=4, lora_alpha=8.0)


@pytest.fixture
def tiny_run_config() -> dict:
    """The app's defaults shrunk to the tiny CNN (what the handler tests run)."""
    import tomllib
    from pathlib import Path

    defaults = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    cfg = dict(defaults["tool"]["flwr"]["app"]["config"])
    cfg.update(
        {"model": "cnn", "model-width": 16, "lora-r": 4, "lora-alpha": 8.0, "local-epochs": 1}
    )
    return cfg


@pytest.fixture
def warnings_log() -> Iterator[list[str]]:
    """The messages Flower logged at WARNING or above during a test."""
    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _Keep(level=logging.WARNING)
    FLOWER_LOGGER.addHandler(handler)
    yield lines
    FLOWER_LOGGER.removeHandler(handler)


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Messages built by strategies take their run from Flower's task identity, which a
    SuperLink sets for a real ServerApp process; tests stand in for it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


@pytest.fixture(autouse=True, scope="session")
def _private_node_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every process a test starts, shares one fresh node cache
    (``flora_app.node_cache``), never the user's."""
    import os

    from flora_app.node_cache import ENV_FOLDER

    before = os.environ.get(ENV_FOLDER)
    os.environ[ENV_FOLDER] = str(tmp_path_factory.mktemp("node-cache"))
    yield
    if before is None:
        del os.environ[ENV_FOLDER]
    else:
        os.environ[ENV_FOLDER] = before
