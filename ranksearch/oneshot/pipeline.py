"""``search: {mode: one-shot}`` run by ``ranksearch sweep``: supernet, evaluations and retrains as Ray work.

Phases (each skips what a previous, interrupted run of the same sweep folder finished, so ``--resume`` loses
nothing):

1. **supernet**: one Ray task trains the supernet (``run_supernet``) into ``supernet/``; its resumable state is
   saved at every evaluation (``supernet/checkpoint.pt``, loaded with ``weights_only=True``).
2. **evaluations**: ``concurrency`` Ray actors hold the trained supernet (``SupernetScorer``); Optuna (journal
   ``oneshot.journal``) proposes allocations in batches, each repaired into the budget and scored by one actor.
   The max and min allocations are scored first. Outputs in ``search/`` (``ranksearch.oneshot.outputs``).
3. **retrains**: the ``top_k`` front members (best estimate first) are trained from scratch as ordinary trials
   (``adapter.rank_pattern`` = the allocation) in Ray tasks, into ``trials/retrain-<n>/``.

MLflow: the sweep's parent run gets the children ``supernet``, ``evaluations`` (one metric point per evaluation,
step = evaluation number, and the ``search/`` files) and one per retrain (its estimate as ``oneshot/estimate``),
all written from the driver; the parent gets the summary (Kendall τ of estimate vs retrained, compute counts).
``oneshot.json`` in the sweep folder is the summary the CLI prints and ``ranksearch export --allocation`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranksearch.oneshot.allocation import PARAMS, AllocationSpace, Evaluation, search_allocations
from ranksearch.oneshot.outputs import front_members, write_outputs
from ranksearch.oneshot.spec import LIKELIHOOD

log = logging.getLogger(__name__)

SUPERNET, SEARCH, JOURNAL, SUMMARY = "supernet", "search", "oneshot.journal", "oneshot.json"
CHECKPOINT, SITES, RETRAIN_DONE = "checkpoint.pt", "sites.json", "retrain.json"


@dataclass
class OneShotResult:
    """What ``run_oneshot`` returns (also written as ``oneshot.json``)."""

    summary: dict[str, Any]
    evaluations: list[Evaluation]


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b of two equally long sequences (ties in either count as neither concordant nor discordant)."""
    n, conc, disc, tx, ty = len(x), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return float("nan") if denom == 0 else (conc - disc) / denom


# ----------------------------------------------------------------------------------------------- Ray work
def _supernet_task(config_data: dict, oneshot_json: str, out_dir: str) -> dict:
    """Ray task: train (or continue) the supernet; returns its final metrics and the sites with their costs."""
    import torch

    from ranksearch.config.load import validate_trial_config
    from ranksearch.oneshot.spec import OneShotSpec
    from ranksearch.oneshot.supernet import run_supernet

    out = Path(out_dir)
    config, oneshot = validate_trial_config(config_data), OneShotSpec.model_validate_json(oneshot_json)
    ckpt = out / CHECKPOINT
    resume = torch.load(ckpt, weights_only=True) if ckpt.is_file() else None

    t0 = time.perf_counter()
    result = run_supernet(config, oneshot, output_dir=out, on_eval=_save_state(ckpt), resume=resume)
    if result.status != "completed":
        raise RuntimeError(f"supernet failed: {result.error}")
    from ranksearch.oneshot.supernet import rebuild_supernet

    session = rebuild_supernet(out)
    sites = {"sites": session.site_keys(), "params_per_rank": session.params_per_rank()}
    (out / SITES).write_text(json.dumps(sites))
    return {"metrics": result.metrics, "seconds": time.perf_counter() - t0, **sites}


def _save_state(path: Path) -> Any:
    """An ``on_eval`` callback that writes the trial's resumable state to ``path`` atomically."""

    def save(event: Any) -> None:
        import torch

        tmp = path.with_suffix(".tmp")
        torch.save(event.state(), tmp)
        os.replace(tmp, path)  # atomic: a killed worker leaves the previous checkpoint

    return save


def _retrain_task(config_data: dict, out_dir: str) -> dict:
    """Ray task: one ordinary trial of an allocation (its ``adapter.rank_pattern``).

    Its resumable state is saved at every evaluation (``checkpoint.pt`` in its folder) and a retrain killed
    mid-way continues from there; when it ends, its result is written as ``retrain.json`` (the mark that it is
    finished: a resumed sweep reads it instead of training again) and the checkpoint is removed."""
    import torch

    from ranksearch.config.load import validate_trial_config
    from ranksearch.trial import run_trial

    out = Path(out_dir)
    ckpt = out / CHECKPOINT
    resume = torch.load(ckpt, weights_only=True) if ckpt.is_file() else None
    t0 = time.perf_counter()
    result = run_trial(validate_trial_config(config_data), output_dir=out, on_eval=_save_state(ckpt),
                       resume=resume, progress=False)  # fmt: skip
    doc = {"status": result.status, "metrics": result.metrics, "history": result.history,
           "error": result.error, "seconds": time.perf_counter() - t0,
           "resumed_from_step": int(resume["step"]) if resume is not None else None}  # fmt: skip
    tmp = out / (RETRAIN_DONE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / RETRAIN_DONE)
    ckpt.unlink(missing_ok=True)
    return doc


