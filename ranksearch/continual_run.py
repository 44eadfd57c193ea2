"""Continual learning (CoDyRA's setting): one adapter trained on a sequence of tasks in turn.

After each task t the model is evaluated on every task j of the sequence, filling two accuracy matrices A[t, j]:
per task (MTIL: task j's images among task j's classes) and X-TAIL (among the classes of all tasks,
``ranksearch.continual.joint_accuracy``); for mergeable families the adapter is then folded into the base weights
and re-initialised (``ranksearch.continual.boundary``), so the architecture never grows. Reported as Transfer /
Average / Last of each (``cl/*`` and ``cl/xtail/*``, docs/methods.md). Each task is trained few-shot on all of its
classes; CoDyRA's symmetric loss counts the classes of the earlier tasks (``train.loss: symmetric``). Model
selection sees only validation splits: ``val/seen_acc`` is the mean validation accuracy over the tasks learned so
far, after each task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ranksearch.config.schema import TrialConfig

log = logging.getLogger(__name__)


def task_configs(config: TrialConfig) -> list:
    """One ``DataConfig`` per task of ``data.sequence`` (domains of the shape world, else task names)."""
    key = "domain" if config.data.task == "shapeworld" else "task"
    return [
        config.data.model_copy(update={key: name, "protocol": "fewshot", "sequence": []})
        for name in config.data.sequence
    ]


def run_continual(
    config: TrialConfig, *, output_dir: Path, tracker=None, on_eval=None, progress: bool = True
):
    """Train on each task of ``data.sequence`` in turn; returns a ``TrialResult`` with ``cl/*`` metrics.

    ``on_eval`` is called after each task with its validation accuracy (the sweep reports it to Tune);
    a continual trial restarts from its first task rather than resuming mid-sequence.
    """
    from ranksearch.continual import boundary, continual_metrics
    from ranksearch.data import build_task
    from ranksearch.session import TrialSession
    from ranksearch.tracking.allocation import allocation_rows
    from ranksearch.trial_record import EvalEvent, TrialResult, progress_bar, write_artifacts

    steps_per_task = config.train.total_steps(config.data.shots)
    session = TrialSession(config, steps_per_task)
    tasks = [build_task(cfg, session.image_size) for cfg in task_configs(config)]
    names = list(config.data.sequence)
    T = len(tasks)
    acc, xtail = np.zeros((T, T)), np.zeros((T, T))
    offsets = np.cumsum([0] + [len(task.classnames) for task in tasks]).tolist()  # first class of each task
    history, rows, folded = [], allocation_rows(session.layers, 0), []
    eval_kw = {"device": session.device, "batch_size": config.eval.batch_size, "autocast": session.autocast}
    static = {"trainable_params": float(session.trainable_params), "total_steps": float(steps_per_task * T)}
    for t, task in enumerate(tasks):
        trainer = session.trainer_for(task, steps_per_task, prior_classes=offsets[t])
        offset = t * steps_per_task
        with progress_bar(
            progress, steps_per_task, 0, f"{session.family.name} task {t + 1}/{T} ({names[t]})"
        ) as bar:
            for stats in trainer.steps():
                bar(stats)
                if tracker and stats.step % config.tracking.log_every == 0:
                    tracker.log_metrics({"train/loss": stats.loss, "train/lr": stats.lr}, offset + stats.step)
                if stats.step % config.tracking.allocation_every == 0 or stats.step == steps_per_task:
                    rows.extend(allocation_rows(session.layers, offset + stats.step))
        acc[t], xtail[t] = _score_all(session, tasks, offsets, eval_kw)
        val = session.evaluate(task, "val")["val/acc"]
        seen = [val] + [session.evaluate(tasks[j], "val")["val/acc"] for j in range(t)]
        entry = {"step": float(offset + steps_per_task), "task": float(t), "val/acc": val, **static}
        entry["val/seen_acc"] = float(np.mean(seen))
        entry.update({f"cl/acc/{names[j]}": float(acc[t, j]) for j in range(T)})
        entry.update({f"cl/xtail/acc/{names[j]}": float(xtail[t, j]) for j in range(T)})
        history.append(entry)
        if tracker:
            tracker.log_metrics(entry, offset + steps_per_task)
        if on_eval:
            on_eval(EvalEvent(offset + steps_per_task, steps_per_task * T, dict(entry), dict))
        if t < T - 1 and session.family.mergeable:
            folded.append(boundary(session.family))
        elif t < T - 1:
            log.warning("%s is not mergeable: its adapter keeps training across tasks", session.family.name)
    final = {**static, **{f"cl/{k}": v for k, v in continual_metrics(acc).items()}}
    final.update({f"cl/xtail/{k}": v for k, v in continual_metrics(xtail).items()})
    final["test/acc"] = float(acc[-1].mean())  # = Last: the usual top-line number of a continual run
    final["val/seen_acc"] = history[-1]["val/seen_acc"]
    (output_dir / "accuracy_matrix.json").write_text(
        json.dumps(
            {"tasks": names, "A": acc.tolist(), "A_xtail": xtail.tolist(), "folded_ranks": folded}, indent=2
        )
    )
    write_artifacts(output_dir, session.model, config, final, history, rows)
    return TrialResult("completed", final, history, output_dir)


def _score_all(session, tasks, offsets, eval_kw) -> tuple[list[float], list[float]]:
    """Test accuracy of every task in its own label space (MTIL) and in the joint one (X-TAIL), after one task.

    Image features are computed once per task and scored against both text tables.
    """
    import torch

    from ranksearch.continual import joint_accuracy
    from ranksearch.training.evaluate import image_features, subset_accuracy

    session.model.eval()
    texts = [session.text_features(task.classnames, task.templates) for task in tasks]  # each (C_j, D)
    joint = torch.cat(texts)  # (C_all, D), task after task
    own, agnostic = [], []
    for j, task in enumerate(tasks):
        feats = image_features(session.model, task.test.images, **eval_kw)  # (N_j, D)
        labels = task.test.labels.to(feats.device)
        own.append(subset_accuracy(feats, labels, texts[j], list(range(len(task.classnames)))))
        agnostic.append(joint_accuracy(feats, labels, joint, offsets[j]))
    return own, agnostic
