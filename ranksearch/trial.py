"""Run one trial: build model and task, attach the adapter, train, evaluate, write artifacts, track.

This is the one code path for every way a trial runs: ``ranksearch trial`` (in-process, breakpoint-friendly)
and every trial of a sweep (inside a Ray worker). The sweep passes ``on_eval`` to report to Tune and
``resume`` to continue from a checkpoint; debug mode passes an ``MlflowTracker``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranksearch.config.schema import TrialConfig
from ranksearch.errors import TrialError
from ranksearch.training.loop import StepStats
from ranksearch.trial_record import (
    EvalEvent,
    Tracker,
    TrialResult,
    progress_bar,
    trial_params,
    write_artifacts,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def eval_steps(total: int, evals: int, schedule: str = "linear") -> list[int]:
    """Steps after which to evaluate, the last at ``total``.

    ``linear``: ``evals`` evenly spaced. ``geometric``: ``total · 2^(-(evals - i) / 2)`` for i = 1..evals (each
    point √2 × the previous, so 25 % and 50 % of the steps are evaluation points: what a successive-halving
    scheduler's rungs and an early/final correlation need). Duplicates (short runs) collapse.
    """
    if schedule == "geometric":
        points = (total * 2 ** (-(evals - i) / 2) for i in range(1, evals + 1))
    else:
        points = (total * i / evals for i in range(1, evals + 1))
    return sorted({min(total, max(1, round(p))) for p in points})


def run_trial(
    config: TrialConfig,
    *,
    output_dir: Path,
    tracker: Tracker | None = None,
    on_eval: Callable[[EvalEvent], None] | None = None,
    resume: dict | None = None,
    progress: bool = True,
) -> TrialResult:
    """Train and evaluate one configuration.

    Args:
        config: the validated trial config.
        output_dir: where artifacts go (config.yaml, metrics.json, allocation.parquet, adapter.safetensors, plots).
        tracker: receives params, metrics and artifacts (None: nothing is tracked, e.g. inside a sweep worker).
        on_eval: called after every validation evaluation (the sweep reports to Tune from here).
        resume: a state dict from ``EvalEvent.state()`` to continue from.
        progress: show a live progress bar.

    Returns:
        The result; ``status == "failed"`` when training diverged or ran over its time or memory budget.
        Any other exception propagates (after the tracker recorded the failure), e.g. ``ConfigError`` for a
        placement the model does not have.
    """
    output_dir = Path(output_dir)
    run = None
    try:
        if config.data.protocol == "continual":
            start_trial(config, output_dir, tracker)
            from ranksearch.continual_run import run_continual

            result = run_continual(
                config, output_dir=output_dir, tracker=tracker, on_eval=on_eval, progress=progress
            )
            _finish(tracker, output_dir, result.metrics, config.train.total_steps(config.data.shots))
            return result
        run = TrialRun(config, output_dir, tracker=tracker, on_eval=on_eval, resume=resume)
        with progress_bar(progress, run.total_steps, run.trainer.step, run.family.name) as bar:
            for stats in run.trainer.steps():
                bar(stats)
                run.after_step(stats)
        return run.finish()
    except TrialError as e:  # the configuration ran and failed (diverged, over budget): a result, not a crash
        return failed_result(tracker, e, run, output_dir)
    except BaseException as e:
        if tracker:
            _record_failure(tracker, e, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def start_trial(config: TrialConfig, output_dir: Path, tracker: Tracker | None) -> None:
    """What every trial does first: write its config, seed every generator, open its tracked run."""
    from ranksearch.config.load import dump_trial_config
    from ranksearch.tracking.mlflow_log import reproducibility_tags

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(dump_trial_config(config))
    seed_everything(config.seed)
    if tracker:
        tracker.start(
            trial_params(config),
            {**reproducibility_tags(config.seed), "family": config.adapter.family},
        )


def failed_result(
    tracker: Tracker | None, error: TrialError, run: TrialRun | None, output_dir: Path
) -> TrialResult:
    """The result of a trial that ran and failed (diverged, over its budget), recorded in its tracked run."""
    if tracker:
        _record_failure(tracker, error)
    return TrialResult("failed", {}, run.history if run else [], output_dir, error=str(error))


class TrialRun:
    """One single-task trial, step by step: set-up, what happens after every optimiser step, the end.

    ``run_trial`` drives it with the trial's own ``Trainer``; a pack (``ranksearch.training.packed``) drives
    several that share one frozen model, passing ``session`` (the member's view of the shared model), so both
    run the same evaluation, checkpoint, budget and artifact code.
    """

    def __init__(
        self,
        config: TrialConfig,
        output_dir: Path,
        *,
        tracker: Tracker | None = None,
        on_eval: Callable[[EvalEvent], None] | None = None,
        resume: dict | None = None,
        session: Any = None,
        task: Any = None,
    ):
        from ranksearch.data import build_task
        from ranksearch.session import TrialSession
        from ranksearch.tracking.allocation import allocation_rows

        self.config, self.output_dir, self.tracker, self.on_eval = config, Path(output_dir), tracker, on_eval
        self.history: list[dict] = []
        start_trial(config, self.output_dir, tracker)
        self.total_steps = total_steps = config.train.total_steps(config.data.shots)
        self.session = session if session is not None else TrialSession(config, total_steps)
        self.task = task if task is not None else build_task(config.data, self.session.image_size)
        self.trainer = self.session.trainer_for(self.task, total_steps)
        self.layers, self.family, self.model = self.session.layers, self.session.family, self.session.model
        self.static = {
            "trainable_params": float(self.session.trainable_params),
            "total_steps": float(total_steps),
        }
        self.final: dict[str, float] = dict(self.static)
        if resume is not None:
            self.trainer.load_state_dict(resume)
            self.history = list(resume.get("history", []))
            self.final.update(resume.get("zero_shot", {}))
            log.info("resumed at step %d of %d", self.trainer.step, total_steps)
        elif config.eval.zero_shot:
            # the pretrained model itself, not the model with a fresh adapter (not identity for every family)
            from ranksearch.adapters.inject import unadapted

            with unadapted(self.model):
                zs = {f"zs/{k}": v for k, v in {**self.evaluate("val"), **self.evaluate("test")}.items()}
            self.final.update(zs)
            if tracker:
                tracker.log_metrics({**zs, **self.static}, step=0)
        self.zero_shot = {k: v for k, v in self.final.items() if k.startswith("zs/")}
        self.alloc_rows = (
            allocation_rows(self.layers, self.trainer.step)
            if resume is None
            else list(resume.get("allocation", []))
        )
        self.checkpoints = set(eval_steps(total_steps, config.eval.evals, config.eval.schedule))
        self.started = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.trainer.step >= self.total_steps

    def evaluate(self, split_name: str) -> dict[str, float]:
        return self.session.evaluate(self.task, split_name)

    def snapshot(self) -> dict:
        """The resumable state now (``EvalEvent.state``): trainer, history, zero-shot metrics, allocation."""
        from ranksearch.adapters.io import adapter_state_dict

        state = self.trainer.state_dict(adapter_state_dict(self.model))
        state.update(history=list(self.history), zero_shot=self.zero_shot, allocation=list(self.alloc_rows))
        return state

    def after_step(self, stats: StepStats) -> None:
        """Logging, allocation telemetry, the scheduled evaluations (and ``on_eval``), time and memory budgets."""
        from ranksearch.tracking.allocation import allocation_rows

        config, tracker = self.config, self.tracker
        if stats.step % config.tracking.log_every == 0 and tracker:
            tracker.log_metrics({"train/loss": stats.loss, "train/lr": stats.lr}, stats.step)
        if stats.step % config.tracking.allocation_every == 0 or stats.step == self.total_steps:
            self.alloc_rows.extend(allocation_rows(self.layers, stats.step))
        if stats.step in self.checkpoints:
            val = self.evaluate("val")
            entry = {"step": float(stats.step), "train/loss": stats.loss, **val, **self.static}
            self.history.append(entry)
            if tracker:  # train/loss goes out with the periodic batch; no duplicate points
                tracker.log_metrics({k: v for k, v in entry.items() if k != "train/loss"}, stats.step)
            if self.on_eval:
                self.on_eval(EvalEvent(stats.step, self.total_steps, dict(entry), self.snapshot))
        limit = config.train.max_seconds
        if limit is not None and time.perf_counter() - self.started > limit:
            raise TrialError(f"over its time budget: train.max_seconds={limit} exceeded at step {stats.step}")
        check_memory(config.train.max_memory_mb, self.session.device, stats.step)

    def finish(self) -> TrialResult:
        """Test evaluation, protocol summary, artifacts, the tracked run's end: the completed result."""
        from ranksearch.training.evaluate import protocol_summary

        final = self.final
        final.update(self.history[-1] if self.history else {})
        final.update(self.evaluate("test"))
        final.update(protocol_summary(self.config.data.protocol, final, list(self.task.extra_tests)))
        write_artifacts(
            self.output_dir,
            self.model,
            self.config,
            final,
            self.history,
            self.alloc_rows,
            task_classes(self.task),
        )
        _finish(self.tracker, self.output_dir, final, self.total_steps)
        return TrialResult("completed", final, self.history, self.output_dir)


def check_memory(limit_mb: float | None, device: Any, step: int) -> None:
    """Raise ``TrialError`` when the trial uses more than ``train.max_memory_mb`` (see ``memory_mb``)."""
    if limit_mb is None:
        return
    from ranksearch.training.loop import memory_mb

    used = memory_mb(device)
    if used > limit_mb:
        raise TrialError(
            f"over its memory budget: train.max_memory_mb={limit_mb:g} exceeded at step {step} ({used:.0f} MiB)"
        )


def _finish(tracker: Tracker | None, output_dir: Path, final: dict[str, float], step: int) -> None:
    """Log the final test metrics and every artifact, and close the run."""
    if tracker is None:
        return
    tracker.log_metrics({k: v for k, v in final.items() if k.startswith(("test/", "cl/"))}, step=step)
    for path in sorted(output_dir.iterdir()):
        if path.is_file():
            tracker.log_artifact(path)
    tracker.end("FINISHED")


def _record_failure(tracker: Any, error: BaseException, status: str = "FAILED") -> None:
    if hasattr(tracker, "set_tags"):
        tracker.set_tags({"ranksearch.failure": f"{type(error).__name__}: {error}"})
    tracker.end(status)


def task_classes(task: Any) -> dict[str, list[int] | None]:
    """Which classes a trial trained on and scored as base / new / pseudo-new (recorded in metrics.json)."""
    return {
        "base": task.base_classes,
        "new": task.new_classes,
        "train": task.train_classes,
        "val_new": list(task.val_new_classes),
    }