def _finished_retrain(out: Path) -> dict | None:
    """The result of a retrain that ended in an earlier run of the sweep (None: train or continue it).

    ``retrain.json`` marks it. A folder with a ``checkpoint.pt`` and no mark was cut mid-way (possibly while
    writing its artifacts, metrics.json first): it continues from the checkpoint. A folder from before the mark
    (no checkpoint) with metrics.json and the adapter counts as ended."""
    if (out / RETRAIN_DONE).is_file():
        return json.loads((out / RETRAIN_DONE).read_text())
    if (out / CHECKPOINT).is_file():
        return None
    if (out / "metrics.json").is_file() and (out / "adapter.safetensors").is_file():
        return {"status": "completed", **_metrics_file(out)}
    return None


class _Scorer:
    """Ray actor body: a ``SupernetScorer`` (``ray.remote`` is applied in ``run_oneshot``)."""

    def __init__(self, supernet_dir: str, images: int | None):
        from ranksearch.oneshot.scoring import SupernetScorer

        self.scorer = SupernetScorer(supernet_dir, images=images)

    def score(self, allocs: list[list[int]]) -> list[dict[str, float]]:
        return self.scorer.score(allocs)


# ------------------------------------------------------------------------------------------------- MLflow
class _Tracking:
    """Child runs of the sweep's parent, found by their ``ranksearch.trial_id`` tag (so a resume reuses them)."""

    def __init__(self, uri: str, parent: str, sweep: str):
        from mlflow.tracking import MlflowClient

        self.client, self.parent, self.sweep = MlflowClient(tracking_uri=uri), parent, sweep
        self.experiment = self.client.get_run(parent).info.experiment_id

    def child(self, trial_id: str, kind: str, params: dict | None = None) -> str:
        from mlflow.entities import Param

        from ranksearch.tracking.mlflow_log import param_values

        found = self.client.search_runs(
            [self.experiment],
            f"tags.`mlflow.parentRunId` = '{self.parent}' and tags.`ranksearch.trial_id` = '{trial_id}'",
        )
        if found:
            return found[0].info.run_id
        run = self.client.create_run(
            self.experiment, run_name=trial_id,
            tags={"mlflow.parentRunId": self.parent, "ranksearch.trial_id": trial_id, "ranksearch.kind": kind,
                  "ranksearch.sweep": self.sweep},
        )  # fmt: skip
        items = [Param(k, v) for k, v in param_values(params or {}).items()]
        self.client.log_batch(
            run.info.run_id, params=items
        )  # log_batch splits into MLflow's per-request limits
        return run.info.run_id

    def metrics(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in points if v is not None and math.isfinite(v)]
        self.client.log_batch(run_id, metrics=items)

    def finish(self, run_id: str, folder: Path | None = None, status: str = "FINISHED") -> None:
        if folder is not None:
            for p in sorted(Path(folder).iterdir()):
                if p.is_file() and p.suffix != ".pt":  # the resumable state stays in the sweep folder
                    self.client.log_artifact(run_id, str(p))
                elif p.is_dir():
                    self.client.log_artifacts(run_id, str(p), p.name)
        self.client.set_terminated(run_id, status=status)


