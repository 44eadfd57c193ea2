"""MNIST from its standard idx files, for the MTIL sequence.

Layout: ``$DATA/mnist/`` holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (plain or ``.gz``), or torchvision's download folder ``$DATA/mnist/MNIST/raw/``;
``ranksearch prepare-data mnist --root $DATA`` downloads and arranges it. The idx parser is Fashion-MNIST's (the same
format). Class names are the digits "0".."9" and the prompt MTIL uses is 'a photo of the number: "{}".' (CoDyRA's
``scenario_datasets/collections.py``; its code also wraps each name as 'number: "<torchvision class>"', which
ranksearch does not copy — docs/methods.md). Validation is drawn from the training images; the test split is t10k.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ranksearch.data.arrays import array_split
from ranksearch.data.cache import data_cache_dir, digest
from ranksearch.data.fashion_mnist import read_idx
from ranksearch.data.fewshot import DatasetSplits, Item, protocol_items
from ranksearch.data.resources import templates_for
from ranksearch.data.task import Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

TASK_NAME = "mnist"
FOLDER = "mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSNAMES = [str(d) for d in range(10)]


def _find(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def mnist_dir(root: str | Path) -> Path:
    """The folder with the four idx files under ``root`` (``$DATA``).

    Raises:
        DataError: not there (names ``prepare-data``).
    """
    base = Path(root).expanduser() / FOLDER
    for cand in (base, base / "MNIST" / "raw"):
        if all(_find(cand, f) for pair in FILES.values() for f in pair):
            return cand
    raise DataError(
        f"MNIST not found: expected {base}/ with {', '.join(f for p in FILES.values() for f in p)} (plain or .gz). "
        f"Run `ranksearch prepare-data mnist --root {root}`"
    )


def load_mnist(root: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(images {"train", "test"}: uint8 (N, 28, 28), labels int64 (N,)) from ``root``."""
    folder = mnist_dir(root)
    images, labels = {}, {}
    for part, (img_name, lab_name) in FILES.items():
        x = read_idx(_find(folder, img_name))
        y = read_idx(_find(folder, lab_name)).astype(np.int64)
        if x.ndim != 3 or x.dtype != np.uint8 or y.shape != (x.shape[0],):
            raise DataError(f"{folder}: {part} images {x.dtype} {x.shape} and labels {y.shape} do not match")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{folder}: {part} labels outside 0..9")
        images[part], labels[part] = x, y
    return images, labels


def build_mnist_task(cfg: DataConfig, image_size: int) -> Task:
    """MNIST under the protocol of ``cfg`` (few-shot, base-to-new, or a continual step)."""
    from ranksearch.data.coop import data_root

    images, labels = load_mnist(data_root(cfg))
    splits = DatasetSplits(
        name=TASK_NAME,
        image_dir=mnist_dir(data_root(cfg)),
        classnames=list(CLASSNAMES),
        train=[Item(f"train/{i}", int(y)) for i, y in enumerate(labels["train"])],
        val=None,
        test=[Item(f"test/{i}", int(y)) for i, y in enumerate(labels["test"])],
        fingerprint=digest(
            TASK_NAME, len(labels["train"]), len(labels["test"]), labels["train"][:64].tolist()
        ),
    )
    train, val, test, base = protocol_items(splits, cfg, data_cache_dir(cfg.cache_dir))
    return Task(
        name=TASK_NAME,
        classnames=list(CLASSNAMES),
        templates=templates_for(TASK_NAME, cfg.template),
        train=array_split(train, images, labels, image_size, True, cfg.train_max_side),
        val=array_split(val, images, labels, image_size),
        test=array_split(test, images, labels, image_size),
        base_classes=base,
    )
