"""Datasets, flwr-datasets partitioning and augmentation."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from flora_app.ml import data as data_module
from flora_app.ml.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    Augment,
    Dataset,
    DatasetUnavailableError,
    DataSpec,
    Split,
    _partitioner,
    augment_batch,
    client_splits,
    fashion_mnist_missing,
    load_dataset,
    load_fashion_mnist_dataset,
    partition_indices,
    partition_rows,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec("digits"))


def test_digits_is_offline_with_a_fixed_stratified_test_split(digits) -> None:
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.train.x.shape[1:] == (1, 8, 8)
    assert torch.bincount(digits.test.y, minlength=10).min() >= 30


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_disjoint_cover_everything_and_are_deterministic(digits, partitioner):
    labels = tuple(digits.train.y.tolist())
    parts = partition_indices(labels, 10, partitioner, 0.5, 0)
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(len(labels)))
    _partitioner.cache_clear()  # partition anew, not from this process's cache
    again = partition_indices(labels, 10, partitioner, 0.5, 0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert all(
        np.array_equal(partition_rows(labels, 10, partitioner, 0.5, 0, i), part)
        for i, part in enumerate(parts)
    )
    other = partition_indices(labels, 10, partitioner, 0.5, 1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_skews_labels_more_than_iid(digits) -> None:
    labels = np.asarray(digits.train.y)

    def mean_classes(partitioner: str, alpha: float) -> float:
        parts = partition_indices(tuple(labels.tolist()), 10, partitioner, alpha, 0)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes("iid", 0.5) == 10
    assert mean_classes("dirichlet", 0.1) < 7


def test_dirichlet_with_many_clients_on_a_small_pool_still_gives_everyone_data(digits) -> None:
    parts = partition_indices(tuple(digits.train.y.tolist()), 100, "dirichlet", 0.5, 0)
    assert min(len(p) for p in parts) >= 1


def test_client_holds_out_a_validation_split(digits) -> None:
    train, val = client_splits(digits, 2, 10, "iid", 0.5, 0.2, seed=0)
    assert abs(len(val) - 0.2 * (len(train) + len(val))) <= 1
    with pytest.raises(ValueError, match="partition-id"):
        client_splits(digits, 10, 10, "iid", 0.5, 0.2, seed=0)


def test_random_crop_keeps_shape_and_shifts_content() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = augment_batch(x, Augment(pad=1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for b in range(2):  # every crop is a window of the zero-padded image
        padded = torch.nn.functional.pad(x[b], (1, 1, 1, 1))
        windows = [padded[:, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_flip_mirrors_about_half_the_batch() -> None:
    x = torch.randn(200, 1, 4, 4)
    out = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = sum(torch.equal(out[i], x[i].flip(-1)) for i in range(200))
    assert 60 < flipped < 140
    assert all(torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1)) for i in range(200))


def test_synthetic_has_requested_size_and_is_learnable_by_class_means() -> None:
    ds = load_dataset(DataSpec("synthetic", synthetic_samples=500, synthetic_image_size=8))
    assert len(ds.train) + len(ds.test) == 500 and ds.train.x.shape[1:] == (3, 8, 8)
    means = torch.stack([ds.train.x[ds.train.y == c].mean(0) for c in range(10)])
    dist = ((ds.test.x[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == ds.test.y).float().mean() > 0.5


def test_cifar10_loader_reads_the_hub_column_format(tmp_path) -> None:
    """The real loading code, on a tiny local copy in CIFAR-10's Hub format (img, label)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {"train": rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)}
    pixels["test"] = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)

    def split(arrays: np.ndarray) -> datasets.Dataset:
        features = datasets.Features(
            {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        )
        return datasets.Dataset.from_dict(
            {
                "img": [Image.fromarray(a) for a in arrays],
                "label": [i % 10 for i in range(len(arrays))],
            },
            features=features,
        )

    for name, arrays in pixels.items():
        split(arrays).to_parquet(str(tmp_path / f"{name}.parquet"))
    ds = load_dataset.__wrapped__(DataSpec("cifar10", source=str(tmp_path)))
    assert ds.train.x.shape == (40, 3, 32, 32) and ds.test.x.shape == (20, 3, 32, 32)
    assert ds.augment == Augment(pad=4, flip=True)
    assert ds.train.y.tolist()[:3] == [0, 1, 2]
    # As the hand-written numpy normalisation did it, to float32 rounding.
    old = _old_cifar_normalisation(pixels["train"].transpose(0, 3, 1, 2))
    assert torch.allclose(ds.train.x, old, atol=1e-5, rtol=0)


_CIFAR_MEAN = np.asarray((0.4914, 0.4822, 0.4465), np.float32)[None, :, None, None]
_CIFAR_STD = np.asarray((0.2470, 0.2435, 0.2616), np.float32)[None, :, None, None]


def _old_cifar_normalisation(chw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((chw.astype(np.float32) / 255.0 - _CIFAR_MEAN) / _CIFAR_STD)


def _write_cifar10_batches(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """A tiny ``cifar-10-batches-py`` (python pickles, as the real archive unpacks).

    torchvision checks every file's MD5 against the real archive's; the test registers the
    MD5s of its own files instead, so torchvision's whole reading path still runs.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    rows, labels = {}, {}
    for name in names:
        rows[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels[name] = [int(v) for v in rng.integers(0, 10, 4)]
        with (folder / name).open("wb") as f:
            pickle.dump({"data": rows[name], "labels": labels[name]}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[n, md5(n)] for n in names[:5]])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(
        cifar,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": md5("batches.meta")},
    )
    return {
        "x_train": np.concatenate([rows[n] for n in names[:5]]).reshape(-1, 3, 32, 32),
        "y_train": np.concatenate([labels[n] for n in names[:5]]),
        "x_test": rows["test_batch"].reshape(-1, 3, 32, 32),
        "y_test": np.asarray(labels["test_batch"]),
    }


@pytest.mark.parametrize("point_at", ["root", "batches"])
def test_cifar10_from_a_local_torchvision_folder(tmp_path, monkeypatch, point_at) -> None:
    raw = _write_cifar10_batches(tmp_path, monkeypatch)
    source = tmp_path if point_at == "root" else tmp_path / "cifar-10-batches-py"
    ds = load_dataset.__wrapped__(DataSpec("cifar10", source=str(source)))
    assert ds.train.x.shape == (20, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.y.tolist() == raw["y_train"].tolist()
    assert ds.test.y.tolist() == raw["y_test"].tolist()
    assert torch.allclose(ds.train.x, _old_cifar_normalisation(raw["x_train"]), atol=1e-5)
    assert torch.allclose(ds.test.x, _old_cifar_normalisation(raw["x_test"]), atol=1e-5)
    assert ds.augment == Augment(pad=4, flip=True)


def test_a_corrupted_cifar10_folder_is_one_clear_line(tmp_path, monkeypatch) -> None:
    _write_cifar10_batches(tmp_path, monkeypatch)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("ab") as f:
        f.write(b"x")  # torchvision's MD5 check now fails
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset.__wrapped__(DataSpec("cifar10", source=str(tmp_path)))
    assert "\n" not in str(err.value) and "cifar-10-batches-py" in str(err.value)


def test_dataset_choices_keep_digits_first_as_the_default() -> None:
    assert DATASETS == ("digits", "cifar10", "synthetic", "fashion-mnist")
    assert DataSpec().dataset == "digits"


# --- digits and synthetic: torchvision's Normalize gives exactly the old numpy output ---------


def test_digits_are_normalised_exactly_as_before(digits) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    idx = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(
        idx, test_size=0.2, stratify=bunch.target, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    old = ((x - x[train_idx].mean()) / x[train_idx].std()).astype(np.float32)
    assert torch.equal(digits.train.x, torch.from_numpy(old[train_idx]))
    assert torch.equal(digits.test.x, torch.from_numpy(old[test_idx]))
    assert torch.equal(digits.train.y, torch.from_numpy(bunch.target[train_idx].astype(np.int64)))


def test_synthetic_is_normalised_exactly_as_before() -> None:
    from sklearn.model_selection import train_test_split

    samples, size, seed = 300, 8, 3
    rng = np.random.default_rng(seed)  # the old generator, step by step
    coarse = rng.normal(size=(10, 3, 4, 4)).astype(np.float32)
    prototypes = np.kron(coarse, np.ones((1, 1, 2, 2), np.float32))[:, :, :size, :size]
    y = rng.integers(0, 10, size=samples)
    scale = rng.uniform(0.5, 1.5, size=(samples, 1, 1, 1)).astype(np.float32)
    shift = rng.normal(scale=0.3, size=(samples, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(scale=1.0, size=(samples, 3, size, size)).astype(np.float32)
    x = prototypes[y] * scale + shift + noise
    train_idx, test_idx = train_test_split(
        np.arange(samples), test_size=0.2, stratify=y, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    old = ((x - x[train_idx].mean()) / x[train_idx].std()).astype(np.float32)
    spec = DataSpec("synthetic", seed=seed, synthetic_samples=samples, synthetic_image_size=size)
    ds = load_dataset.__wrapped__(spec)
    assert torch.equal(ds.train.x, torch.from_numpy(old[train_idx]))
    assert torch.equal(ds.test.x, torch.from_numpy(old[test_idx]))


# --- Fashion-MNIST ------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as Zalando (and LeCun) write it: two zero bytes, type 0x08 (unsigned byte),
    the number of dimensions, each dimension as a big-endian uint32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_fashion_folder(folder: Path, gzipped: bool = True, seed: int = 0) -> dict:
    """30 train and 12 test images with known pixels and labels, as the four idx files."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        zip(
            FASHION_MNIST_FILES,
            (
                rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
                np.arange(30) % 10,
                rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
                (np.arange(12) * 3) % 10,
            ),
            strict=True,
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(folder / (f"{name}.gz" if gzipped else name), array)
    return arrays


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """A private $XDG_CACHE_HOME, so tests neither use nor fill the user's cache."""
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def _expected(arrays: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits standardised with the train pixels' mean and population std, in float64."""
    train = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255.0
    test = arrays["t10k-images-idx3-ubyte"].astype(np.float64) / 255.0
    mean, std = train.mean(), train.std()
    return (
        torch.from_numpy((train - mean) / std)[:, None].float(),
        torch.from_numpy((test - mean) / std)[:, None].float(),
    )


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, cache_home, gzipped) -> None:
    arrays = _write_fashion_folder(tmp_path / "fm", gzipped=gzipped)
    ds = load_dataset.__wrapped__(DataSpec("fashion-mnist", source=str(tmp_path / "fm")))
    assert ds.train.x.shape == (30, 1, 28, 28) and ds.test.x.shape == (12, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert abs(ds.train.x.mean().item()) < 1e-5
    assert abs(ds.train.x.std(correction=0).item() - 1) < 1e-5
    expected_train, expected_test = _expected(arrays)
    assert torch.allclose(ds.train.x, expected_train, atol=1e-5, rtol=0)
    assert torch.allclose(ds.test.x, expected_test, atol=1e-5, rtol=0)  # with train's stats
    assert ds.in_channels == 1 and ds.num_classes == 10
    assert ds.augment == Augment(pad=2, flip=True)


def test_fashion_mnist_cannot_load_without_torchvision(tmp_path, cache_home, monkeypatch) -> None:
    """torchvision reads and normalises the files (imported where used, not optional)."""
    _write_fashion_folder(tmp_path / "fm")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if it were not installed
    with pytest.raises(ImportError, match="torchvision"):
        load_fashion_mnist_dataset(str(tmp_path / "fm"))


def test_fashion_mnist_is_read_by_torchvision_from_a_reused_cache(tmp_path, cache_home) -> None:
    """Gzipped files are decompressed once into torchvision's ``FashionMNIST/raw`` layout."""
    arrays = _write_fashion_folder(tmp_path / "fm")
    first = load_fashion_mnist_dataset(str(tmp_path / "fm"))
    roots = list((cache_home / "flora" / "fashion-mnist").iterdir())
    assert len(roots) == 1
    raw = roots[0] / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)  # no temp files
    # torchvision itself reads what the cache holds.
    mnist = torchvision.datasets.FashionMNIST(roots[0], train=True, download=False)
    assert np.array_equal(mnist.data.numpy(), arrays["train-images-idx3-ubyte"])
    inodes = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in raw.iterdir()}

    again = load_fashion_mnist_dataset(str(tmp_path / "fm"))
    assert torch.equal(first.train.x, again.train.x)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in raw.iterdir()} == inodes

    # A changed source (a package upgrade) is decompressed again, not served stale.
    changed = _write_fashion_folder(tmp_path / "fm", seed=1)
    later = os.stat(tmp_path / "fm" / "train-images-idx3-ubyte.gz").st_mtime_ns + 10**9
    for name in FASHION_MNIST_FILES:
        os.utime(tmp_path / "fm" / f"{name}.gz", ns=(later, later))
    reloaded = load_fashion_mnist_dataset(str(tmp_path / "fm"))
    assert torch.allclose(reloaded.train.x, _expected(changed)[0], atol=1e-5, rtol=0)


def test_concurrent_loads_fill_one_cache_safely(tmp_path, cache_home) -> None:
    """Loaders racing on an empty cache each see whole files (temp file + rename)."""
    from concurrent.futures import ThreadPoolExecutor

    arrays = _write_fashion_folder(tmp_path / "fm")
    with ThreadPoolExecutor(6) as pool:
        loaded = list(
            pool.map(lambda _: load_fashion_mnist_dataset(str(tmp_path / "fm")), range(6))
        )
    expected_train, _ = _expected(arrays)
    assert all(torch.allclose(ds.train.x, expected_train, atol=1e-5, rtol=0) for ds in loaded)
    (root,) = (cache_home / "flora" / "fashion-mnist").iterdir()
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)