def _flat(config: Any) -> dict:
    from ranksearch.tracking.mlflow_log import flatten

    return flatten(config.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------- the search
def run_oneshot(space: Any, folder: Path, manifest: Any, tracking_uri: str | None = None) -> OneShotResult:
    """Run (or continue) the one-shot search of ``space`` in the sweep folder ``folder`` (Ray already started).

    ``tracking_uri``: the MLflow store (default the manifest's; the sweep passes it unredacted)."""
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ranksearch.config.load import validate_trial_config
    from ranksearch.oneshot.supernet import supernet_config

    spec, o = space.spec, space.spec.search
    metric, mode = spec.objectives[0].metric, spec.objectives[0].mode  # what the retrains are judged by
    estimate = LIKELIHOOD if o.score == "likelihood" else metric  # what ranks the allocations on the supernet
    est_mode = "max" if o.score == "likelihood" else mode
    res = {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu}
    track = _Tracking(tracking_uri or manifest.tracking_uri, manifest.parent_run_id, manifest.name)
    config = supernet_config(space)
    sdir = folder / SUPERNET
    sdir.mkdir(parents=True, exist_ok=True)

    # 1. supernet -------------------------------------------------------------------------------------
    sid = track.child(SUPERNET, "supernet", _flat(config))
    done = sdir / SITES
    if done.is_file() and (sdir / "metrics.json").is_file():
        sup = {**json.loads(done.read_text()), **_metrics_file(sdir)}
        log.info("supernet: already trained (%s)", sdir)
    else:
        log.info("supernet: training %d steps x %d allocations per step", config.train.total_steps(config.data.shots),
                 2 + o.sandwich_random)  # fmt: skip
        task = ray.remote(**res)(_supernet_task)
        sup = ray.get(task.remote(config.model_dump(mode="json"), o.model_dump_json(), str(sdir)))
        history = json.loads((sdir / "metrics.json").read_text())["history"]
        track.metrics(sid, [(k, v, int(h["step"])) for h in history for k, v in h.items() if k != "step"])
        track.metrics(sid, [(k, v, int(sup["metrics"]["total_steps"])) for k, v in sup["metrics"].items()
                            if k.startswith(("test/", "supernet/"))])  # fmt: skip
        track.finish(sid, sdir)
    aspace = AllocationSpace(
        sup["sites"], o.ranks, sup["params_per_rank"],
        total_rank=o.budget.total_rank if o.budget else None, total_params=o.budget.total_params if o.budget else None,
        constraints=list(spec.constraints),
    )  # fmt: skip

    # 2. evaluations ------------------------------------------------------------------------------------
    eid = track.child("evaluations", "evaluations", {"sampler": o.sampler, "evaluations": o.evaluations,
                                                      "ranks": ",".join(map(str, o.ranks)), "seed": o.seed,
                                                      "score_images": o.score_images or "all",
                                                      "score": o.score})  # fmt: skip
    n_actors = max(1, min(spec.concurrency, o.evaluations))
    actor_cls = ray.remote(**res)(_Scorer)
    actors = [actor_cls.remote(str(sdir), o.score_images) for _ in range(n_actors)]

    def score(batch: list[list[int]]) -> list[dict[str, float]]:
        chunks = [batch[i::n_actors] for i in range(n_actors)]
        parts = ray.get([a.score.remote(c) for a, c in zip(actors, chunks, strict=True) if c])
        out: list[dict | None] = [None] * len(batch)
        for i, part in enumerate(parts):
            for j, m in enumerate(part):
                out[i + j * n_actors] = m
        return out  # type: ignore[return-value]

    def logged(e: Evaluation) -> None:
        points = [
            (k, e.metrics.get(k), e.number) for k in dict.fromkeys([estimate, metric, PARAMS, "eval_seconds"])
        ]
        track.metrics(eid, points)

    t0 = time.perf_counter()
    evals = search_allocations(
        aspace, score, evaluations=o.evaluations, metric=estimate, mode=est_mode, sampler=o.sampler, seed=o.seed,
        batch=n_actors, storage=JournalStorage(JournalFileBackend(str(folder / JOURNAL))),
        enqueue=[aspace.repair(aspace.maximum()), aspace.minimum()], on_result=logged,
    )  # fmt: skip
    search_seconds = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    write_outputs(folder / SEARCH, evals, aspace, estimate, est_mode)
    track.finish(eid, folder / SEARCH)

    # 3. retrains ----------------------------------------------------------------------------------------
    # the all-zero allocation is the frozen model (its "retrain" is the zero-shot score): nothing to train
    front = [e for e in front_members(evals, estimate, est_mode) if e.metrics[PARAMS] > 0]
    chosen = front[: o.top_k]
    base = config.model_dump(mode="json")
    jobs, retrained = {}, {}
    task = ray.remote(**res)(_retrain_task)

    def progress() -> dict:  # what status / report read, after every retrain that ends
        _write_trials(folder, chosen, retrained, estimate, space.fixed_family)
        summary = _summary(config, sup, evals, chosen, retrained, aspace, metric, estimate, search_seconds)
        tmp = folder / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, folder / SUMMARY)
        return summary

    for e in chosen:
        tid = f"retrain-{e.number}"
        out = folder / "trials" / tid
        data = json.loads(json.dumps(base))
        data["adapter"]["rank_pattern"] = aspace.as_dict(e.ranks)
        cfg = validate_trial_config(data)
        rid = track.child(tid, "retrain", {**_flat(cfg), "oneshot.allocation": e.number})
        run = track.client.get_run(rid)
        if "oneshot/estimate" not in run.data.metrics:
            track.metrics(rid, [("oneshot/estimate", e.metrics[estimate], 0)])
        done = _finished_retrain(out)
        if done is not None:  # ended in an earlier run of the sweep: never trained again
            retrained[tid] = done
            if run.info.status == "RUNNING":  # interrupted before its results reached MLflow: log them now
                _log_retrain(track, rid, done, out)
            continue
        if (out / CHECKPOINT).is_file():
            log.info("%s: continuing from its checkpoint", tid)
        jobs[task.remote(cfg.model_dump(mode="json"), str(out))] = (tid, rid, out)
    if jobs:
        progress()
    while jobs:  # as they end (not in submission order): each is logged and recorded at once
        ready, _ = ray.wait(list(jobs), num_returns=1)
        for ref in ready:
            tid, rid, out = jobs.pop(ref)
            retrained[tid] = r = ray.get(ref)
            _log_retrain(track, rid, r, out)
            progress()

    _write_trials(folder, chosen, retrained, estimate, space.fixed_family)
    summary = _summary(config, sup, evals, chosen, retrained, aspace, metric, estimate, search_seconds)
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2))
    track.metrics(manifest.parent_run_id, [(f"oneshot/{k}", v, 0) for k, v in summary["compute"].items()]
                  + [("oneshot/kendall_tau", summary["kendall_tau"], 0)])  # fmt: skip
    track.client.log_artifact(manifest.parent_run_id, str(folder / SUMMARY))
    return OneShotResult(summary, evals)


