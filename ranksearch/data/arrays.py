"""Datasets that live in memory as arrays (Fashion-MNIST, MNIST, CIFAR-100): item lists -> ``Split``.

Their items are named "<part>/<index>" ("train/17", "test/3"), so the shared few-shot sampler and split files
(``ranksearch.data.fewshot``) describe them like image files; each image then goes through the same PIL
preprocessing as a decoded file (``ranksearch.data.transforms.arrays_to_images``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ranksearch.data.fewshot import Item
from ranksearch.data.task import Split
from ranksearch.errors import DataError


def array_split(
    items: Sequence[Item],
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    size: int,
    keep_originals: bool = False,
    max_side: int | None = None,
) -> Split:
    """A ``Split`` of in-memory array images; item paths are "<part>/<index>" (e.g. "train/17").

    The arrays are (N, h, w) grey or (N, h, w, 3) RGB uint8; ``keep_originals`` keeps each original for the
    train-time crop (training splits).
    """
    from ranksearch.data.transforms import arrays_to_images

    parts = {it.path.partition("/")[0] for it in items}
    if len(parts) > 1:
        raise DataError(f"internal: a split mixes array parts {sorted(parts)}")
    part = parts.pop() if parts else next(iter(images))
    sel = np.asarray([int(it.path.partition("/")[2]) for it in items], dtype=np.int64)
    pixels, originals = arrays_to_images(images[part][sel], size, keep_originals, max_side)
    return Split(pixels, torch.from_numpy(labels[part][sel].copy()), originals)
