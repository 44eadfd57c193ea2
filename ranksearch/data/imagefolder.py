"""A generic image-folder task: ``root/{train,val,test}/<class>/*.png`` or one ``root/<class>/*`` folder.

* With split folders: classes are the sorted sub-folders of ``train/``; ``val/`` and ``test/`` may hold a
  subset of them. Without ``val/`` validation is drawn from train (disjoint from the shots). ``test/`` is
  required in this mode.
* With class folders only: each class is split 50 % train / 20 % val / 30 % test by CoOp's
  ``read_and_split_data`` rule, seeded by ``data.split_seed``.
* A ``base_classes.txt`` (one class name a line) in ``root`` declares the base classes for base-to-new.
Class names are the folder names with "_" as spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ranksearch.data.cache import digest
from ranksearch.data.coop import _declared_base, _list_dirs, _list_images, clean_classname
from ranksearch.data.fewshot import DatasetSplits, Item, split_by_ratio, splits_to_task
from ranksearch.data.resources import templates_for
from ranksearch.data.task import Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

SPLIT_DIRS = ("train", "val", "test")


def _items(split_dir: Path, label_of: dict[str, int], prefix: str) -> list[Item]:
    items = []
    for folder in _list_dirs(split_dir):
        if folder not in label_of:
            raise DataError(
                f"{split_dir / folder}: class {folder!r} is not a class folder of the train split"
            )
        for fname in _list_images(split_dir / folder):
            items.append(Item(f"{prefix}{folder}/{fname}", label_of[folder]))
    return items


def load_imagefolder(root: Path, seed: int = 1, name: str = "imagefolder") -> DatasetSplits:
    """The splits of an image-folder dataset (see the module docstring for the two layouts).

    Raises:
        DataError: missing root, no class folders, a split layout without ``test/``, or too few images to split.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if (root / "train").is_dir():
        folders = _list_dirs(root / "train")
        if not folders:
            raise DataError(f"{root / 'train'}: no class folders")
        if not (root / "test").is_dir():
            raise DataError(f"{root / 'test'} not found: a train/ layout needs test/ (val/ is optional)")
        label_of = {f: i for i, f in enumerate(folders)}
        train = _items(root / "train", label_of, "train/")
        val = _items(root / "val", label_of, "val/") if (root / "val").is_dir() else None
        test = _items(root / "test", label_of, "test/")
        fingerprint = digest(
            "splitdirs", [it.path for it in train], [it.path for it in val or []], [it.path for it in test]
        )
    else:
        folders = _list_dirs(root)
        if not folders:
            raise DataError(f"{root}: expected train/val/test or one sub-folder per class")
        label_of = {f: i for i, f in enumerate(folders)}
        by_class = {
            label_of[f]: [Item(f"{f}/{n}", label_of[f]) for n in _list_images(root / f)] for f in folders
        }
        train, val_list, test = split_by_ratio(by_class, seed)
        val = val_list
        # The split depends on the seed, so the seed is part of the split's identity.
        fingerprint = digest("ratio", seed, [it.path for items in by_class.values() for it in items])
    classnames = [clean_classname(f) for f in folders]
    return DatasetSplits(
        name, root, classnames, train, val, test, fingerprint, _declared_base(root, classnames)
    )


def build_imagefolder_task(cfg: DataConfig, image_size: int) -> Task:
    """Materialise the ``imagefolder`` task at ``data.root`` under the protocol of ``cfg``."""
    if not cfg.root:
        raise DataError(
            "data.root: the imagefolder task needs data.root (the folder with train/ or class folders)"
        )
    splits = load_imagefolder(Path(cfg.root), cfg.split_seed)
    return splits_to_task(splits, cfg, image_size, templates_for("imagefolder", cfg.template))
