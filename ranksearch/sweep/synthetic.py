"""A cheap, deterministic stand-in for ``run_trial``, to test sweep mechanics (scheduling, resume, tracking).

Same signature and callbacks as ``run_trial``; instead of training it sleeps ``seconds_per_eval`` per
evaluation and returns a smooth function of the config. It records when and where it ran (``synthetic.json``
in its output folder: start/end wall times, Ray node id, pid) so tests can check concurrency and placement.
Registered in code as runner ``synthetic`` (``ranksearch.sweep.runners.RUNNERS``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_score(config: Any) -> float:
    """A deterministic "validation HM" in (0, 100): best near lr 3e-3, rank 4, both towers; seed adds noise."""
    a = config.adapter
    rank = getattr(a, "r", None) or getattr(a, "init_r", None) or 4
    lr_term = math.exp(-((math.log10(config.train.lr) + 2.5) ** 2))
    rank_term = math.exp(-((math.log2(rank) - 2) ** 2) / 4)
    towers = {"both": 1.0, "vision": 0.8, "text": 0.6}[config.placement.towers]
    noise = ((config.seed * 2654435761) % 1000) / 1000 - 0.5
    return 40 + 30 * lr_term * towers + 20 * rank_term + noise


def synthetic_trial(
    config: Any,
    *,
    output_dir: Path,
    tracker: Any = None,
    on_eval: Any = None,
    resume: dict | None = None,
    progress: bool = False,
    seconds_per_eval: float = 0.2,
    fail_above_lr: float | None = None,
    inject: dict[str, dict[str, Any]] | None = None,
    peak_at: int | None = None,
) -> Any:
    """Pretend to train ``config``; see the module docstring.

    Failure modes, for reliability tests:

    * ``fail_above_lr``: raise (an errored trial) when ``train.lr`` is above it;
    * the budgets of the real loop are honoured with the same checks and messages: ``train.max_seconds``
      (wall time since this attempt started), ``train.max_memory_mb`` (``ranksearch.trial.check_memory``), and a
      non-finite loss, which the synthetic loss becomes in float32 as the real one does when
      ``train.logit_scale`` overflows (e.g. 1e39) -> ``TrialResult("failed", error=...)``;
    * ``peak_at``: the learning curve rises until that evaluation and falls after it (the best checkpoint is
      then not the latest);
    * ``inject``: per trial, keyed by ``str(adapter.r)``, config overrides (``{"train.max_seconds": 0.3}``) and/or
      ``{"diverge_at": step}`` (loss NaN from that step), ``{"raise": "message"}`` (an exception) or
      ``{"nan_objective": true}`` (trains to the end, but its validation metric is NaN).
    """
    from ranksearch.errors import TrialError
    from ranksearch.trial import EvalEvent, TrialResult, check_memory

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = int(resume["step"]) if resume else 0
    record: dict[str, Any] = {
        "start": time.time(),
        "pid": os.getpid(),
        "node_id": _node_id(),
        "resumed_from": start,
    }
    runs_file = output_dir / "synthetic.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    injected = dict((inject or {}).get(str(getattr(config.adapter, "r", "")), {}))
    diverge_at, message = injected.pop("diverge_at", None), injected.pop("raise", None)
    nan_objective = bool(injected.pop("nan_objective", False))
    if injected:
        config = _override(config, injected)
    if fail_above_lr is not None and config.train.lr > fail_above_lr:
        raise RuntimeError(f"synthetic failure: lr {config.train.lr} > {fail_above_lr}")
    if message:
        raise RuntimeError(f"synthetic failure: {message}")
    evals = config.eval.evals
    total = 10 * evals
    final = synthetic_score(config)
    trainable = float(getattr(config.adapter, "r", 1) * 1000)
    metric = "val/hm" if config.data.protocol == "base2new" else "val/acc"
    history = list(resume.get("history", [])) if resume else []
    scale = np.float32(config.train.logit_scale if config.train.logit_scale is not None else 1.0)
    started = time.perf_counter()
    try:
        for i in range(1, evals + 1):
            step = 10 * i
            if step <= start:
                continue
            time.sleep(seconds_per_eval)
            with np.errstate(over="ignore", invalid="ignore"):
                loss = float(
                    np.float32(1.0 / i) * scale * scale
                )  # logits overflow float32 like the real model
            if diverge_at is not None and step >= diverge_at:
                loss = float("nan")
            if not math.isfinite(loss):
                raise TrialError(f"diverged: non-finite loss ({loss}) at step {step}")
            value = final * (0.6 + 0.4 * i / evals)  # learning curve: rank order is kept across evaluations
            if peak_at is not None and i > peak_at:
                value = final * (0.6 + 0.4 * (2 * peak_at - i) / evals)
            value = float("nan") if nan_objective else value
            entry = {"step": float(step), metric: value, "trainable_params": trainable, "train/loss": 1.0 / i}
            history.append(entry)
            _progress(output_dir, record, step)
            if on_eval:
                on_eval(
                    EvalEvent(
                        step,
                        total,
                        dict(entry),
                        lambda step=step, h=list(history): {"step": step, "history": h},
                    )
                )
            limit = config.train.max_seconds
            if limit is not None and time.perf_counter() - started > limit:
                raise TrialError(f"over its time budget: train.max_seconds={limit} exceeded at step {step}")
            check_memory(config.train.max_memory_mb, "cpu", step)
    except TrialError as e:
        return TrialResult("failed", {}, history, output_dir, error=str(e))
    record["end"] = time.time()
    runs.append(record)
    runs_file.write_text(json.dumps(runs))
    metrics = {**history[-1], metric.replace("val/", "test/"): final - 1.0}
    (output_dir / "metrics.json").write_text(json.dumps({"final": metrics}))
    return TrialResult("completed", metrics, history, output_dir)


def _progress(output_dir: Path, record: dict[str, Any], step: int) -> None:
    """One line per evaluation in ``progress.jsonl`` (which attempt, where, which step), for tests that act
    while trials run (e.g. remove the node of a running trial) and check where a retry resumed from."""
    line = {"step": step, "time": time.time(), "pid": record["pid"], "node_id": record["node_id"]}
    line["resumed_from"] = record["resumed_from"]
    with open(output_dir / "progress.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _override(config: Any, values: dict[str, Any]) -> Any:
    """``config`` with dotted ``section.field`` values replaced (validated again)."""
    data = config.model_dump(mode="json")
    for key, value in values.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return type(config).model_validate(data)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None
