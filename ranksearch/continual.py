"""Continual-learning helpers (docs/methods.md, CoDyRA): metrics over an accuracy matrix and the task boundary.

The accuracy matrix ``A[t, j]`` holds the accuracy on task j measured after training on task t (0-based,
T × T). With T tasks:

* Transfer = mean_j mean_{t<j} A[t, j]: zero-shot accuracy on tasks not learned yet (the strict upper
  triangle; task 0 has no earlier row and is left out).
* Average = mean_j mean_t A[t, j]: every entry.
* Last = mean_j A[T−1, j]: the row after the final task.

Two label spaces are scored (CoDyRA ``main.py::evaluation``):

* per task (MTIL, ZSCL's protocol): an image of task j is classified among task j's own classes;
* X-TAIL (task-agnostic): among the classes of every task of the sequence at once, as CoDyRA's code does (one joint
  text table built from every dataset's class names; a prediction counts only if it is the right class of the
  right task). ``joint_accuracy`` scores one task's images against that table.

``boundary(family)`` is CoDyRA's ``increment_task`` for any mergeable family: fold the current update (zeroed
components contribute nothing, so they are pruned) into the base weights for good and re-initialise fresh
adapters at their init rank. The task-sequence runner itself lives in the trial.
"""

from __future__ import annotations

import numpy as np
import torch

from ranksearch.adapters.base import AdapterFamily, AdapterLayer
from ranksearch.errors import AdapterError


def _matrix(acc) -> np.ndarray:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"accuracy matrix must be square T × T, got shape {a.shape}")
    return a


def transfer(acc) -> float:
    """mean_j mean_{t<j} A[t, j] over j = 1..T−1 (NaN for a single task)."""
    a = _matrix(acc)
    cols = [a[:j, j].mean() for j in range(1, a.shape[0])]
    return float(np.mean(cols)) if cols else float("nan")


def average(acc) -> float:
    """mean_j mean_t A[t, j]."""
    return float(_matrix(acc).mean(axis=0).mean())


def last(acc) -> float:
    """mean_j A[T−1, j]."""
    return float(_matrix(acc)[-1].mean())


def continual_metrics(acc) -> dict[str, float]:
    return {"transfer": transfer(acc), "average": average(acc), "last": last(acc)}


def joint_accuracy(feats: torch.Tensor, labels: torch.Tensor, joint_text: torch.Tensor, offset: int) -> float:
    """Top-1 accuracy (%) in the X-TAIL label space: images of one task among every task's classes.

    Args:
        feats: (N, D) unit-norm image features of the task's test images.
        labels: (N,) labels within the task's own classes.
        joint_text: (C_all, D) class text features of every task of the sequence, task after task.
        offset: index of the task's first class in ``joint_text`` (classes of the tasks before it).
    """
    if len(labels) == 0:
        return float("nan")
    pred = (feats @ joint_text.t()).argmax(dim=-1)  # (N,) over all classes
    return 100.0 * (pred.cpu() == labels.cpu() + offset).float().mean().item()


def _supports_reinit(layer: AdapterLayer) -> bool:
    return type(layer).reinitialize is not AdapterLayer.reinitialize


@torch.no_grad()
def boundary(family: AdapterFamily) -> dict[str, int]:
    """End a task: fold every layer's update into its base weights and re-initialise the adapters.

    Unlike ``AdapterLayer.merge`` this is permanent (nothing is kept to unmerge), as in CoDyRA's
    ``increment_task``; afterwards the layers hold fresh adapters at their init rank and the model computes the
    same function as before plus the fresh (identity-at-init for most families) update. Rebuild the optimizer.

    Returns:
        The effective rank each layer folded in, by site key.

    Raises:
        AdapterError: the family is not mergeable, a layer is merged, or a layer cannot re-initialise
            (checked before anything changes).
    """
    if not family.mergeable:
        raise AdapterError(f"family {family.name!r} is not mergeable; it has no continual task boundary")
    for layer in family.layers:
        if layer.merged:
            raise AdapterError(f"{layer.site.key} is merged; unmerge before a task boundary")
        if not _supports_reinit(layer):
            raise AdapterError(f"{type(layer).__name__} cannot re-initialise its adapter")
    deltas = []
    for layer in family.layers:
        dw, db = layer.delta_weight().detach(), layer.delta_bias()
        if not torch.isfinite(dw).all() or (db is not None and not torch.isfinite(db).all()):
            raise AdapterError(f"non-finite adapter update at {layer.site.key}; refusing to fold")
        deltas.append((dw.clone(), None if db is None else db.detach().clone()))
    folded = {}
    for layer, (dw, db) in zip(family.layers, deltas, strict=True):
        folded[layer.site.key] = layer.effective_rank()
        layer.fold_delta(dw, db)
        layer.reinitialize()
    family.start_task()
    return folded
