"""The Tune trainable: one search-space point -> ``run_trial`` (once per seed replicate) -> ``tune.report``.

It runs the same ``run_trial`` as debug mode, with ``tracker=None`` (the driver logs to MLflow; the sqlite file
must never see concurrent writers). Every validation evaluation becomes one report with a checkpoint, so ASHA
can stop the trial and ``--resume`` continues it from its last evaluation.

Seed replicates (``seeds: [1, 2, 3]`` in the space) run one after another inside the trial. Report ``j`` is
evaluation ``i`` of replicate ``r`` (``j = r * evals + i``); its objective is the mean over the finished
replicates' final values and replicate ``r``'s current value, and ``<metric>_std`` their spread, so fidelity
grows with every report and ASHA compares like with like. The last report (``is_final``) carries the mean and
std of every final metric over all replicates, test metrics included.

Runners are looked up by name in ``RUNNERS`` (registered in code, never imported from YAML): ``trial`` is the
real ``run_trial``; ``synthetic`` is a cheap deterministic stand-in used to test sweep mechanics.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ranksearch.seeds import aggregate, sample_std
from ranksearch.space.space import SearchSpace
from ranksearch.sweep.folder import safe_name
from ranksearch.sweep.runners import RUNNERS

# Keys Tune adds to every result; the driver logs only what the trainable reported.
TUNE_KEYS = {
    "timestamp", "time_this_iter_s", "time_total_s", "pid", "training_iteration", "time_since_restore",
    "iterations_since_restore", "done", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint",
}  # fmt: skip

_CKPT_STATE, _CKPT_META, _CKPT_ARTIFACTS = "state.pt", "meta.json", "artifacts"


def sweep_trainable(
    params: dict[str, Any],
    *,
    space: SearchSpace,
    trials_dir: str,
    runner: str = "trial",
    runner_options: dict[str, Any] | None = None,
) -> None:
    """Tune function trainable. ``params``: the Optuna parameter values of this trial."""
    from ray import tune

    options = dict(runner_options or {})
    broker = options.pop("pack_broker", None)
    if broker is not None:  # packed trials: a pack host trains this configuration, we relay its reports
        from ranksearch.sweep.packed import relay

        run = relay(broker, runner)
    else:
        run = RUNNERS[runner]
    trial_id = tune.get_context().get_trial_id()
    seeds: list[int | None] = list(space.spec.seeds or [None])
    objectives = [o.metric for o in space.spec.objectives]
    root = Path(trials_dir) / safe_name(trial_id)

    meta: dict[str, Any] = {"replicate": 0, "done": [], "final": None}
    resume_state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta, resume_state = load_checkpoint(Path(d))
    if meta["final"] is not None:  # finished before the driver died: report the final result again
        _report(meta["final"], meta, None, root)
        return

    for r in range(meta["replicate"], len(seeds)):
        seed = seeds[r]
        config = space.trial_config(params, seed=seed)
        out = root / (f"seed-{seed}" if seed is not None and len(seeds) > 1 else "")
        last = r == len(seeds) - 1
        meta["replicate"] = r

        def on_eval(event: Any, r: int = r, last: bool = last) -> None:
            if last and event.step >= event.total_steps:
                return  # reported after the test evaluation, with the final metrics
            metrics = _combine(meta["done"], event.metrics, objectives)
            metrics.update(replicate=float(r), eval_step=float(event.step), is_final=False)
            _report(metrics, meta, event.state(), None)

        result = run(
            config, output_dir=out, tracker=None, on_eval=on_eval, resume=resume_state, progress=False,
            **options,
        )  # fmt: skip
        resume_state = None
        if result.status != "completed":
            final = {"is_final": True, "status": "failed", "error": str(result.error)[:2000]}
            # Tune rejects a result without the objectives and would end the whole sweep (strict metric
            # checking); NaN says "no value": the searcher, MLflow logging and best-trial selection skip it
            final.update({o: float("nan") for o in objectives})
            meta["final"] = final
            _report(final, meta, None, root)
            return
        meta["done"].append({k: float(v) for k, v in result.metrics.items() if _is_number(v)})

    final = _aggregate(meta["done"], objectives)
    final.update(_allocation_summary(root), is_final=True, status="completed", replicates=float(len(seeds)))
    reason = objective_problem(final, objectives)
    if reason:  # ran to the end but cannot be ranked: FAILED with the reason (Tune row, Optuna, MLflow)
        final.update({o: float("nan") for o in objectives if not _finite(final.get(o))})
        final.update(status="failed", error=reason)
    meta["final"] = final
    _report(final, meta, None, root)


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict | None]:
    """(meta, training state or None) of a trial checkpoint folder.

    The state loads with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Raises:
        TrialError: the checkpoint is missing a file, truncated or corrupt (the message names the file).
    """
    import torch

    from ranksearch.errors import TrialError

    meta_file, state_file = folder / _CKPT_META, folder / _CKPT_STATE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"replicate", "done", "final"} <= set(meta):
            raise ValueError("not a ranksearch checkpoint manifest")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TrialError(
            f"checkpoint {meta_file} is missing or corrupt ({e}); cannot resume this trial"
        ) from None
    state = None
    if state_file.exists():
        try:
            state = torch.load(state_file, weights_only=True)
        except Exception as e:  # truncated zip, bad pickle opcodes, a forbidden global: all "corrupt"
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise TrialError(
                f"checkpoint {state_file} is truncated or corrupt ({msg}); cannot resume this trial"
            ) from None
        if not isinstance(state, dict):
            raise TrialError(f"checkpoint {state_file} does not hold a training state")
    return meta, state


def _report(
    metrics: dict[str, Any], meta: dict[str, Any], state: dict | None, artifacts: Path | None
) -> None:
    """One ``tune.report`` with a checkpoint: the resumable state (during training) or the artifacts (final)."""
    import torch
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="rs-ckpt-") as d:
        (Path(d) / _CKPT_META).write_text(json.dumps(meta))
        if state is not None:
            torch.save(state, Path(d) / _CKPT_STATE)
        if artifacts is not None and artifacts.is_dir():
            # artifacts travel with the checkpoint into the sweep folder, so the driver can log them to MLflow
            # even when the trial ran on another node
            shutil.copytree(artifacts, Path(d) / _CKPT_ARTIFACTS)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def objective_problem(final: dict[str, Any], objectives: list[str]) -> str | None:
    """Why a finished trial's objectives cannot be ranked (missing or not finite), or None when they can."""
    bad = []
    for o in objectives:
        v = final.get(o)
        if v is None:
            bad.append(f"{o} was never reported")
        elif not _finite(v):
            bad.append(f"{o} is {v}")
    if not bad:
        return None
    return f"objective {'; '.join(bad)}: the trial finished without a value to rank it by"


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _combine(done: list[dict[str, float]], current: dict[str, Any], objectives: list[str]) -> dict[str, Any]:
    """Current metrics, with objectives and val metrics averaged over finished replicates + this one."""
    out = {k: float(v) for k, v in current.items() if _is_number(v)}
    if not done:
        return out
    for k in list(out):
        if k in objectives or k.startswith("val/"):
            values = [d[k] for d in done if k in d] + [out[k]]
            out[k] = sum(values) / len(values)
            if k in objectives:
                out[f"{k}_std"] = sample_std(values)
    return out


def _aggregate(done: list[dict[str, float]], objectives: list[str]) -> dict[str, Any]:
    """Mean of every final metric over replicates; ``<objective>_std`` for the objectives."""
    return aggregate(done, std_keys=objectives)


def _allocation_summary(root: Path) -> dict[str, float]:
    """Final rank allocation of the last replicate: total rank, adapted modules, active modules."""
    files = sorted(root.rglob("allocation.parquet"))
    if not files:
        return {}
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(files[-1], columns=["step", "rank", "max_rank"])
        last = table.filter(pc.equal(table["step"], pc.max(table["step"])))
        ranks = last["rank"].to_pylist()
        return {
            "alloc/total_rank": float(sum(ranks)),
            "alloc/modules": float(len(ranks)),
            "alloc/active_modules": float(sum(1 for r in ranks if r > 0)),
        }
    except Exception:  # a summary is a convenience; never fail a finished trial over it
        return {}
