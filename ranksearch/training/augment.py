"""Batched, on-device image augmentation (normalisation lives in ``ranksearch.data.transforms``).

CLIP-LoRA uses RandomResizedCrop(scale=(0.08, 1)) + horizontal flip per image. Doing that per sample with
PIL would re-decode or loop in Python; here one affine grid per sample does crop + flip for the whole batch
in a single ``grid_sample`` call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop_flip(
    x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0), flip: bool = True
) -> torch.Tensor:
    """Per-sample random resized crop (area fraction in ``scale``, aspect in [3/4, 4/3]) and horizontal flip.

    Args:
        x: float (B, C, H, W).
        generator: CPU generator, so augmentation is reproducible from the trial seed on any device.
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = torch.exp(log_ratio)
    # crop width/height as fractions of the image side, clamped to fit
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)  # centre in [-1+w, 1-w] (grid coordinates span [-1, 1])
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    sx = torch.where((u[:, 4] < 0.5) & flip, -w, w)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
