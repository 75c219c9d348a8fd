"""Datasets, federated partitions and tensor augmentations.

Images live as one float tensor (N, C, H, W) per split; partitioning is flwr-datasets'
(``IidPartitioner`` / ``DirichletPartitioner``) run over an in-memory table of labels and row
indices, so the same partitioner code serves every dataset. Files are read and images normalised
by torchvision (its dataset readers, ``transforms.v2``), which already handles the formats; it is
imported where it is used, since a SuperNode that finds its partition in its node cache
(``flora_app.node_cache``) needs none of it. Everything is cached per process: a Ray actor
loads its dataset once per run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flora_app.ml.names import DATASETS, PARTITIONERS

CIFAR10_HUB_ID = "uoft-cs/cifar10"
# The folder torchvision's CIFAR10 reads (python pickles, as cs.toronto.edu ships them).
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Debian's dataset-fashion-mnist installs the original gzipped idx files here (offline data).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# The four idx files, named as Zalando ships them (and torchvision expects them, uncompressed).
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Held-out test share for datasets that ship without a test split (digits, synthetic).
TEST_FRACTION = 0.2
NUM_CLASSES = 10


class DatasetUnavailableError(ValueError):
    """A dataset's files are not on this machine; the one-line message says how to get them.

    A ValueError, so callers that report bad configuration report this the same way.
    """


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


@dataclass(frozen=True)
class DataInfo:
    """What a model and a client's training need to know of a dataset, without its images."""

    in_channels: int
    num_classes: int
    augment: Augment


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

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.in_channels, self.num_classes, self.augment)


@dataclass(frozen=True)
class DataSpec:
    """What to load: hashable so loaded data can be cached per process."""

    dataset: str = "digits"
    source: str = ""
    seed: int = 0
    synthetic_samples: int = 2000
    synthetic_image_size: int = 16


