"""Datasets, federated partitions and tensor augmentations.

Images live as one float tensor (N, C, H, W) per split; partitioning is flwr-datasets'
(``IidPartitioner`` / ``DirichletPartitioner``) run over an in-memory table of labels and row
indices, so the same partitioner code serves the embedded digits, synthetic data and CIFAR-10.
Everything is cached per process: a Ray actor or SuperNode loads its dataset once per run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

CIFAR10_HUB_ID = "uoft-cs/cifar10"
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Held-out test share for datasets that ship without a test split (digits, synthetic).
TEST_FRACTION = 0.2
NUM_CLASSES = 10


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding (``pad`` pixels) and optional horizontal flip."""

    pad: int = 0
    flip: bool = False


@dataclass
class Split:
    """Normalised images and integer labels of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> Split:
        index = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[index], self.y[index])


@dataclass
class Dataset:
    """A train pool (to be partitioned), a centralised test split and how to augment."""

    train: Split
    test: Split
    augment: Augment

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


# The ``dataset`` and ``partitioner`` choices; the loaders below are the code that acts on them.
DATASETS = ("digits", "cifar10", "synthetic")
PARTITIONERS = ("iid", "dirichlet")


@dataclass(frozen=True)
class DataSpec:
    """What to load: hashable so loaded data can be cached per process."""

    dataset: str = "digits"
    source: str = ""
    seed: int = 0
    synthetic_samples: int = 2000
    synthetic_image_size: int = 16


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def _split_holdout(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split that depends only on the labels and the seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, offline.

    The test split is fixed (random_state 0) so every seed of a sweep is scored on the same
    360 images.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = _split_holdout(y, seed=0)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    xt = _standardise(x, mean, std)
    yt = torch.from_numpy(y)
    return Dataset(
        Split(xt[train_idx], yt[train_idx]),
        Split(xt[test_idx], yt[test_idx]),
        Augment(pad=1, flip=False),  # digits must not be mirrored
    )


def load_synthetic_dataset(samples: int, image_size: int, seed: int) -> Dataset:
    """Class-conditional noisy images of any size and count, for scale tests.

    Each class has a random smooth RGB prototype; a sample is its prototype, randomly scaled
    and shifted, plus Gaussian noise: learnable, but not trivially.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(NUM_CLASSES, 3, 4, 4)).astype(np.float32)
    reps = -(-image_size // 4)
    prototypes = np.kron(coarse, np.ones((1, 1, reps, reps), np.float32))
    prototypes = prototypes[:, :, :image_size, :image_size]
    y = rng.integers(0, NUM_CLASSES, size=samples)
    scale = rng.uniform(0.5, 1.5, size=(samples, 1, 1, 1)).astype(np.float32)
    shift = rng.normal(scale=0.3, size=(samples, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(scale=1.0, size=(samples, 3, image_size, image_size)).astype(np.float32)
    x = prototypes[y] * scale + shift + noise
    train_idx, test_idx = _split_holdout(y, seed)
    xt = _standardise(x, x[train_idx].mean(), x[train_idx].std())
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(
        Split(xt[train_idx], yt[train_idx]),
        Split(xt[test_idx], yt[test_idx]),
        Augment(),
    )


def _images_to_tensor(images: list, labels: list) -> Split:
    arr = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images])
    x = arr.transpose(0, 3, 1, 2)
    mean = np.asarray(_CIFAR_MEAN, np.float32)[None, :, None, None]
    std = np.asarray(_CIFAR_STD, np.float32)[None, :, None, None]
    return Split(_standardise(x, mean, std), torch.as_tensor(labels, dtype=torch.long))


def load_cifar10_dataset(source: str = "") -> Dataset:
    """CIFAR-10 through Hugging Face ``datasets`` (as flwr-datasets loads it).

    ``source`` is a Hub id (default ``uoft-cs/cifar10``) or a local directory / saved copy with
    ``train`` and ``test`` splits and the Hub's columns (``img``: image, ``label``: int). The
    Hub needs the internet; the code path is tested here on a small local copy.
    """
    import datasets

    dataset_dict = datasets.load_dataset(source or CIFAR10_HUB_ID)
    for split in ("train", "test"):
        if split not in dataset_dict:
            raise ValueError(f"dataset {source!r} has no {split!r} split")
        missing = {"img", "label"} - set(dataset_dict[split].column_names)
        if missing:
            raise ValueError(f"dataset {source!r} split {split!r} lacks columns {sorted(missing)}")
    train, test = dataset_dict["train"], dataset_dict["test"]
    return Dataset(
        _images_to_tensor(train["img"], train["label"]),
        _images_to_tensor(test["img"], test["label"]),
        Augment(pad=4, flip=True),
    )


@functools.lru_cache(maxsize=2)
def load_dataset(spec: DataSpec) -> Dataset:
    """Load (once per process) the dataset a run uses."""
    if spec.dataset == "digits":
        return load_digits_dataset()
    if spec.dataset == "synthetic":
        return load_synthetic_dataset(spec.synthetic_samples, spec.synthetic_image_size, spec.seed)
    if spec.dataset == "cifar10":
        return load_cifar10_dataset(spec.source)
    raise ValueError(f"unknown dataset {spec.dataset!r}: expected one of {', '.join(DATASETS)}")


@functools.lru_cache(maxsize=4)
def partition_indices(
    labels: tuple[int, ...], num_partitions: int, partitioner: str, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Row indices of every partition, by flwr-datasets' partitioners; deterministic in seed.

    The partitioner sees a two-column in-memory table (``label``, ``row``), so images never
    need converting to a Hugging Face dataset.
    """
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise ValueError(f"num-partitions = {num_partitions}: expected 1..{n} for {n} samples")
    table = datasets.Dataset.from_dict({"label": list(labels), "row": list(range(n))})
    if partitioner == "iid":
        # IidPartitioner splits in order; shuffle first so the split is random but seeded.
        table = table.shuffle(seed=seed)
        part = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        return _dirichlet_rows(table, num_partitions, alpha, seed)
    else:
        raise ValueError(
            f"unknown partitioner {partitioner!r}: expected one of {', '.join(PARTITIONERS)}"
        )
    return _rows_of(part, table, num_partitions)


def _rows_of(part: object, table: object, num_partitions: int) -> tuple[np.ndarray, ...]:
    part.dataset = table
    return tuple(
        np.asarray(part.load_partition(i)["row"], dtype=np.int64) for i in range(num_partitions)
    )


def _dirichlet_rows(
    table: object, num_partitions: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Dirichlet label skew, asking for at most 10 samples per client and less if need be.

    flwr-datasets resamples until every client has ``min_partition_size`` samples and gives up
    after 10 tries; small pools split over many clients (digits over 100) cannot give everyone
    10, so the floor is lowered step by step down to 1 before giving up with a clear error.
    """
    import warnings

    from flwr_datasets.partitioner import DirichletPartitioner

    n = len(table)
    first = max(1, min(10, n // (2 * num_partitions)))
    for floor in sorted({first, min(first, 5), min(first, 2), 1}, reverse=True):
        part = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=floor,
            self_balancing=True,
            seed=seed,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _rows_of(part, table, num_partitions)
        except ValueError:
            continue
    raise ValueError(
        f"dirichlet-alpha = {alpha}: could not give each of {num_partitions} clients at least "
        f"one of {n} samples; raise dirichlet-alpha or use fewer clients"
    )


def client_splits(
    dataset: Dataset,
    partition_id: int,
    num_partitions: int,
    partitioner: str,
    alpha: float,
    val_fraction: float,
    seed: int,
) -> tuple[Split, Split]:
    """This client's (train, validation) splits of its partition."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id = {partition_id}: expected 0..{num_partitions - 1} "
            f"(num-partitions = {num_partitions})"
        )
    labels = tuple(int(v) for v in dataset.train.y.tolist())
    rows = partition_indices(labels, num_partitions, partitioner, alpha, seed)[partition_id]
    rng = np.random.default_rng([seed, partition_id])
    rows = rng.permutation(rows)
    n_val = round(len(rows) * val_fraction) if len(rows) > 1 else 0
    return dataset.train.subset(rows[n_val:]), dataset.train.subset(rows[:n_val])


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random crop (after zero padding) and horizontal flip of a whole batch, without loops.

    Per-sample crop offsets become gather indices into the padded batch.
    """
    if aug.pad == 0 and not aug.flip:
        return x
    b, c, h, w = x.shape
    if aug.pad > 0:
        padded = torch.nn.functional.pad(x, (aug.pad,) * 4)
        off_h = torch.randint(0, 2 * aug.pad + 1, (b,), generator=generator)
        off_w = torch.randint(0, 2 * aug.pad + 1, (b,), generator=generator)
        rows = (off_h[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w)
        cols = (off_w[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
        x = _crop(padded, rows, cols)
    if aug.flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Gather an (h, w) window per sample from ``padded`` at the given row/col indices."""
    b, c = rows.shape[:2]
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows, cols]
