"""The few-shot and base-to-new protocols: from a dataset's full splits to a materialised ``Task``.

Rules (docs/data.md):

* Few-shot train: K images per class from the train split, seeded (CoOp's ``generate_fewshot_dataset``:
  group by label in order of appearance, ``random.sample(items, K)`` per class). A class with fewer than K
  images trains on all of them, repeated at random up to K (Dassl's ``repeat=True``), with a warning. With a
  dataset's own val split, validation is ``min(K, 4)`` per class sampled the same way from it, never repeated
  (CoOp); without one (ImageNet, Fashion-MNIST, an image folder with no val), K + V images per class are
  drawn from train at once and split into train and val, so they are disjoint (CLIP-LoRA's ImageNet rule).
* One ``random.Random(seed)`` stream over item lists in a fixed order (split files, sorted listings): the same
  seed gives the same files on every machine and in every trial.
* The sample is written once as a split file,
  ``<cache>/data/split_fewshot/rule-<N>/<dataset>-<hash>/shot_K-seed_S.json`` (like CoOp's
  ``split_fewshot/shot_K-seed_S.pkl``), and re-read by every later trial, so all trials of a sweep train on
  exactly the same images.
* Test: the full test split (optionally capped per class for speed).
* Base-to-new (CoCoOp's ``subsample_classes``): sort the labels, base = the first ceil(n/2), new = the rest,
  unless the dataset declares its own base classes. Few-shot sampling happens over all classes first (as in
  CoCoOp), then train and val keep base classes only; the test split keeps all classes.
* Base-to-new validation (``base2new_validation``, applied to every data source by ``build_task``): a seeded
  share of the base classes (``data.val_new_fraction``) is held out of training as pseudo-new classes, and
  validation scores trained base vs pseudo-new, so ``val/new`` and ``val/hm`` estimate new-class
  generalisation without any real new class.

No relabelling: CoCoOp relabels base and new classes from 0 because it builds a separate classifier per
subset. Here labels stay global indices into ``Task.classnames``; ``Task.base_classes`` names the base
indices and evaluation restricts logits and examples to base or new classes, which is equivalent.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ranksearch.data.cache import (
    atomic_write_text,
    data_cache_dir,
    load_images_cached,
    load_train_images_cached,
)
from ranksearch.data.task import Split, Task
from ranksearch.errors import DataError

if TYPE_CHECKING:
    from ranksearch.config.schema import DataConfig

log = logging.getLogger(__name__)

VAL_SHOTS_CAP = 4  # CLIP-LoRA / CoOp: validation uses min(K, 4) images per class
# Version of the sampling rule in the split-file path: a changed rule never reads a file the old one wrote
# (2: training shots repeat in classes with fewer than K images)
FEWSHOT_RULE = 2


@dataclass(frozen=True)
class Item:
    """One labelled image: ``path`` relative to the dataset's image directory, global ``label``."""

    path: str
    label: int


@dataclass
class DatasetSplits:
    """A dataset's full splits before the protocol is applied.

    Attributes:
        name: task name (``oxford_pets``, ``imagenet``, ...), used in cache keys and metric names.
        image_dir: directory the item paths are relative to.
        classnames: class names in label order, as written in prompts (underscores already replaced).
        train: the full train split.
        val: the dataset's own validation split, or ``None`` (then validation is drawn from train).
        test: the full test split.
        fingerprint: identifies the split definition (hash of the split file(s) or of the file listing).
        base_classes: base classes the dataset declares for base-to-new, else ``None`` (CoCoOp rule).
        imagenet_indices: for ImageNet variants, the ImageNet class index of each of this set's classes.
    """

    name: str
    image_dir: Path
    classnames: list[str]
    train: list[Item]
    val: list[Item] | None
    test: list[Item]
    fingerprint: str
    base_classes: list[int] | None = None
    imagenet_indices: list[int] | None = field(default=None)


def group_by_label(items: Iterable[Item]) -> dict[int, list[Item]]:
    """Items per label, labels in order of first appearance (as Dassl's ``split_dataset_by_label``)."""
    tracker: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        tracker[it.label].append(it)
    return dict(tracker)


