"""A cheap, deterministic stand-in for ``run_trial``, to test sweep mechanics (scheduling, resume, tracking).

Same signature and callbacks as ``run_trial``; instead of training it sleeps ``seconds_per_eval`` per
evaluation and returns a smooth function of the config. It records when and where it ran (``synthetic.json``
in its output folder: start/end wall times, Ray node id, pid) so tests can check concurrency and placement.
Registered in code as runner ``synthetic`` (``ranksearch.sweep.trainable.RUNNERS``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


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
) -> Any:
    """Pretend to train ``config``; see the module docstring. ``fail_above_lr`` raises (an errored trial)."""
    from ranksearch.trial import EvalEvent, TrialResult

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"start": time.time(), "pid": os.getpid(), "node_id": _node_id()}
    runs_file = output_dir / "synthetic.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    if fail_above_lr is not None and config.train.lr > fail_above_lr:
        raise RuntimeError(f"synthetic failure: lr {config.train.lr} > {fail_above_lr}")
    evals = config.eval.evals
    total = 10 * evals
    final = synthetic_score(config)
    trainable = float(getattr(config.adapter, "r", 1) * 1000)
    metric = "val/hm" if config.data.protocol == "base2new" else "val/acc"
    start = int(resume["step"]) if resume else 0
    history = list(resume.get("history", [])) if resume else []
    for i in range(1, evals + 1):
        step = 10 * i
        if step <= start:
            continue
        time.sleep(seconds_per_eval)
        value = final * (0.6 + 0.4 * i / evals)  # learning curve: rank order is kept across evaluations
        entry = {"step": float(step), metric: value, "trainable_params": trainable, "train/loss": 1.0 / i}
        history.append(entry)
        if on_eval:
            on_eval(
                EvalEvent(
                    step, total, dict(entry), lambda step=step, h=list(history): {"step": step, "history": h}
                )
            )
    record["end"] = time.time()
    runs.append(record)
    runs_file.write_text(json.dumps(runs))
    metrics = {**history[-1], metric.replace("val/", "test/"): final - 1.0}
    (output_dir / "metrics.json").write_text(json.dumps({"final": metrics}))
    return TrialResult("completed", metrics, history, output_dir)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None
