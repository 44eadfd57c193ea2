"""Train-time augmentation as the papers' code does it: torchvision's random resized crop of the original image
(bicubic) and a horizontal flip, per image, from a seeded generator (normalisation is ``ranksearch.data.transforms``).

* CLIP-LoRA (``main.py``): ``RandomResizedCrop(224, scale=(0.08, 1), BICUBIC)`` then ``RandomHorizontalFlip(0.5)``.
* CoDyRA: open_clip's train transform, ``RandomResizedCrop(224, scale=(0.9, 1), BICUBIC)`` and no flip.
* RLRR (VTAB): no crop (the evaluation resize), ``RandomHorizontalFlip`` on some tasks.

The crop box and the flip coin come from torchvision itself (``RandomResizedCrop.get_params``, ``torch.rand(1) <
p``), drawn in the same order as a ``Compose([crop, flip])`` applied image after image, but from the trial's own
generator instead of the global one, so a trial is reproducible and resumable from its seed. The resampling gives
the reference pipeline's pixels, bit for bit, in one of two ways:

* originals of different sizes (decoded photos): torchvision's PIL path (``resized_crop``, bicubic) per image, on a
  few threads for large images (PIL releases the GIL), after every random draw was made in order;
* originals of one size held in one tensor (the shape world, array datasets): PIL's bicubic resampling re-expressed
  as two batched matrix products (``pil_bicubic_resized_crop``) with PIL's own fixed-point coefficients and
  rounding, on the images' device: one call per batch instead of one PIL call per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

# PIL resampling of one small image costs ~20 µs; threads only pay off for larger originals.
_THREAD_MIN_PIXELS = 96 * 96


@dataclass(frozen=True)
class AugmentSpec:
    """What the train transform does: a random resized crop (``crop``) with ``scale``/``ratio``, then a flip."""

    crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    flip_p: float = 0.5


@dataclass(frozen=True)
class Draw:
    """The random choices for one image: crop box (top, left, height, width) in original pixels, or None; flip."""

    box: tuple[int, int, int, int] | None
    flip: bool


def draw_params(
    originals: Sequence[torch.Tensor], idx: Sequence[int], spec: AugmentSpec, generator: torch.Generator
) -> list[Draw]:
    """The crop boxes and flips for images ``idx``, image after image, drawn by torchvision from ``generator``.

    torchvision draws from the global generator; it is swapped for ``generator``'s state for the duration (and the
    advanced state written back), so the numbers are exactly those of the reference transform seeded the same way.
    """
    import torchvision.transforms as T

    draws = []
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        for i in idx:
            box = None
            if spec.crop:
                box = tuple(T.RandomResizedCrop.get_params(originals[i], list(spec.scale), list(spec.ratio)))
            flip = bool(torch.rand(1) < spec.flip_p) if spec.flip else False
            draws.append(Draw(box, flip))
        generator.set_state(torch.get_rng_state())
    return draws


# --- PIL's bicubic resampling as batched matrix products ----------------------------------------------------------
# Pillow (src/libImaging/Resample.c) resamples separably, one pass per axis into a uint8 image. Each output pixel is
# a weighted sum of at most 2·ceil(2·max(1, scale))+1 inputs, with the a = -0.5 cubic kernel stretched by the
# downscaling factor (antialiasing), normalised to sum 1 and then quantised to 22-bit fixed point; the sum starts at
# 2^21 and is shifted right by 22 bits and clipped to [0, 255]. Writing the weights of one pass as a dense (out, in)
# matrix of those integers, the pass is a matrix product that float64 computes exactly (|sums| < 2^31 < 2^53), so
# the result is PIL's, bit for bit. The pass order matters (the intermediate is rounded): Pillow >= 13 runs the
# vertical pass first when the height shrinks by more than twice as many pixels as the width, older Pillow always
# runs the horizontal one first. tests/test_preprocessing.py checks the result against the installed Pillow.
_PRECISION_BITS = 22


def _vertical_first_rule() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5) on float64 distances."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def pil_bicubic_weights(start: torch.Tensor, length: torch.Tensor, full: int, out: int) -> torch.Tensor:
    """Fixed-point resampling weights (B, out, full) of PIL's bicubic resize of a crop to ``out`` pixels.

    Row b maps the ``full`` pixels of an original line to the ``out`` pixels of the resized crop that starts at
    ``start[b]`` and spans ``length[b]`` pixels (the crop is cut first, as torchvision's ``resized_crop`` does).
    """
    dev = start.device
    length = length.to(torch.float64)
    scale = (length / out).view(-1, 1)  # (B, 1)
    filterscale = scale.clamp(min=1.0)
    support = 2.0 * filterscale
    centre = (torch.arange(out, dtype=torch.float64, device=dev) + 0.5) * scale  # (B, out)
    lo = torch.trunc(centre - support + 0.5).clamp(min=0)  # C's (int) cast, then PIL's clamp
    hi = torch.minimum(torch.trunc(centre + support + 0.5), length.view(-1, 1))
    taps = int(torch.ceil(support).max().item()) * 2 + 1
    pos = lo.unsqueeze(-1) + torch.arange(taps, dtype=torch.float64, device=dev)  # (B, out, taps) crop pixels
    valid = pos < hi.unsqueeze(-1)
    w = _cubic((pos - centre.unsqueeze(-1) + 0.5) * (1.0 / filterscale).unsqueeze(-1)) * valid
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    fixed = torch.trunc(
        w * (1 << _PRECISION_BITS) + torch.where(w < 0, -0.5, 0.5)
    )  # PIL's rounding of coeffs
    dense = torch.zeros(len(start), out, full + taps, dtype=torch.float64, device=dev)
    column = (pos + start.view(-1, 1, 1).to(torch.float64)).long().clamp(max=full + taps - 1)
    dense.scatter_add_(2, column, fixed * valid)  # invalid taps add 0 (their column is clamped into range)
    return dense[..., :full]


def _round_shift(acc: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: (sum + 2^21) >> 22, clipped to [0, 255] (exact on float64 integers)."""
    return acc.add_(1 << (_PRECISION_BITS - 1)).div_(1 << _PRECISION_BITS).floor_().clamp_(0, 255)


def _horizontal(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """float64 (B, C, H, W), weights (B, out, W) -> (B, C, H, out): one batched matrix product."""
    b, c, h, w = x.shape
    y = torch.bmm(x.reshape(b, c * h, w), weights.transpose(1, 2))  # (B, C*H, out)
    return _round_shift(y).view(b, c, h, -1)


def _vertical(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """float64 (B, C, H, W), weights (B, out, H) -> (B, C, out, W)."""
    b, c, h, w = x.shape
    y = torch.bmm(weights, x.permute(0, 2, 1, 3).reshape(b, h, c * w))  # (B, out, C*W)
    return _round_shift(y).view(b, -1, c, w).permute(0, 2, 1, 3)


def pil_bicubic_resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """PIL's bicubic ``resized_crop`` of one box per image, for a batch of same-size images, bit for bit.

    Args:
        images: uint8 (B, C, H, W) originals (any device).
        boxes: (B, 4) int (top, left, height, width) crop boxes inside the images.
        size: output side.

    Returns:
        uint8 (B, C, size, size), equal to ``torchvision.transforms.functional.resized_crop`` on PIL images.
    """
    h, w = images.shape[-2:]
    boxes = boxes.to(images.device)
    top, left, height, width = boxes.unbind(1)
    wx = pil_bicubic_weights(left, width, w, size)  # (B, size, W)
    wy = pil_bicubic_weights(top, height, h, size)  # (B, size, H)
    x = images.to(torch.float64)
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8, device=images.device)
    vertical_first = (height > size) & (height - size > 2 * (width - size)) & _vertical_first_rule()
    for first_v in (False, True):
        sel = (vertical_first == first_v).nonzero().view(-1)
        if len(sel) == 0:
            continue
        y = x[sel]  # (b, C, H, W)
        if first_v:
            y = _horizontal(_vertical(y, wy[sel]), wx[sel])  # via (b, C, size, W)
        else:
            y = _vertical(_horizontal(y, wx[sel]), wy[sel])  # via (b, C, H, size)
        out[sel] = y.to(torch.uint8)
    return out


def _resized_crop(original: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    from ranksearch.data.transforms import from_pil, to_pil

    top, left, h, w = box
    img = TF.resized_crop(to_pil(original), top, left, h, w, [size, size], TF.InterpolationMode.BICUBIC)
    return from_pil(img)


def augment_batch(
    originals: Sequence[torch.Tensor],
    idx: torch.Tensor | Sequence[int],
    size: int,
    generator: torch.Generator,
    spec: AugmentSpec,
    images: torch.Tensor | None = None,
    threads: bool = True,
) -> torch.Tensor:
    """Augmented uint8 (B, 3, size, size) images for training images ``idx``.

    Args:
        originals: per-image uint8 (3, h, w) originals (a (N, 3, H, W) tensor works too).
        idx: which images, in batch order.
        size: output side (the model's input size).
        generator: the trial's CPU augmentation generator (advanced in place).
        spec: crop and flip settings.
        images: the model-size evaluation images (N, 3, size, size); used when ``spec.crop`` is off.
        threads: resample large originals on a few threads (the random draws are made first, in order).
    """
    idx = [int(i) for i in idx]
    draws = draw_params(originals, idx, spec, generator)
    out = torch.empty((len(idx), 3, size, size), dtype=torch.uint8)
    if spec.crop and isinstance(originals, torch.Tensor):  # one size: batched, on the originals' device
        boxes = torch.tensor([d.box for d in draws], dtype=torch.long)
        batch = originals[torch.as_tensor(idx, dtype=torch.long)]
        out = pil_bicubic_resized_crop(batch, boxes, size).cpu()
    elif spec.crop:
        jobs = [(originals[i], d.box) for i, d in zip(idx, draws, strict=True)]
        big = (
            threads and len(jobs) > 1 and max(o.shape[1] * o.shape[2] for o, _ in jobs) >= _THREAD_MIN_PIXELS
        )
        crops = (
            _pool().map(lambda job: _resized_crop(*job, size), jobs)
            if big
            else (_resized_crop(o, box, size) for o, box in jobs)
        )
        for b, crop in enumerate(crops):
            out[b] = crop
    else:
        if images is None:
            raise ValueError("augment_batch without a crop needs the evaluation images")
        out.copy_(images[torch.as_tensor(idx, dtype=torch.long)])
    flips = [b for b, d in enumerate(draws) if d.flip]
    if flips:
        out[flips] = out[flips].flip(-1)  # horizontal flip of uint8 pixels: exactly PIL's FLIP_LEFT_RIGHT
    return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool of resampling threads: a few, never more than the cores this process may use."""
    global _POOL
    if _POOL is None:
        import os

        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        _POOL = ThreadPoolExecutor(max(1, min(8, cores)), thread_name_prefix="rs-augment")
    return _POOL