def _log_retrain(track: _Tracking, rid: str, r: dict, out: Path) -> None:
    """A finished retrain's history, final metrics and folder into its MLflow child, which is then ended."""
    history, final = r["history"], r["metrics"]
    end = int(final.get("total_steps", 0))
    track.metrics(rid, [(k, v, int(h["step"])) for h in history for k, v in h.items() if k != "step"])
    # the last validation report at the final step is already logged there: no second point of the same value
    last = history[-1] if history and int(history[-1]["step"]) == end else {}
    track.metrics(rid, [(k, v, end) for k, v in final.items()
                        if isinstance(v, int | float) and not (k in last and last[k] == v)])  # fmt: skip
    track.finish(rid, out, "FINISHED" if r["status"] == "completed" else "FAILED")


def _write_trials(folder: Path, chosen: list, retrained: dict, estimate: str, family: str) -> None:
    """``trials.parquet`` with the retrains as the sweep's trials (what ``status``, ``best`` and ``report`` read),
    each with its one-shot estimate (the ``estimate`` metric on the supernet) as ``oneshot/estimate``."""
    from ranksearch.sweep.results import write_parquet

    rows = []
    for e in chosen:
        r = retrained.get(f"retrain-{e.number}", {})
        numbers = {k: v for k, v in r.get("metrics", {}).items() if isinstance(v, int | float)}
        rows.append({"trial_id": f"retrain-{e.number}", "status": r.get("status", "pending"), "family": family,
                     "reports": len(r.get("history", [])), "oneshot/allocation": e.number, **numbers,
                     "oneshot/estimate": e.metrics[estimate]})  # fmt: skip
    write_parquet(rows, folder / "trials.parquet")


def _metrics_file(trial_dir: Path) -> dict:
    doc = json.loads((trial_dir / "metrics.json").read_text())
    return {"metrics": doc.get("final", {}), "history": doc.get("history", [])}


def _summary(config, sup, evals, chosen, retrained, aspace, metric, estimate, search_seconds) -> dict:
    """The one-shot table (estimate vs retrained per allocation), Kendall τ, and the compute it took.
    ``estimate`` ranked the allocations on the supernet, ``metric`` (the objective) judges the retrains."""
    test_metric = "test/" + metric.split("/", 1)[1] if metric.startswith("val/") else None
    rows = []
    for e in chosen:
        r = retrained.get(f"retrain-{e.number}", {})
        m = r.get("metrics", {})
        rows.append({
            "allocation": e.number, "trainable_params": int(e.metrics[PARAMS]), "estimate": e.metrics[estimate],
            "retrained": m.get(metric), "retrained_test": m.get(test_metric) if test_metric else None,
            "status": r.get("status", "missing"), "trial": f"trials/retrain-{e.number}",
            "ranks": aspace.as_dict(e.ranks),
        })  # fmt: skip
    pairs = [(r["estimate"], r["retrained"]) for r in rows if r["retrained"] is not None]
    tau = kendall_tau([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 2 else float("nan")
    steps = config.train.total_steps(config.data.shots)
    secs = [e.metrics.get("eval_seconds", float("nan")) for e in evals]
    return {
        "metric": metric, "estimate_metric": estimate, "rows": rows, "kendall_tau": tau, "front_size": sum(e.front for e in evals),
        "compute": {
            "supernet_steps": steps, "supernet_passes": sup["metrics"].get("supernet/passes", 0),
            "supernet_seconds": sup.get("seconds", float("nan")),
            "evaluations": len(evals), "distinct_evaluations": len({tuple(e.ranks) for e in evals}),
            "eval_seconds_mean": sum(secs) / max(1, len(secs)), "search_seconds": search_seconds,
            "retrain_steps": steps * len(chosen),
        },
    }  # fmt: skip
