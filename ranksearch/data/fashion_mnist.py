"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx .gz files, docs/data.md, Fashion-MNIST).

Few-shot train and validation (disjoint, ``min(K, 4)`` per class by default) are drawn from the 60,000
training images by the same seeded rule and split file as the other datasets; the test split is the 10,000
``t10k`` images, optionally capped per class (``data.max_test_per_class``) for speed. Images are 28x28 grey: they
go through CLIP's evaluation preprocessing (PIL bicubic resize to the model's input size, as RGB), and the training
images keep their 28x28 originals for the train-time crop.

Nothing is cached on disk here: parsing the idx files and resizing the sampled images takes well under a
second, less than reading a cached full-resolution test tensor back.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ranksearch.data.arrays import array_split
from ranksearch.data.cache import data_cache_dir, digest
from ranksearch.data.fewshot import DatasetSplits, Item, protocol_items
from ranksearch.data.resources import classname_table, templates_for
from ranksearch.data.task import Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

TASK_NAME = "fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def classnames() -> list[str]:
    """The 10 classes in label order, in prompt-friendly form ("t-shirt", ..., "ankle boot")."""
    return list(classname_table(TASK_NAME)["names"])


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): magic (0, 0, dtype, ndim), ndim big-endian int32 sizes, data.

    Image files therefore have a 16-byte header (ndim 3) and label files an 8-byte one (ndim 1).

    Raises:
        DataError: missing file, bad magic, or a size that does not match the header.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(x) for x in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says {shape} ({expected} bytes), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def fashion_mnist_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder with the four idx .gz files: ``override``, ``$RANKSEARCH_FASHION_MNIST_DIR`` or the Debian path.

    Raises:
        DataError: the files are not there (names the apt command that installs them).
    """
    folder = Path(override or os.environ.get("RANKSEARCH_FASHION_MNIST_DIR") or DEFAULT_DIR).expanduser()
    missing = [folder / f for pair in FILES.values() for f in pair if not (folder / f).exists()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found ({missing[0]} is missing). Install the Debian package: {APT_HINT} "
            f"(files go to {DEFAULT_DIR}), or point data.root at a folder holding {', '.join(FILES['train'])} "
            f"and {', '.join(FILES['test'])}"
        )
    return folder


def load_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` ("train" or "test")."""
    images = read_idx(folder / FILES[split][0])
    labels = read_idx(folder / FILES[split][1]).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def build_fashion_mnist_task(cfg: DataConfig, image_size: int) -> Task:
    """Fashion-MNIST under the protocol of ``cfg`` (few-shot or base-to-new), at ``image_size``.

    ``data.root`` may point at a folder with the idx files; otherwise the Debian package's folder is used.
    """
    folder = fashion_mnist_dir(cfg.root)
    images, labels = {}, {}
    for part in ("train", "test"):
        images[part], labels[part] = load_arrays(folder, part)
    splits = DatasetSplits(
        name=TASK_NAME,
        image_dir=folder,
        classnames=classnames(),
        train=[Item(f"train/{i}", int(y)) for i, y in enumerate(labels["train"])],
        val=None,  # validation comes from the train file, disjoint from the shots
        test=[Item(f"test/{i}", int(y)) for i, y in enumerate(labels["test"])],
        # The package is fixed content; the sizes guard against a different copy under data.root.
        fingerprint=digest(
            "fashion-mnist", len(labels["train"]), len(labels["test"]), labels["train"][:64].tolist()
        ),
    )
    train, val, test, base = protocol_items(splits, cfg, data_cache_dir(cfg.cache_dir))
    return Task(
        name=TASK_NAME,
        classnames=splits.classnames,
        templates=templates_for(TASK_NAME, cfg.template),
        train=array_split(train, images, labels, image_size, True, cfg.train_max_side),
        val=array_split(val, images, labels, image_size),
        test=array_split(test, images, labels, image_size),
        base_classes=base,
    )