def sample_per_class(items: Sequence[Item], k: int, rng: random.Random, repeat: bool = False) -> list[Item]:
    """CoOp's rule: ``k`` random items of every class, without repeats.

    A class with fewer than ``k`` items gives all of them, in random order, and with ``repeat`` (the training
    shots: Dassl's ``generate_fewshot_dataset(..., repeat=True)``) random repeats of them up to ``k``, so every
    class weighs the same in training.
    """
    out: list[Item] = []
    for group in group_by_label(items).values():
        if len(group) >= k:
            out.extend(rng.sample(group, k))
        else:
            out.extend(rng.sample(group, len(group)))
            if repeat:
                out.extend(rng.choices(group, k=k - len(group)))
    return out


def sample_train_val_from_train(
    items: Sequence[Item], k: int, k_val: int, rng: random.Random
) -> tuple[list[Item], list[Item]]:
    """CLIP-LoRA's ImageNet rule: draw ``k + k_val`` per class at once; the first ``k`` train, the rest val.

    A class with fewer than ``k + k_val`` images keeps ``k`` for training and the rest for validation; one
    with ``k`` or fewer trains on all of them, repeated up to ``k``, and has no validation image.
    """
    train: list[Item] = []
    val: list[Item] = []
    for group in group_by_label(items).values():
        picked = rng.sample(group, min(len(group), k + k_val))
        train.extend(picked[:k])
        val.extend(picked[k:])
        if len(picked) < k:
            train.extend(rng.choices(group, k=k - len(picked)))
    return train, val


def warn_short_classes(items: Sequence[Item], k: int, classnames: Sequence[str], dataset: str) -> list[int]:
    """Warn when classes have fewer than ``k`` training images (their shots repeat); returns those labels."""
    sizes = {label: len(group) for label, group in group_by_label(items).items()}
    short = sorted(label for label, n in sizes.items() if n < k)
    if short:
        names = ", ".join(
            f"{classnames[y] if 0 <= y < len(classnames) else y} ({sizes[y]})" for y in short[:5]
        )
        log.warning(
            "data.shots=%d: %d class(es) of %s have fewer training images: %s%s; their images repeat up to %d",
            k, len(short), dataset, names, ", ..." if len(short) > 5 else "", k,
        )  # fmt: skip
    return short


def cap_per_class(items: Sequence[Item], n: int | None, seed: int) -> list[Item]:
    """At most ``n`` items per class (seeded, original order kept); ``None`` keeps everything."""
    if n is None:
        return list(items)
    keep = {id(it) for it in sample_per_class(items, n, random.Random(f"cap-{seed}"))}
    return [it for it in items if id(it) in keep]


def cocoop_base_classes(labels: Iterable[int]) -> list[int]:
    """CoCoOp's base classes: the sorted distinct labels, first ceil(n/2) of them."""
    uniq = sorted(set(labels))
    return uniq[: math.ceil(len(uniq) / 2)]


def split_by_ratio(
    items_by_class: dict[int, list[Item]], seed: int, p_train: float = 0.5, p_val: float = 0.2
) -> tuple[list[Item], list[Item], list[Item]]:
    """CoOp's ``read_and_split_data`` rule: per class shuffle, 50 % train, 20 % val, the rest test.

    Used where no official split exists (an image folder without split sub-folders, splits regenerated by
    ``prepare-data``). Files are sorted before shuffling, so the result does not depend on directory order.
    """
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    test: list[Item] = []
    for label in sorted(items_by_class):
        group = sorted(items_by_class[label], key=lambda it: it.path)
        rng.shuffle(group)
        n_train, n_val = round(len(group) * p_train), round(len(group) * p_val)
        if n_train < 1 or n_val < 1 or len(group) - n_train - n_val < 1:
            raise DataError(
                f"class {label} has {len(group)} image(s): too few to split {p_train:.0%}/{p_val:.0%}/rest "
                "into non-empty train/val/test"
            )
        train += group[:n_train]
        val += group[n_train : n_train + n_val]
        test += group[n_train + n_val :]
    return train, val, test


def _items_to_json(items: Sequence[Item]) -> list[list[object]]:
    return [[it.path, it.label] for it in items]


def _items_from_json(rows: Sequence[Sequence[object]]) -> list[Item]:
    return [Item(str(p), int(y)) for p, y in rows]


