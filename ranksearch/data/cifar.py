"""CIFAR-100 in its standard "python version" (``cifar-100-python/{train,test,meta}``), for the MTIL sequence.

Each file is a pickled dict (``b"data"``: uint8 (N, 3072), rows = 1024 red, 1024 green, 1024 blue values of a 32x32
image; ``b"fine_labels"``; ``meta``'s ``b"fine_label_names"``). Unpickling runs code named in the file, so it is done
with an unpickler that only allows the numpy constructors such an array needs (``safe_load_pickle``): a file that
asks for anything else is rejected with a ``DataError``. Class names are the fine label names with "_" as spaces
("aquarium fish"). Validation is drawn from the train file, disjoint from the shots; the test split is the 10,000
test images (optionally capped per class).

Layout: ``$DATA/cifar100/{train,test,meta}`` or ``$DATA/cifar100/cifar-100-python/...`` (what the archive holds);
``ranksearch prepare-data cifar100 --root $DATA`` downloads and arranges it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ranksearch.data.arrays import array_split
from ranksearch.data.cache import data_cache_dir, digest
from ranksearch.data.fewshot import DatasetSplits, Item, protocol_items
from ranksearch.data.resources import templates_for
from ranksearch.data.task import Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

TASK_NAME = "cifar100"
FOLDER = "cifar100"
FILES = ("train", "test", "meta")
MAX_PICKLE_BYTES = 512 * 2**20  # the train file is ~155 MB


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only what a pickled numpy array needs; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def safe_load_pickle(path: Path) -> Any:
    """Unpickle a CIFAR batch file without running arbitrary code (``bytes`` keys, as Python 2 wrote them).

    Raises:
        DataError: missing, oversized, or not a plain data pickle (the message names the file and the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR-100 file not found: {path}")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes is too large for a CIFAR-100 batch file")
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a CIFAR-100 python batch file ({e})") from None


def _get(doc: Any, key: str, path: Path) -> Any:
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(doc).__name__}")
    for k in (key.encode(), key):
        if k in doc:
            return doc[k]
    raise DataError(f"{path}: no {key!r} entry (keys: {sorted(map(str, doc))[:6]})")


def cifar100_dir(root: str | Path) -> Path:
    """The folder holding train/test/meta under ``root`` (``$DATA``).

    Raises:
        DataError: not there (names ``prepare-data``).
    """
    base = Path(root).expanduser() / FOLDER
    for cand in (base, base / "cifar-100-python"):
        if all((cand / f).is_file() for f in FILES):
            return cand
    raise DataError(
        f"CIFAR-100 not found: expected {base}/{{train,test,meta}} (the cifar-100-python archive's files). "
        f"Run `ranksearch prepare-data cifar100 --root {root}`"
    )


def load_cifar100(root: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """(images {"train", "test"}: uint8 (N, 32, 32, 3), labels: int64 (N,), class names) from ``root``."""
    folder = cifar100_dir(root)
    names = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _get(safe_load_pickle(folder / "meta"), "fine_label_names", folder / "meta")
    ]
    images, labels = {}, {}
    for part in ("train", "test"):
        path = folder / part
        doc = safe_load_pickle(path)
        data = np.asarray(_get(doc, "data", path))
        y = np.asarray(_get(doc, "fine_labels", path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
            raise DataError(f"{path}: data {data.dtype} {data.shape} and {len(y)} labels are not CIFAR rows")
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DataError(f"{path}: labels outside 0..{len(names) - 1}")
        images[part] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3), RGB
        labels[part] = y
    return images, labels, [n.replace("_", " ") for n in names]


def build_cifar100_task(cfg: DataConfig, image_size: int) -> Task:
    """CIFAR-100 under the protocol of ``cfg`` (few-shot, base-to-new, or a continual step)."""
    from ranksearch.data.coop import data_root

    images, labels, classnames = load_cifar100(data_root(cfg))
    splits = DatasetSplits(
        name=TASK_NAME,
        image_dir=cifar100_dir(data_root(cfg)),
        classnames=classnames,
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
        classnames=classnames,
        templates=templates_for(TASK_NAME, cfg.template),
        train=array_split(train, images, labels, image_size, True, cfg.train_max_side),
        val=array_split(val, images, labels, image_size),
        test=array_split(test, images, labels, image_size),
        base_classes=base,
    )
