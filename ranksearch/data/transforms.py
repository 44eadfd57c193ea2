"""Turn images into model input: CLIP's evaluation preprocessing and normalisation.

Two image forms exist in a task (``ranksearch.data.task``):

* the **model-size** image, uint8 (3, S, S): CLIP's evaluation preprocessing of the original, exactly as open_clip's
  ``image_transform(S, is_train=False)`` and OpenAI CLIP's ``_transform`` do it (shorter side resized to S with
  bicubic resampling, then a centre crop), computed by torchvision's own PIL functions so the pixels are the same;
* the **original** image, uint8 (3, h, w), kept for training splits so the random resized crop of the papers can be
  taken from the full image (``ranksearch.training.augment``) rather than from the already centre-cropped one.

Every consumer (pretraining, zero-shot evaluation, the adapter training loop) then normalises the same way,
``x = (images / 255 - mean) / std`` with the mean/std of the model's ``visual.preprocess_cfg`` (open_clip's OpenAI
constants unless the model config says otherwise): torchvision's ``ToTensor`` + ``Normalize`` in one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

# open_clip's OPENAI_DATASET_MEAN / STD, the default of every open_clip model config.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a model's vision tower expects, from ``model.visual.preprocess_cfg`` if present."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))


def normalize(
    images: torch.Tensor, model: nn.Module | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float (N, 3, H, W) on the images' device.

    Args:
        images: uint8 images, e.g. ``Split.images`` or a batch of them.
        model: the open_clip model whose preprocessing mean/std to use; ``None`` uses the OpenAI constants.
        dtype: output dtype.
    """
    mean, std = mean_std(model) if model is not None else (OPENAI_MEAN, OPENAI_STD)
    m = torch.tensor(mean, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - m) / s


# --- PIL <-> uint8 tensors ------------------------------------------------------------------------------------------
def to_pil(image: torch.Tensor | np.ndarray) -> Any:
    """uint8 (3, h, w) tensor or array -> an RGB PIL image (a grey (h, w) array -> mode "L")."""
    from PIL import Image

    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr.transpose(1, 2, 0))  # (3, h, w) -> (h, w, 3)
    return Image.fromarray(arr)


def from_pil(img: Any) -> torch.Tensor:
    """A PIL image -> uint8 (3, h, w) tensor (converted to RGB first, as Dassl's ``read_image`` and open_clip do)."""
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


# --- CLIP's evaluation preprocessing --------------------------------------------------------------------------------
def eval_transform(img: Any, size: int) -> Any:
    """CLIP's test-time geometry on a PIL image: shorter side to ``size`` (bicubic), then a centre crop.

    These are torchvision's ``Resize(size, BICUBIC)`` and ``CenterCrop(size)`` (what open_clip's
    ``image_transform(size, is_train=False)`` composes), so the result is the reference pipeline's, pixel for pixel.
    """
    import torchvision.transforms.functional as TF

    img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC)
    return TF.center_crop(img, size)


def eval_image(img: Any, size: int) -> torch.Tensor:
    """A PIL image -> uint8 (3, size, size): ``eval_transform`` then RGB."""
    return from_pil(eval_transform(img, size))


def cap_original(img: Any, max_side: int | None) -> Any:
    """Reduce a PIL image so its shorter side is at most ``max_side`` (bicubic, antialiased); None keeps it as is.

    Only for memory: a crop taken from a reduced original is resampled twice, so it is no longer bit-identical to the
    reference pipeline's crop of the full image (``data.train_max_side``).
    """
    if max_side is None or min(img.size) <= max_side:
        return img
    import torchvision.transforms.functional as TF

    return TF.resize(img, max_side, interpolation=TF.InterpolationMode.BICUBIC)


def arrays_to_images(
    arrays: np.ndarray, size: int, keep_originals: bool = False, max_side: int | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """In-memory images (N, h, w) grey or (N, h, w, 3) RGB uint8 -> model-size images and, optionally, originals.

    Used by the array datasets (Fashion-MNIST, MNIST, CIFAR-100): each image goes through the same PIL path as a
    decoded file, so every data source is preprocessed identically.

    Returns:
        (uint8 (N, 3, size, size), a tuple of uint8 (3, h, w) originals or None).
    """
    from PIL import Image

    n = len(arrays)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    originals: list[torch.Tensor] = []
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(arrays[i]))
        images[i] = eval_image(img, size)
        if keep_originals:
            originals.append(from_pil(cap_original(img, max_side)))
    return images, tuple(originals) if keep_originals else None


def stack_originals(originals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ragged uint8 (3, h, w) images into (shapes (N, 2) int64, one flat uint8 buffer) for ``torch.save``."""
    shapes = torch.tensor([[o.shape[1], o.shape[2]] for o in originals], dtype=torch.long).view(-1, 2)
    flat = torch.cat([o.reshape(-1) for o in originals]) if originals else torch.empty(0, dtype=torch.uint8)
    return shapes, flat


def unstack_originals(shapes: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inverse of ``stack_originals``: views into ``flat``, no copy."""
    sizes = (3 * shapes[:, 0] * shapes[:, 1]).tolist()
    parts = torch.split(flat, sizes) if sizes else ()
    return tuple(p.view(3, int(h), int(w)) for p, (h, w) in zip(parts, shapes.tolist(), strict=True))