def _normalised(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``x`` (N, C, H, W) standardised per channel by torchvision's v2 transforms, whole batch.

    uint8 pixels are scaled to [0, 1] first (``ToDtype``); float input is only normalised, with
    the same float32 arithmetic as ``(x - mean) / std``, so digits and synthetic are unchanged.
    """
    from torchvision.transforms import v2

    if x.dtype == torch.uint8:
        # ToDtype makes a fresh float tensor, so normalising it in place saves a full copy.
        steps = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std, inplace=True)]
    else:
        steps = [v2.Normalize(mean, std)]
    return v2.Compose(steps)(x)


def _uint8_mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) standard deviation of uint8 pixels on the [0, 1] scale.

    Exact, from a 256-bin histogram in float64: no float copy of the whole pool is made.
    """
    counts = torch.bincount(x.reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = (counts * values).sum() / counts.sum()
    var = (counts * (values - mean) ** 2).sum() / counts.sum()
    return float(mean), float(var.sqrt())


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
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    xt = _normalised(torch.from_numpy(x), [mean], [std])
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
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    xt = _normalised(torch.from_numpy(x), [mean] * 3, [std] * 3)
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(
        Split(xt[train_idx], yt[train_idx]),
        Split(xt[test_idx], yt[test_idx]),
        Augment(),
    )


# Both splits' raw pixels and labels: train (N, C, H, W) uint8, train (N,) int64, then test.
_RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _hub_splits(source: str, image_column: str, mode: str) -> _RawSplits:
    """Train and test pixels of a Hugging Face dataset (a Hub id or a local copy's folder).

    ``datasets`` decodes the whole image column into one uint8 array in PIL ``mode`` ("RGB",
    "L"), so no Python loop over images runs here.
    """
    import datasets

    dataset_dict = datasets.load_dataset(source)
    raw: list[torch.Tensor] = []
    for split in ("train", "test"):
        if split not in dataset_dict:
            raise ValueError(f"dataset {source!r} has no {split!r} split")
        missing = {image_column, "label"} - set(dataset_dict[split].column_names)
        if missing:
            raise ValueError(f"dataset {source!r} split {split!r} lacks columns {sorted(missing)}")
        table = dataset_dict[split].cast_column(image_column, datasets.Image(mode=mode))
        columns = table.with_format("numpy")[:]
        pixels = torch.from_numpy(columns[image_column])
        if pixels.ndim == 3:  # single-channel images decode without a channel axis
            pixels = pixels[..., None]
        raw += [pixels.permute(0, 3, 1, 2).contiguous(), torch.from_numpy(columns["label"])]
    return raw[0], raw[1].long(), raw[2], raw[3].long()


def _cifar10_root(source: str) -> Path | None:
    """torchvision's root for ``source`` if it is, or holds, a ``cifar-10-batches-py`` folder."""
    if not source:
        return None
    path = Path(source).expanduser()
    if (path / CIFAR10_FOLDER).is_dir():
        return path
    if path.name == CIFAR10_FOLDER and path.is_dir():
        return path.parent
    return None


def _torchvision_cifar10(root: Path) -> _RawSplits:
    """CIFAR-10's python pickles read by torchvision, which also checks every file's MD5."""
    import torchvision

    raw: list[torch.Tensor] = []
    for train in (True, False):
        try:
            split = torchvision.datasets.CIFAR10(root, train=train, download=False)
        except RuntimeError as exc:  # torchvision's message suggests a download: not here
            raise DatasetUnavailableError(
                f"dataset 'cifar10': {root / CIFAR10_FOLDER} lacks files or fails torchvision's "
                "MD5 check; copy the folder whole, as the CIFAR-10 python archive unpacks"
            ) from exc
        raw += [
            torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(),
            torch.as_tensor(split.targets, dtype=torch.long),
        ]
    return raw[0], raw[1], raw[2], raw[3]


def load_cifar10_dataset(source: str = "") -> Dataset:
    """CIFAR-10 from a local torchvision folder or through Hugging Face ``datasets``.

    ``source`` is a folder that is or holds ``cifar-10-batches-py`` (read by torchvision), or a
    Hub id (default ``uoft-cs/cifar10``, as flwr-datasets loads it) or a local copy of it with
    ``train`` and ``test`` splits and the Hub's columns (``img``: image, ``label``: int). The
    Hub needs the internet; both code paths are tested here on small local copies.
    """
    root = _cifar10_root(source)
    if root is not None:
        x_train, y_train, x_test, y_test = _torchvision_cifar10(root)
    else:
        x_train, y_train, x_test, y_test = _hub_splits(source or CIFAR10_HUB_ID, "img", "RGB")
    return Dataset(
        Split(_normalised(x_train, _CIFAR_MEAN, _CIFAR_STD), y_train),
        Split(_normalised(x_test, _CIFAR_MEAN, _CIFAR_STD), y_test),
        Augment(pad=4, flip=True),
    )


def fashion_mnist_missing(folder: Path) -> list[str]:
    """The idx files ``folder`` lacks (by their ``.gz`` names); either form of a file counts."""
    return [
        f"{name}.gz"
        for name in FASHION_MNIST_FILES
        if not (folder / name).is_file() and not (folder / f"{name}.gz").is_file()
    ]


def fashion_mnist_unavailable(folder: Path, missing: Sequence[str]) -> DatasetUnavailableError:
    """The one-line error for absent Fashion-MNIST files: what is missing and how to get it."""
    why = f"missing {', '.join(missing)}" if folder.is_dir() else "no such folder"
    return DatasetUnavailableError(
        f"dataset 'fashion-mnist': no Fashion-MNIST files in {folder} ({why}); install Debian's "
        f"package {FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE}, as root) or "
        "set dataset-source to a folder holding the four idx files"
    )


def data_cache_dir() -> Path:
    """flora's per-user cache folder: ``$XDG_CACHE_HOME/flora``, else ``~/.cache/flora``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "flora"


def _gzip_size(path: Path) -> int:
    """The uncompressed size gzip records in a file's last four bytes (modulo 2**32)."""
    with path.open("rb") as packed:
        packed.seek(-4, os.SEEK_END)
        return int.from_bytes(packed.read(4), "little")


def _gunzip_once(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst`` unless ``dst`` already is it, atomically.

    ``dst`` carries ``src``'s mtime, so a changed source (a package upgrade) is decompressed
    again. The data goes to a temporary file in the same folder first and is renamed into place:
    a concurrent reader sees no file or a whole one, never half of one.
    """
    src_stat = src.stat()
    if not dst.is_symlink() and dst.is_file():
        dst_stat = dst.stat()
        same_size = dst_stat.st_size % 2**32 == _gzip_size(src)
        if same_size and dst_stat.st_mtime_ns == src_stat.st_mtime_ns:
            return
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as packed:
            shutil.copyfileobj(packed, out, 1 << 20)
        os.chmod(tmp, src_stat.st_mode & 0o777)  # as readable as the source (mkstemp: 0600)
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.replace(tmp, dst)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetUnavailableError(
            f"dataset 'fashion-mnist': cannot decompress {src} ({exc})"
        ) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _link_once(src: Path, dst: Path) -> None:
    """Point ``dst`` at an uncompressed ``src`` (no copy), atomically like ``_gunzip_once``."""
    if dst.is_symlink() and Path(os.readlink(dst)) == src:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    os.symlink(src, tmp)
    os.replace(tmp, dst)


def _fashion_mnist_cache(folder: Path) -> Path:
    """A torchvision root holding ``folder``'s idx files, uncompressed, in the user's cache.

    torchvision's FashionMNIST reads only uncompressed files, from ``<root>/FashionMNIST/raw/``;
    the root is ``<cache>/fashion-mnist/<hash of the folder's path>``, so each source folder
    has its own, decompressed once and reused by every later process.
    """
    folder = folder.resolve()
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    root = data_cache_dir() / "fashion-mnist" / key
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (folder / name).is_file():
            _link_once(folder / name, raw / name)
        else:
            _gunzip_once(folder / f"{name}.gz", raw / name)
    return root


def _is_hub_id(source: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; paths (absolute, ``./``, ``~``, deeper) are not."""
    return (
        bool(source)
        and not source.startswith(("/", ".", "~"))
        and source.count("/") <= 1
        and not Path(source).exists()
    )


def _holds_hub_copy(folder: Path) -> bool:
    """Whether ``folder`` holds a Hub dataset's data files (what ``datasets`` reads locally)."""
    patterns = ("*.parquet", "*/*.parquet", "*.arrow", "*/*.arrow")
    return any(any(folder.glob(pattern)) for pattern in patterns)


def _fashion_mnist_raw(source: str) -> _RawSplits:
    if _is_hub_id(source):
        return _hub_splits(source, "image", "L")
    folder = Path(source).expanduser() if source else FASHION_MNIST_DIR
    missing = fashion_mnist_missing(folder)
    if len(missing) == len(FASHION_MNIST_FILES) and folder.is_dir() and _holds_hub_copy(folder):
        return _hub_splits(str(folder), "image", "L")
    if missing:
        raise fashion_mnist_unavailable(folder, missing)
    import torchvision

    root = _fashion_mnist_cache(folder)
    train = torchvision.datasets.FashionMNIST(root, train=True, download=False)
    test = torchvision.datasets.FashionMNIST(root, train=False, download=False)
    return train.data[:, None], train.targets, test.data[:, None], test.targets


def load_fashion_mnist_dataset(source: str = "") -> Dataset:
    """Zalando's Fashion-MNIST: 60,000 + 10,000 28x28 grayscale clothes, offline by default.

    ``source`` empty reads Debian's dataset-fashion-mnist (``FASHION_MNIST_DIR``); a folder
    path reads the four idx files there (gzipped or not); a folder with none of them but a
    Hub dataset's parquet/arrow files, or a Hub id (e.g. ``zalando-datasets/fashion_mnist``:
    columns ``image``, ``label``), goes through Hugging Face ``datasets``. Idx files are read by
    torchvision's reader. Both splits are standardised with the train split's pixel mean and
    standard deviation (about 0.286 and 0.353 for the real data).
    """
    x_train, y_train, x_test, y_test = _fashion_mnist_raw(source)
    mean, std = _uint8_mean_std(x_train)
    return Dataset(
        Split(_normalised(x_train, [mean], [std]), y_train),
        Split(_normalised(x_test, [mean], [std]), y_test),
        # Clothes may be mirrored (a left sleeve is a right one) and items fill most of the
        # 28x28 frame, so shifts stay small: 2 pixels of padding, half the images flipped.
        Augment(pad=2, flip=True),
    )


def source_stamp(spec: DataSpec) -> str:
    """What identifies the bytes ``load_dataset(spec)`` would read, without reading them: the
    files' names, sizes and modification times (a local folder), the Hub id (online), the
    scikit-learn release that embeds digits; and this module's own source, so a change to how
    images are read or normalised is never served from a cache made before it."""
    from importlib import metadata

    parts = [hashlib.sha256(Path(__file__).read_bytes()).hexdigest()]
    if spec.dataset == "digits":
        parts.append(f"scikit-learn=={metadata.version('scikit-learn')}")
    elif spec.dataset in ("fashion-mnist", "cifar10"):
        default = FASHION_MNIST_DIR if spec.dataset == "fashion-mnist" else CIFAR10_HUB_ID
        source = spec.source or str(default)
        folder = Path(source).expanduser()
        if folder.exists():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    stat = path.stat()
                    parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            parts.append(f"hub:{source}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def load_dataset(spec: DataSpec) -> Dataset:
    """Load (once per process) the dataset a run uses."""
    if spec.dataset == "digits":
        return load_digits_dataset()
    if spec.dataset == "synthetic":
        return load_synthetic_dataset(spec.synthetic_samples, spec.synthetic_image_size, spec.seed)
    if spec.dataset == "cifar10":
        return load_cifar10_dataset(spec.source)
    if spec.dataset == "fashion-mnist":
        return load_fashion_mnist_dataset(spec.source)
    raise ValueError(f"unknown dataset {spec.dataset!r}: expected one of {', '.join(DATASETS)}")


@functools.lru_cache(maxsize=4)
def _partitioner(
    labels: tuple[int, ...], num_partitions: int, partitioner: str, alpha: float, seed: int
) -> Any:
    """A flwr-datasets partitioner over a two-column in-memory table (``label``, ``row``), so
    images never need converting to a Hugging Face dataset; its split already decided.

    Cached per process, and it hands out one partition at a time: a SuperNode needs only its
    own, and reading all N (a millisecond each through Arrow) cost 11.5 s at 10,000 nodes.
    """
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise ValueError(f"num-partitions = {num_partitions}: expected 1..{n} for {n} samples")
    table = datasets.Dataset.from_dict({"label": list(labels), "row": list(range(n))})
    if partitioner == "iid":
        # IidPartitioner splits in order; shuffle first so the split is random but seeded.
        part = IidPartitioner(num_partitions=num_partitions)
        part.dataset = table.shuffle(seed=seed)
        return part
    if partitioner == "dirichlet":
        return _dirichlet(table, num_partitions, alpha, seed)
    raise ValueError(
        f"unknown partitioner {partitioner!r}: expected one of {', '.join(PARTITIONERS)}"
    )


def _rows(part: Any, partition_id: int) -> np.ndarray:
    # ``with_format("numpy")[:]`` takes the column in one Arrow read; iterating the plain
    # column goes row by row (seconds for 60,000 rows).
    return np.asarray(part.load_partition(partition_id).with_format("numpy")[:]["row"], np.int64)


def partition_rows(
    labels: tuple[int, ...],
    num_partitions: int,
    partitioner: str,
    alpha: float,
    seed: int,
    partition_id: int,
) -> np.ndarray:
    """Row indices of one partition, by flwr-datasets' partitioners; deterministic in seed."""
    return _rows(_partitioner(labels, num_partitions, partitioner, alpha, seed), partition_id)


def partition_indices(
    labels: tuple[int, ...], num_partitions: int, partitioner: str, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Row indices of every partition (``partition_rows`` for each; tools and tests)."""
    part = _partitioner(labels, num_partitions, partitioner, alpha, seed)
    return tuple(_rows(part, i) for i in range(num_partitions))


def _dirichlet(table: Any, num_partitions: int, alpha: float, seed: int) -> Any:
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
        part.dataset = table
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                part.load_partition(0)  # draws every partition's rows, or fails at this floor
        except ValueError:
            continue
        return part
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
    labels = tuple(dataset.train.y.tolist())
    rows = partition_rows(labels, num_partitions, partitioner, alpha, seed, partition_id)
    rng = np.random.default_rng([seed, partition_id])
    rows = rng.permutation(rows)
    n_val = round(len(rows) * val_fraction) if len(rows) > 1 else 0
    return dataset.train.subset(rows[n_val:]), dataset.train.subset(rows[:n_val])


# Not torchvision's v2.RandomCrop / RandomHorizontalFlip: they draw one set of parameters per
# call, so a whole batch would share one crop and one flip, and calling them per sample would be
# a Python loop over the batch. Here every sample gets its own offsets and flip in one gather.
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
