"""Datasets, flwr-datasets partitioning and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flora_app.ml.data import (
    Augment,
    DataSpec,
    augment_batch,
    client_splits,
    load_dataset,
    partition_indices,
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
    again = partition_indices.__wrapped__(labels, 10, partitioner, 0.5, 0)  # bypass the cache
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices.__wrapped__(labels, 10, partitioner, 0.5, 1)
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

    def split(n: int) -> datasets.Dataset:
        images = [
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)
        ]
        features = datasets.Features(
            {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        )
        return datasets.Dataset.from_dict(
            {"img": images, "label": [i % 10 for i in range(n)]}, features=features
        )

    for name, n in (("train", 40), ("test", 20)):
        split(n).to_parquet(str(tmp_path / f"{name}.parquet"))
    ds = load_dataset.__wrapped__(DataSpec("cifar10", source=str(tmp_path)))
    assert ds.train.x.shape == (40, 3, 32, 32) and ds.test.x.shape == (20, 3, 32, 32)
    assert ds.augment == Augment(pad=4, flip=True)
    assert ds.train.y.tolist()[:3] == [0, 1, 2]
