"""Zero-shot style evaluation: accuracy over a class subset, and the base-to-new protocol.

Under base-to-new (CoCoOp), base accuracy is measured on base-class images classified among base classes
only, new accuracy on new-class images among new classes only, and HM = 2·B·N / (B + N). On the validation
split "base" and "new" are the trained base classes and the pseudo-new ones (docs/data.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ranksearch.data.task import Split, Task
from ranksearch.data.transforms import normalize


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


@torch.no_grad()
def image_features(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int, autocast
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> unit-norm (N, D) features, computed in batches."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i : i + batch_size].to(device), model)
        with autocast():
            out.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(out) if out else torch.empty(0)


def _subset_logits(
    feats: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, classes: list[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cosine logits (n, |classes|) of the images whose label is in ``classes`` against those classes only, and
    each image's true class as an index into ``classes`` (n,); ``None`` when no image is of those classes.

    Args:
        feats: (N, D) image features; labels: (N,) global labels; text: (C, D) features of all classes.
    """
    cls = torch.as_tensor(classes, device=feats.device)
    labels = labels.to(feats.device)
    keep = torch.isin(labels, cls)
    if not keep.any():
        return None
    target = (labels[keep, None] == cls[None, :]).float().argmax(dim=-1)  # (n,)
    return feats[keep] @ text[cls].t(), target


def subset_accuracy(
    feats: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, classes: list[int]
) -> float:
    """Top-1 accuracy (%) of images whose label is in ``classes``, classified among ``classes`` only."""
    scored = _subset_logits(feats, labels, text, classes)
    if scored is None:
        return float("nan")
    logits, target = scored
    return 100.0 * (logits.argmax(dim=-1) == target).float().mean().item()


def subset_log_likelihood(
    feats: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, classes: list[int], logit_scale: float
) -> float:
    """Mean log-probability of the true class of images whose label is in ``classes``, among ``classes`` only
    (softmax of ``logit_scale`` x cosine, the training loss's logits). Unlike accuracy it moves with every image's
    margin, so on a small sample it ranks models with less noise (docs/oneshot.md, ``search.score``)."""
    scored = _subset_logits(feats, labels, text, classes)
    if scored is None:
        return float("nan")
    logits, target = scored
    return -F.cross_entropy(logit_scale * logits, target).item()


def evaluate_split(
    model: nn.Module,
    task: Task,
    split: Split,
    text: torch.Tensor,
    *,
    device,
    batch_size: int,
    autocast,
    split_name: str = "test",
    logit_scale: float | None = None,
) -> dict[str, float]:
    """Metrics of one split: ``base``, ``new``, ``hm`` under base-to-new, else ``acc``.

    ``split_name`` picks the class groups (``Task.scored_classes``): "val" scores trained base classes vs the
    pseudo-new ones, anything else real base vs real new. Without pseudo-new classes (``val_new_fraction`` 0)
    validation reports ``base`` only. With ``logit_scale``, ``loglik`` too: the mean over the same class groups
    of each group's mean log-probability of the true class (base and new weigh equally, as in the HM).
    """
    feats = image_features(model, split.images, device, batch_size, autocast)
    groups = task.scored_classes(split_name)
    if groups is None:
        groups = (list(range(len(task.classnames))), None)
    base_classes, new_classes = groups
    scored = [c for c in (base_classes, new_classes) if c]
    extra = {}
    if logit_scale is not None:
        lls = [subset_log_likelihood(feats, split.labels, text, c, logit_scale) for c in scored]
        extra["loglik"] = sum(lls) / len(lls)
    base = subset_accuracy(feats, split.labels, text, base_classes)
    if new_classes is None:
        return {"acc": base, **extra}
    if not new_classes:
        return {"base": base, **extra}
    new = subset_accuracy(feats, split.labels, text, new_classes)
    return {"base": base, "new": new, "hm": harmonic_mean(base, new), **extra}


# the metric each protocol summarises its extra test sets with (paper naming: average over targets)
PROTOCOL_SUMMARY = {"cross-dataset": "cross", "domain-shift": "dg"}


def protocol_summary(protocol: str, metrics: dict[str, float], extra_names: list[str]) -> dict[str, float]:
    """Average over the extra test sets for cross-dataset / domain-shift (``test/cross/avg``, ``test/dg/avg``).

    Each extra set contributes its ``hm`` when it is split base/new (same label space), else its ``acc``;
    the same summary is computed for zero-shot metrics (``zs/`` prefix) when present.
    """
    name = PROTOCOL_SUMMARY.get(protocol)
    if name is None or not extra_names:
        return {}
    out = {}
    for prefix in ("", "zs/"):
        values = []
        for extra in extra_names:
            key = f"{prefix}test/{extra}/hm"
            key = key if key in metrics else f"{prefix}test/{extra}/acc"
            if key in metrics:
                values.append(metrics[key])
        if values:
            out[f"{prefix}test/{name}/avg"] = sum(values) / len(values)
    return out
