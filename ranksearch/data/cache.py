"""Decode images once, keep them on disk as uint8 tensors.

Every trial of a sweep loads the same few-shot train/val sets and the same test split, so decoding JPEGs per
trial would dominate a short trial. The first trial decodes (PIL, bicubic resize of the shorter side, centre
crop) and writes ``$RANKSEARCH_CACHE/data/<key>.pt``; later trials ``torch.load(weights_only=True)`` it.
Concurrent trials are safe: a file lock makes one trial decode while the others wait, and the file appears
by atomic rename, so a reader never sees half a tensor.
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
CACHE_VERSION = 1


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


def resize_center_crop(img: Any, size: int) -> np.ndarray:
    """PIL image -> uint8 array (3, size, size): shorter side to ``size`` (bicubic), then a centre crop.

    This is CLIP's test-time preprocessing minus normalisation, which the training loop applies on the fly.
    """
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read one image file into a uint8 (3, size, size) array.

    Raises:
        DataError: the file is missing or not a readable image (the message names the path).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if getattr(img, "format", None) == "JPEG":
                img.draft("RGB", (size, size))  # lets libjpeg decode at a reduced scale: much faster
            return resize_center_crop(img, size)
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def decode_images(paths: Sequence[Path], size: int, desc: str = "") -> torch.Tensor:
    """Decode many files into a uint8 (N, 3, size, size) tensor, using a few threads (PIL releases the GIL)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    if not paths:
        return out
    workers = max(1, min(8, os.cpu_count() or 1))
    log.info(
        "decoding %d images%s at %dpx (once; cached afterwards)",
        len(paths),
        f" for {desc}" if desc else "",
        size,
    )
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: decode_image(Path(p), size), paths)):
            out[i] = torch.from_numpy(arr)
    return out


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


def _try_load(path: Path) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and obj.get("version") == CACHE_VERSION:
            return obj["images"]
    except Exception as e:  # a corrupt or foreign file: rebuild rather than fail the trial
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
    return None


def cached_tensor(path: Path, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load the uint8 tensor cached at ``path``, or build it, save it and return it.

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
        images = build()
        _atomic_torch_save({"version": CACHE_VERSION, "images": images}, path)
        return images


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
