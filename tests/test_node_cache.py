"""A SuperNode's disk cache of its partition (``flora_app.node_cache``): exact, keyed by all
that decides the split, robust to damage and full disks, bounded, and the reason a message of a
deployment no longer imports the dataset machinery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flora_app.config import FloraConfig
from flora_app.ml.data import Augment, DataInfo, Split
from flora_app.node_cache import ENV_FOLDER, ENV_LIMIT_MB, cached_client_data
from flora_app.task import load_client_data

NODE = {"partition-id": 1, "num-partitions": 4}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_FOLDER, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _data(seed: int, rows: int = 6) -> tuple[DataInfo, Split, Split]:
    g = torch.Generator().manual_seed(seed)
    return (
        DataInfo(1, 10, Augment(pad=2, flip=True)),
        Split(torch.randn(rows, 1, 8, 8, generator=g), torch.randint(0, 10, (rows,), generator=g)),
        Split(torch.randn(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),  # no validation rows
    )


def _same(a: tuple[DataInfo, Split, Split], b: tuple[DataInfo, Split, Split]) -> bool:
    return a[0] == b[0] and all(
        torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a[1:], b[1:], strict=True)
    )


def test_a_miss_builds_and_keeps_a_hit_reads_exactly_what_was_kept(folder: Path) -> None:
    built = []

    def build(seed: int):
        built.append(seed)
        return _data(seed)

    first = cached_client_data({"k": 1}, lambda: build(1))
    again = cached_client_data({"k": 1}, lambda: build(99))  # not called: a hit
    other = cached_client_data({"k": 2}, lambda: build(2))
    assert built == [1, 2]
    assert _same(first, again) and not _same(first, other)
    assert len(list(folder.glob("splits-*.safetensors"))) == 2
    assert not list(folder.glob(".tmp-*"))  # nothing half-written is left


def test_the_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_FOLDER, "off")
    calls = []
    for _ in range(2):
        cached_client_data({"k": 1}, lambda: calls.append(1) or _data(1))
    assert calls == [1, 1]


def test_a_damaged_file_is_rebuilt_and_an_unwritable_folder_costs_only_speed(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_log: list[str]
) -> None:
    cached_client_data({"k": 1}, lambda: _data(1))
    (path,) = folder.glob("splits-*.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # truncated, as a full disk or a crash leaves it
    assert _same(cached_client_data({"k": 1}, lambda: _data(1)), _data(1))
    assert any("unreadable" in w for w in warnings_log)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(ENV_FOLDER, str(blocked / "cache"))
    assert _same(cached_client_data({"k": 3}, lambda: _data(3)), _data(3))
    assert any("cannot write" in w for w in warnings_log)


def test_the_folder_is_trimmed_to_its_limit_oldest_first(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_client_data({"k": 0}, lambda: _data(0, rows=2000))  # about 0.5 MB each
    size = next(folder.glob("splits-*")).stat().st_size
    monkeypatch.setenv(ENV_LIMIT_MB, str(2.5 * size / 2**20))
    for k in range(1, 5):
        cached_client_data({"k": k}, lambda k=k: _data(k, rows=2000))
        os.utime(next(iter(sorted(folder.glob("splits-*"), key=os.path.getmtime))))
    assert len(list(folder.glob("splits-*"))) == 2
    calls = []
    cached_client_data({"k": 4}, lambda: calls.append(4) or _data(4, rows=2000))
    assert calls == []  # the newest survived


def test_client_data_through_the_cache_equals_the_uncached_and_follows_the_config(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = FloraConfig.from_run_config({"partitioner": "dirichlet", "val-fraction": 0.2})
    monkeypatch.setenv(ENV_FOLDER, "off")
    plain = load_client_data(cfg, NODE)
    monkeypatch.setenv(ENV_FOLDER, str(folder))
    assert _same(load_client_data(cfg, NODE), plain)  # the miss
    assert _same(load_client_data(cfg, NODE), plain)  # the hit
    assert len(list(folder.glob("splits-*"))) == 1
    for change in ({"seed": 1}, {"val-fraction": 0.3}, {"dirichlet-alpha": 0.1}):
        other = FloraConfig.from_run_config({**cfg.to_run_config(), **change})
        assert not _same(load_client_data(other, NODE), plain), change
    assert not _same(load_client_data(cfg, {**NODE, "partition-id": 2}), plain)
    assert len(list(folder.glob("splits-*"))) == 5  # one file per distinct split


def test_a_changed_data_file_is_a_miss(folder: Path, tmp_path: Path) -> None:
    from tests.test_data import _write_fashion_folder

    _write_fashion_folder(tmp_path / "fm")
    cfg = FloraConfig.from_run_config(
        {"dataset": "fashion-mnist", "dataset-source": str(tmp_path / "fm")}
    )
    node = {"partition-id": 0, "num-partitions": 2}
    before = load_client_data(cfg, node)
    _write_fashion_folder(tmp_path / "fm", seed=1)
    later = os.stat(tmp_path / "fm" / "train-images-idx3-ubyte.gz").st_mtime_ns + 10**9
    for path in (tmp_path / "fm").iterdir():
        os.utime(path, ns=(later, later))
    from flora_app.ml.data import load_dataset

    load_dataset.cache_clear()  # a new message: a new process
    assert not _same(load_client_data(cfg, node), before)


def test_a_message_with_a_warm_cache_imports_no_dataset_machinery(folder: Path) -> None:
    """What a deployment's ClientApp process pays: with the partition cached, neither
    scikit-learn (digits), Hugging Face datasets nor flwr-datasets is imported."""
    code = (
        "import json, sys\n"
        "from flora_app.config import FloraConfig\n"
        "from flora_app.task import load_client_data\n"
        f"load_client_data(FloraConfig.from_run_config({{}}), {NODE!r})\n"
        "loaded = [m for m in ('sklearn', 'datasets', 'flwr_datasets') if m in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    env = {**os.environ, ENV_FOLDER: str(folder)}
    root = Path(__file__).parent.parent
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=root,
            check=True,
            text=True,
            capture_output=True,
        )
        for _ in range(2)
    ]
    cold, warm = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert cold == ["sklearn", "datasets", "flwr_datasets"]
    assert warm == []