def fewshot_split_path(splits: DatasetSplits, shots: int, seed: int, val_shots: int, cache_dir: Path) -> Path:
    """Where the few-shot split file of (dataset, split definition, K, seed) lives."""
    suffix = "" if val_shots == min(shots, VAL_SHOTS_CAP) else f"-val_{val_shots}"
    return (
        cache_dir
        / "split_fewshot"
        / f"rule-{FEWSHOT_RULE}"
        / f"{splits.name}-{splits.fingerprint}"
        / f"shot_{shots}-seed_{seed}{suffix}.json"
    )


def fewshot_sample(
    splits: DatasetSplits, shots: int, seed: int, val_shots: int | None = None, cache_dir: Path | None = None
) -> tuple[list[Item], list[Item]]:
    """The few-shot train and val items of a dataset, read from or written to its split file.

    Args:
        splits: the dataset's full splits.
        shots: K, training images per class.
        seed: the sample's seed (CoOp/CLIP-LoRA use seeds 1, 2, 3).
        val_shots: validation images per class; default ``min(K, 4)``.
        cache_dir: the data cache directory; ``None`` disables the split file (sample only).

    Returns:
        (train, val) item lists, over all classes.
    """
    val_k = val_shots if val_shots is not None else min(shots, VAL_SHOTS_CAP)
    warn_short_classes(splits.train, shots, splits.classnames, splits.name)
    path = fewshot_split_path(splits, shots, seed, val_k, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return _items_from_json(data["train"]), _items_from_json(data["val"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"corrupt few-shot split file {path}: {e}; delete it to resample") from e
    # One RNG seeded like CoOp's random.seed(seed): train is drawn first, then val, from the same stream.
    rng = random.Random(seed)
    if splits.val is not None:
        train = sample_per_class(splits.train, shots, rng, repeat=True)
        val = sample_per_class(splits.val, val_k, rng)  # CoOp: min(K, 4) per class, never repeated
    else:
        train, val = sample_train_val_from_train(splits.train, shots, val_k, rng)
    if path is not None:
        doc = {
            "dataset": splits.name,
            "fingerprint": splits.fingerprint,
            "shots": shots,
            "seed": seed,
            "val_shots": val_k,
            "image_dir": str(splits.image_dir),
            "train": _items_to_json(train),
            "val": _items_to_json(val),
        }
        atomic_write_text(path, json.dumps(doc))
    return train, val


def _to_split(
    splits: DatasetSplits,
    items: Sequence[Item],
    role: str,
    image_size: int,
    cache_dir: Path,
    key: Sequence[object],
    max_side: int | None = None,
) -> Split:
    paths = [splits.image_dir / it.path for it in items]
    labels = torch.tensor([it.label for it in items], dtype=torch.long)
    where = {"key_parts": [splits.name, splits.fingerprint, role, *key], "cache_dir": cache_dir}
    if role == "train":  # the train-time crop is taken from the original image (ranksearch.training.augment)
        images, originals = load_train_images_cached(
            paths, image_size, **where, name=f"{splits.name}-{role}", max_side=max_side
        )
        return Split(images, labels, originals)
    images = load_images_cached(paths, image_size, **where, name=f"{splits.name}-{role}")
    return Split(images, labels)


def resolve_base_classes(splits: DatasetSplits) -> list[int]:
    """The dataset's declared base classes, else CoCoOp's rule over all labels of the train split."""
    if splits.base_classes is not None:
        return sorted(splits.base_classes)
    return cocoop_base_classes(it.label for it in splits.train)


def pseudo_new_classes(base: Iterable[int], fraction: float, seed: int) -> list[int]:
    """The base classes held out of training as pseudo-new classes for validation (docs/data.md).

    ``round(fraction × |base|)`` of the sorted base classes, drawn with ``random.Random(f"pseudo-new-{seed}")``,
    so every trial of a sweep and every machine holds out the same classes. With four or more base classes
    at least two are held out and at least two stay trained (a one-class group would score a 1-way
    "classification", always 100 %); with two or three, one.

    Raises:
        DataError: fewer than two base classes (nothing could be held out and still trained).
    """
    pool = sorted(set(base))
    if fraction <= 0:
        return []
    if len(pool) < 2:
        raise DataError(
            f"data.val_new_fraction: {len(pool)} base class(es): base-to-new validation holds out some base "
            "classes as pseudo-new and trains on the rest, which needs at least 2 (or set data.val_new_fraction=0)"
        )
    floor = 2 if len(pool) >= 4 else 1
    k = min(max(int(fraction * len(pool) + 0.5), floor), len(pool) - floor)
    return sorted(random.Random(f"pseudo-new-{seed}").sample(pool, k))


def base2new_validation(task: Task, fraction: float, seed: int) -> Task:
    """Apply the base-to-new validation rule to a base-to-new task (docs/data.md, "Validation under base2new").

    Model selection must estimate new-class generalisation without seeing any new class. So a share of the
    *base* classes (``pseudo_new_classes``, or the ones the data source declares in ``Task.val_new_classes``)
    is held out of training; validation keeps base classes only and is scored as base = the trained base
    classes, new = the pseudo-new ones. The test split is untouched (real base vs real new classes).
    ``fraction == 0`` trains on every base class and validation reports base accuracy only.

    Raises:
        DataError: a declared pseudo-new class that is not a base class, or a validation split without any
            image of the trained or of the pseudo-new classes.
    """
    if task.base_classes is None:
        return task
    base = sorted(task.base_classes)
    held = [] if fraction <= 0 else sorted(task.val_new_classes or pseudo_new_classes(base, fraction, seed))
    stray = [c for c in held if c not in set(base)]
    if stray:
        raise DataError(f"{task.name}: pseudo-new classes {stray[:5]} are not base classes")
    task = replace(task, val_new_classes=held)
    task = replace(task, train=task.train.subset(task.train_classes), val=task.val.subset(base))
    val_labels = set(task.val.labels.tolist())
    for group, classes in (("trained base", task.train_classes), ("pseudo-new", held)):
        if classes and not val_labels & set(classes):
            raise DataError(
                f"{task.name}: the validation split has no image of the {group} classes, so val/base, val/new "
                "and val/hm cannot be measured; raise data.val_shots or check the dataset's val split"
            )
        if len(classes) == 1:
            log.warning(
                "%s: one %s class only: its validation accuracy is a 1-way classification (always 100%%)",
                task.name,
                group,
            )
    return task


def protocol_items(
    splits: DatasetSplits, cfg: DataConfig, cache_dir: Path | None
) -> tuple[list[Item], list[Item], list[Item], list[int] | None]:
    """Apply the protocol of ``cfg`` to item lists: few-shot sample, test cap, base/new restriction.

    Returns:
        (train, val, test, base_classes); ``base_classes`` is ``None`` under the few-shot protocol.
    """
    train, val = fewshot_sample(splits, cfg.shots, cfg.split_seed, cfg.val_shots, cache_dir)
    test = cap_per_class(splits.test, getattr(cfg, "max_test_per_class", None), cfg.split_seed)
    base: list[int] | None = None
    if cfg.protocol == "base2new":
        base = resolve_base_classes(splits)
        keep = set(base)
        train = [it for it in train if it.label in keep]
        val = [it for it in val if it.label in keep]  # model selection must never see new classes
    return train, val, test, base


def splits_to_task(
    splits: DatasetSplits,
    cfg: DataConfig,
    image_size: int,
    templates: list[str],
    extra_tests: dict[str, tuple[list[str], Split]] | None = None,
) -> Task:
    """Apply the protocol of ``cfg`` (see ``protocol_items``) and decode the images through the cache."""
    cache_dir = data_cache_dir(getattr(cfg, "cache_dir", None))
    train, val, test, base = protocol_items(splits, cfg, cache_dir)
    key = [cfg.shots, cfg.split_seed, cfg.protocol]
    cap = getattr(cfg, "max_test_per_class", None)
    return Task(
        name=splits.name,
        classnames=list(splits.classnames),
        templates=templates,
        train=_to_split(
            splits, train, "train", image_size, cache_dir, key, getattr(cfg, "train_max_side", None)
        ),
        val=_to_split(splits, val, "val", image_size, cache_dir, key),
        test=_to_split(splits, test, "test", image_size, cache_dir, [cap, cfg.split_seed if cap else None]),
        base_classes=base,
        extra_tests=dict(extra_tests or {}),
    )


def eval_split(
    splits: DatasetSplits, image_size: int, cache_dir: Path, per_class: int | None = None, seed: int = 1
) -> Split:
    """The (optionally capped) test split of a dataset as a ``Split``, for ``Task.extra_tests``."""
    items = cap_per_class(splits.test, per_class, seed)
    return _to_split(splits, items, "test", image_size, cache_dir, [per_class, seed if per_class else None])