def _assert_one_line_naming(message: str, folder: Path) -> None:
    assert "\n" not in message
    assert "dataset-fashion-mnist" in message and str(folder) in message


def test_a_missing_fashion_mnist_folder_says_how_to_get_it(tmp_path, cache_home) -> None:
    absent = tmp_path / "absent"
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset.__wrapped__(DataSpec("fashion-mnist", source=str(absent)))
    assert isinstance(err.value, ValueError)
    _assert_one_line_naming(str(err.value), absent)
    assert "no such folder" in str(err.value)


def test_a_missing_fashion_mnist_file_is_named(tmp_path, cache_home) -> None:
    _write_fashion_folder(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetUnavailableError) as err:
        load_fashion_mnist_dataset(str(tmp_path / "fm"))
    _assert_one_line_naming(str(err.value), tmp_path / "fm")
    assert "missing t10k-labels-idx1-ubyte.gz" in str(err.value)


def test_the_default_source_is_debians_folder(tmp_path, cache_home, monkeypatch) -> None:
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(DatasetUnavailableError) as err:
        load_fashion_mnist_dataset()
    _assert_one_line_naming(str(err.value), tmp_path / "debian")
    _write_fashion_folder(tmp_path / "debian")
    assert load_fashion_mnist_dataset().train.x.shape == (30, 1, 28, 28)


