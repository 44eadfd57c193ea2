"""The one task interface every data source produces and the trial runner consumes.

A task is a fixed, fully materialised set of tensors: images are decoded and resized once (at the model's
input size) and kept as uint8, so no trial re-decodes an image every epoch. A training split also keeps the original
images, which the papers' random resized crop is taken from. Normalisation and augmentation happen on the fly in
the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Split:
    """A labelled image set.

    Attributes:
        images: uint8 tensor (N, 3, H, W) at the model's input resolution (CLIP's evaluation preprocessing).
        labels: int64 tensor (N,), indices into the owning task's ``classnames``.
        originals: for training splits, the N original images as uint8 (3, h_i, w_i) tensors, which the train-time
            random resized crop is taken from; ``None`` means ``images`` are the originals (e.g. the shape world,
            rendered at the model's size).
    """

    images: torch.Tensor
    labels: torch.Tensor
    originals: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images"
            )
        if self.originals is not None:
            if len(self.originals) != self.images.shape[0]:
                raise ValueError(f"{len(self.originals)} originals for {self.images.shape[0]} images")
            bad = [o for o in self.originals if o.dtype != torch.uint8 or o.ndim != 3 or o.shape[0] != 3]
            if bad:
                raise ValueError(
                    f"originals must be uint8 (3, h, w), got {bad[0].dtype} {tuple(bad[0].shape)}"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, classes: list[int] | torch.Tensor) -> Split:
        """The examples whose label is in ``classes`` (labels keep their global indices)."""
        keep = torch.isin(self.labels, torch.as_tensor(classes, dtype=torch.long))
        originals = None
        if self.originals is not None:
            originals = tuple(o for o, k in zip(self.originals, keep.tolist(), strict=True) if k)
        return Split(self.images[keep], self.labels[keep], originals)

    def stratified_sample(self, n: int, seed: int = 0) -> Split:
        """``n`` examples drawn without replacement, each class in proportion to its share (largest remainder;
        every class keeps at least one while ``n`` allows), in their original order; all of them if ``n`` >= N."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        classes, counts = torch.unique(self.labels, return_counts=True)
        quota = counts.double() * n / len(self)
        take = quota.floor().long()
        if n >= len(classes):
            take = take.clamp(min=1)
        spare = n - int(take.sum())
        if spare > 0:  # the largest remainders (ties: the smaller label) get one more each
            order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - quota[i].floor()).item(), i))
            for i in [i for i in order if take[i] < counts[i]][:spare]:
                take[i] += 1
        for _ in range(-spare):  # the at-least-one rule overshot: the largest share gives one back
            take[int(torch.argmax(take))] -= 1
        keep = []
        for c, k in zip(classes.tolist(), take.tolist(), strict=True):
            where = (self.labels == c).nonzero().flatten()
            keep.append(where[torch.randperm(len(where), generator=g)[:k]])
        index = torch.cat(keep).sort().values
        originals = None if self.originals is None else tuple(self.originals[i] for i in index.tolist())
        return Split(self.images[index], self.labels[index], originals)


@dataclass
class Task:
    """A downstream classification task.

    Attributes:
        name: short identifier, used in metric names and logs.
        classnames: human-readable class names, in label order.
        templates: prompt templates with one ``{}`` for the class name; text features are averaged over them.
        train: the (few-shot) training examples. Under base-to-new it holds ``train_classes`` only.
        val: the validation split used for model selection (never the test split). Under base-to-new it holds
            base classes only: no real new class ever takes part in selection.
        test: the split used for the final report.
        base_classes: label indices of the base classes; ``None`` means "all classes are base" (few-shot protocol).
        extra_tests: further evaluation sets (domain variants, other datasets) as name -> (classnames, split).
        val_new_classes: base classes held out of training and scored as "new" on the validation split
            (pseudo-new classes, the base-to-new validation rule of ``fewshot.base2new_validation``).
    """

    name: str
    classnames: list[str]
    templates: list[str]
    train: Split
    val: Split
    test: Split
    base_classes: list[int] | None = None
    extra_tests: dict[str, tuple[list[str], Split]] = field(default_factory=dict)
    val_new_classes: list[int] = field(default_factory=list)

    @property
    def new_classes(self) -> list[int]:
        """Label indices of the new classes (empty unless the task is split base-to-new)."""
        if self.base_classes is None:
            return []
        base = set(self.base_classes)
        return [c for c in range(len(self.classnames)) if c not in base]

    @property
    def train_classes(self) -> list[int]:
        """Classes the adapter is trained on: the base classes but the pseudo-new ones, or all classes."""
        if self.base_classes is None:
            return list(range(len(self.classnames)))
        held_out = set(self.val_new_classes)
        return [c for c in self.base_classes if c not in held_out]

    def scored_classes(self, split_name: str) -> tuple[list[int], list[int]] | None:
        """The (base, new) class groups a split is scored on; ``None`` under few-shot (one accuracy, all classes).

        Validation is scored on the pseudo split (trained base classes vs pseudo-new classes); the test split and
        the extra test sets on the real one (base vs new classes).
        """
        if self.base_classes is None:
            return None
        if split_name == "val":
            return self.train_classes, list(self.val_new_classes)
        return list(self.base_classes), self.new_classes
