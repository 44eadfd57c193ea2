"""Turn a task's uint8 images into model input.

Tasks keep images as uint8 (N, 3, H, W) at the model's resolution (``ranksearch.data.task``). Every
consumer (pretraining, zero-shot evaluation, the adapter training loop) normalises the same way:
``x = (images / 255 - mean) / std`` with the mean/std of the model's ``visual.preprocess_cfg``
(open_clip's OpenAI constants unless the model config says otherwise).
"""

from __future__ import annotations

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