def test_fashion_mnist_reads_the_hub_column_format(tmp_path) -> None:
    """The Hub path (``image``, ``label``, as zalando-datasets/fashion_mnist), on a local copy."""
    import datasets
    from PIL import Image

    arrays = _write_fashion_folder(tmp_path / "idx")  # the same pixels, for the expected values
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = [Image.fromarray(a, mode="L") for a in arrays[f"{prefix}-images-idx3-ubyte"]]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"].tolist()
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        )
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        table.to_parquet(str(tmp_path / "hub" / f"{split}.parquet"))
    ds = load_fashion_mnist_dataset(str(tmp_path / "hub"))
    assert ds.train.x.shape == (30, 1, 28, 28) and ds.test.y.dtype == torch.int64
    expected_train, expected_test = _expected(arrays)
    assert torch.allclose(ds.train.x, expected_train, atol=1e-5, rtol=0)
    assert torch.allclose(ds.test.x, expected_test, atol=1e-5, rtol=0)


def test_the_real_fashion_mnist_files(cache_home) -> None:
    """Debian's dataset-fashion-mnist: required in CI (make fashion-mnist installs it)."""
    missing = fashion_mnist_missing(FASHION_MNIST_DIR)
    if missing:
        hint = f"{FASHION_MNIST_DIR} lacks {', '.join(missing)}; run `make fashion-mnist`"
        if os.environ.get("CI") or FASHION_MNIST_DIR.exists():
            pytest.fail(hint)
        pytest.skip(hint)
    ds = load_fashion_mnist_dataset()
    assert ds.train.x.shape == (60_000, 1, 28, 28) and ds.test.x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.train.y, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(ds.test.y, minlength=10).tolist() == [1_000] * 10
    assert abs(ds.train.x.mean().item()) < 1e-4
    assert abs(ds.train.x.std(correction=0).item() - 1) < 1e-4


def test_partitioning_sixty_thousand_images_over_a_hundred_clients(capsys) -> None:
    """Fashion-MNIST's pool, dirichlet(0.5) over 100 clients: done once per process."""
    labels = torch.arange(60_000) % 10
    pool = Split(torch.zeros(60_000, 1, 1, 1), labels)
    dataset = Dataset(pool, Split(pool.x[:10], pool.y[:10]), Augment())
    start = time.perf_counter()
    train, val = client_splits(dataset, 7, 100, "dirichlet", 0.5, 0.1, seed=0)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n60,000 labels, 100 dirichlet(0.5) partitions: {seconds:.2f} s")
    parts = partition_indices(tuple(labels.tolist()), 100, "dirichlet", 0.5, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60_000))
    assert len(train) + len(val) == len(parts[7]) and len(val) > 0
    assert seconds < 30, f"partitioning took {seconds:.1f} s"
