"""Decode images once, keep them on disk as uint8 tensors.

Every trial of a sweep loads the same few-shot train/val sets and the same test split, so decoding JPEGs per
trial would dominate a short trial. The first trial decodes and writes ``$RANKSEARCH_CACHE/data/<key>.pt``; later
trials ``torch.load(weights_only=True)`` it. Concurrent trials are safe: a file lock makes one trial decode while
the others wait, and the file appears by atomic rename, so a reader never sees half a tensor.

Decoding is the reference pipeline's (``ranksearch.data.transforms``): ``Image.open(path).convert("RGB")`` as
Dassl's ``read_image``, then CLIP's evaluation resize + centre crop for the model-size images. Training splits also
keep each **original** image (``load_train_images_cached``), so the papers' random resized crop can be taken from
the full picture; that costs memory (about 3·h·w bytes per image, e.g. ~0.5 MB for a 500×375 photo), which
``data.train_max_side`` can cap at the price of exactness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranksearch.errors import DataError

log = logging.getLogger(__name__)

# Bump when the decoding recipe changes, so stale caches are not reused.
# 2: torchvision's exact resize + centre crop (no JPEG draft mode); training splits keep their originals.
CACHE_VERSION = 2


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The ranksearch cache directory: ``override``, else ``$RANKSEARCH_CACHE``, else ``~/.cache/ranksearch``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("RANKSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ranksearch"


def data_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where decoded tensors and few-shot split files live (``<cache_root>/data``)."""
    return cache_root(override) / "data"


def digest(*parts: Any) -> str:
    """A short, stable hex digest of JSON-serialisable parts (used in cache keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 (16 hex) of a file's bytes: split files are small, and their content is what matters."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _open_rgb(path: Path) -> Any:
    """Open an image file as RGB (PIL), with a ``DataError`` that names the path."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() loads the pixels, so the file can be closed
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read one image file into a uint8 (3, size, size) array: CLIP's evaluation resize + centre crop.

    Raises:
        DataError: the file is missing or not a readable image (the message names the path).
    """
    from ranksearch.data.transforms import eval_image

    return eval_image(_open_rgb(path), size).numpy()


def decode_train_image(path: Path, size: int, max_side: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """One training image: its model-size evaluation image (3, size, size) and its original (3, h, w)."""
    from ranksearch.data.transforms import cap_original, eval_image, from_pil

    img = _open_rgb(path)
    return eval_image(img, size).numpy(), from_pil(cap_original(img, max_side))


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_images(paths: Sequence[Path], size: int, desc: str = "") -> torch.Tensor:
    """Decode many files into a uint8 (N, 3, size, size) tensor, using a few threads (PIL releases the GIL)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    if not paths:
        return out
    log.info(
        "decoding %d images%s at %dpx (once; cached afterwards)",
        len(paths),
        f" for {desc}" if desc else "",
        size,
    )
    with ThreadPoolExecutor(_workers()) as pool:
        for i, arr in enumerate(pool.map(lambda p: decode_image(Path(p), size), paths)):
            out[i] = torch.from_numpy(arr)
    return out


def decode_train_images(
    paths: Sequence[Path], size: int, max_side: int | None = None, desc: str = ""
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Decode training files: (uint8 (N, 3, size, size) evaluation images, the N uint8 (3, h, w) originals)."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    originals: list[torch.Tensor] = []
    if paths:
        log.info(
            "decoding %d training images%s (originals kept; once, cached)",
            len(paths),
            f" for {desc}" if desc else "",
        )
    with ThreadPoolExecutor(_workers()) as pool:
        for i, (arr, orig) in enumerate(
            pool.map(lambda p: decode_train_image(Path(p), size, max_side), paths)
        ):
            images[i] = torch.from_numpy(arr)
            originals.append(orig)
    mib = sum(o.numel() for o in originals) / 2**20
    if mib > 1024:
        log.warning(
            "the %d training originals%s take %.1f GiB in memory; data.train_max_side caps them (not exact)",
            len(paths),
            f" of {desc}" if desc else "",
            mib / 1024,
        )
    return images, tuple(originals)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file by atomic rename (safe when several trials write the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _try_load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and obj.get("version") == CACHE_VERSION:
            return obj
    except Exception as e:  # a corrupt or foreign file: rebuild rather than fail the trial
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
    return None


def cached_entry(path: Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load the tensors cached at ``path``, or build them, save them and return them.

    A file lock next to ``path`` serialises builders, so N concurrent trials decode once, not N times.
    """
    from filelock import FileLock

    hit = _try_load(path)
    if hit is not None:
        return hit
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        hit = _try_load(path)  # another trial may have built it while we waited
        if hit is not None:
            return hit
        entry = {"version": CACHE_VERSION, **build()}
        _atomic_torch_save(entry, path)
        return entry


def cached_tensor(path: Path, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load the uint8 tensor cached at ``path``, or build it, save it and return it (see ``cached_entry``)."""
    return cached_entry(path, lambda: {"images": build()})["images"]


def load_images_cached(
    paths: Sequence[Path], size: int, *, key_parts: Sequence[Any], cache_dir: Path, name: str
) -> torch.Tensor:
    """Decode ``paths`` at ``size`` through the on-disk cache.

    Args:
        paths: image files, in the order of the returned rows.
        size: output side in pixels (the model's input size).
        key_parts: what identifies the set besides the paths (dataset, split-file hash, shots, seed, role).
        cache_dir: the data cache directory (``data_cache_dir()``).
        name: readable prefix of the cache file name (e.g. ``oxford_pets-train``).

    Returns:
        uint8 tensor (len(paths), 3, size, size).
    """
    key = digest(CACHE_VERSION, list(key_parts), size, [str(p) for p in paths])
    path = cache_dir / f"{name}-{size}px-{key}.pt"
    return cached_tensor(path, lambda: decode_images(paths, size, desc=name))


def load_train_images_cached(
    paths: Sequence[Path],
    size: int,
    *,
    key_parts: Sequence[Any],
    cache_dir: Path,
    name: str,
    max_side: int | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A training set through the on-disk cache: its model-size images and its originals.

    Args:
        paths: image files, in the order of the returned rows.
        size: the model's input size.
        key_parts: what identifies the set besides the paths (see ``load_images_cached``).
        cache_dir: the data cache directory.
        name: readable prefix of the cache file name.
        max_side: cap on the originals' shorter side (``data.train_max_side``); None keeps them whole.

    Returns:
        (uint8 (N, 3, size, size), N uint8 (3, h, w) originals).
    """
    from ranksearch.data.transforms import stack_originals, unstack_originals

    key = digest(CACHE_VERSION, list(key_parts), size, max_side, [str(p) for p in paths])
    path = cache_dir / f"{name}-{size}px-orig-{key}.pt"

    def build() -> dict[str, torch.Tensor]:
        images, originals = decode_train_images(paths, size, max_side, desc=name)
        shapes, flat = stack_originals(originals)
        return {"images": images, "original_shapes": shapes, "original_pixels": flat}

    entry = cached_entry(path, build)
    return entry["images"], unstack_originals(entry["original_shapes"], entry["original_pixels"])
