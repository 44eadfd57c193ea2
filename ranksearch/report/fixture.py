"""A synthetic sweep folder in the format ``ranksearch sweep`` writes, for tests, demos and benchmarks.

Every file goes through the sweep code's own writers so the format cannot drift: ``Manifest.save``
(sweep.json), ``sweep.results.write_parquet`` (trials.parquet, rows shaped as ``trial_rows`` makes them),
``tracking.allocation.allocation_table`` (allocation.parquet), ``dump_trial_config`` (config.yaml), an Optuna
``JournalStorage`` (optuna.journal) and, optionally, ``sweep.mlflow_sweep.create_parent_run`` (mlflow.db).
Per-trial ``metrics.json`` follows ``ranksearch.trial_record.write_artifacts``: ``{"final": ..., "history": [...]}``;
``tune/<trial>/result.json`` holds every report of every trial (pruned ones too) with Tune's timing keys, as a
real sweep's Tune folder does.
Values are made up but shaped like a real sweep: base/new/HM learning curves, ASHA-pruned trials with short
histories, a few failed and errored trials, and rank allocations that favour the upper vision layers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SPACE_YAML = """\
# A synthetic two-family space (ranksearch.report.fixture); the same format as search_spaces/all.yaml.
name: {name}
base:
  model: {{name: rs-tiny-clip, pretrained: null}}
  data: {{task: shapeworld, protocol: base2new, shots: 4, test_per_class: 4}}
  train: {{iterations: 40, batch_size: 16}}
  eval: {{evals: {evals}, zero_shot: false}}
  tracking: {{enabled: false}}
params:
  adapter.family: {{type: categorical, choices: [lora, adalora], default: lora}}
  train.lr: {{type: float, low: 1.0e-4, high: 2.0e-2, log: true, default: 3.0e-3}}
  placement.towers: {{type: categorical, choices: [vision, text, both], default: both}}
families:
  lora:
    params:
      adapter.r: {{type: categorical, choices: [1, 2, 4, 8], default: 2}}
      placement.matrices: {{type: categorical, choices: [[q, v], [q, k, v]], default: [q, k, v]}}
  adalora:
    params:
      adapter.target_r: {{type: categorical, choices: [1, 2, 4], default: 2}}
objective:
{objective}
trials: {trials}
concurrency: 2
"""

_DEPTH = {"vision": 3, "text": 2}  # rs-tiny-clip's blocks per tower


def write_fake_sweep(
    folder: Path,
    n_trials: int = 40,
    *,
    seed: int = 0,
    evals: int = 4,
    journal: bool = True,
    mlflow: bool = False,
    status: str = "finished",
    started: float | None = None,
    objectives: int = 2,
) -> Path:
    """Write a finished (or ``status``) synthetic sweep of ``n_trials`` trials into ``folder``; returns it.

    Args:
        folder: the sweep folder (created; its name is the sweep name).
        n_trials: trials in trials.parquet.
        seed: numpy seed of the made-up values.
        evals: validation evaluations (reports) of a completed trial.
        journal: write optuna.journal with one Optuna trial per finished trial.
        mlflow: create the parent run and one child run per trial (tagged as the sweep tags them) in
            ``sqlite:///<folder>/mlflow.db`` (slow: first use migrates tables).
        status: the manifest's status (``running`` for a sweep still in progress).
        started: the manifest's start time (default: now).
        objectives: 2 (val/hm max, trainable_params min) or 1 (val/hm max only).
    """
    import time

    import pyarrow.parquet as pq

    from ranksearch.config import dump_trial_config
    from ranksearch.space import load_space
    from ranksearch.sweep.folder import Manifest, default_tracking_uri
    from ranksearch.sweep.results import write_parquet
    from ranksearch.tracking.allocation import allocation_table

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    name = folder.name
    objective = ["  - {metric: val/hm, mode: max}", "  - {metric: trainable_params, mode: min}"][:objectives]
    text = SPACE_YAML.format(name=name, evals=evals, trials=n_trials, objective="\n".join(objective))
    (folder / "space.yaml").write_text(text)
    space = load_space(folder / "space.yaml")
    rng = np.random.default_rng(seed)
    rows, finished = [], []
    t_start = started if started is not None else time.time() - 60.0 * n_trials
    slots = [t_start, t_start]  # concurrency 2: each trial starts when a slot frees up
    clock = np.random.default_rng(seed + 1000)  # own stream: timings never change the made-up metrics
    for i in range(n_trials):
        trial_id = f"{seed:02x}{i:06x}"
        params = _sample(space, rng)
        history, final, status_i = _curves(params, rng, evals)
        slot = int(np.argmin(slots))
        slots[slot] = _write_tune_results(
            folder / "tune" / trial_id, trial_id, params, history, final, slots[slot], clock
        )
        row: dict[str, Any] = {
            "trial_id": trial_id, "status": status_i, "family": params["adapter.family"],
            "reports": len(history),
        }  # fmt: skip
        row.update({f"param:{k}": v for k, v in params.items()})
        if status_i in ("completed", "pruned"):
            row.update(final if status_i == "completed" else history[-1])
        if status_i == "failed":
            row["error"] = "diverged: loss is nan at step 20"
        rows.append(row)
        if status_i == "completed":
            out = folder / "trials" / trial_id
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({"final": final, "history": history}))
            config = space.trial_config(params)
            (out / "config.yaml").write_text(dump_trial_config(config))
            pq.write_table(allocation_table(_allocation(params, rng, evals)), out / "allocation.parquet")
        if status_i in ("completed", "pruned", "failed"):
            finished.append((params, status_i, final))
    write_parquet(rows, folder / "trials.parquet")
    if journal:
        _write_journal(folder / "optuna.journal", space, finished)
    uri = default_tracking_uri(folder)
    parent = None
    if mlflow:
        from ranksearch.sweep.mlflow_sweep import create_parent_run

        parent = create_parent_run(
            uri, name, name, {"sweep": name, "trials": n_trials}, (folder / "mlartifacts").as_uri()
        )
        _child_runs(uri, parent, name, rows)
    manifest = Manifest(name, str(folder / "space.yaml"), uri, name, parent, status=status)
    manifest.started = t_start
    manifest.ended = None if status == "running" else max(slots)  # the last trial's end
    manifest.save(folder)
    return folder


def _child_runs(uri: str, parent: str, sweep: str, rows: list[dict[str, Any]]) -> None:
    """One child run per trial, tagged as ``sweep.mlflow_sweep`` tags them, with its last metrics, ended as the
    sweep ends it (pruned: KILLED)."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from ranksearch.sweep.mlflow_sweep import SWEEP_TAG, TRIAL_TAG

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(parent).info.experiment_id
    for row in rows:
        tags = {"mlflow.parentRunId": parent, TRIAL_TAG: row["trial_id"], SWEEP_TAG: sweep,
                "ranksearch.status": row["status"], "family": row["family"]}  # fmt: skip
        run = client.create_run(experiment, run_name=f"{row['trial_id']}-{row['family']}", tags=tags)
        ts = int(1000 * time.time())
        metrics = [Metric(k, float(v), ts, int(row["reports"])) for k, v in row.items()
                   if k.startswith(("val/", "test/")) and isinstance(v, float) and math.isfinite(v)]  # fmt: skip
        if metrics:
            client.log_batch(run.info.run_id, metrics=metrics)
        status = {"completed": "FINISHED", "pruned": "KILLED"}.get(row["status"], "FAILED")
        client.set_terminated(run.info.run_id, status=status)


def _write_tune_results(
    folder: Path, trial_id: str, params: dict[str, Any], history: list[dict], final: dict[str, float],
    start: float, rng: np.random.Generator,
) -> float:  # fmt: skip
    """Tune's ``result.json`` of one trial (one line per report, the last one final); returns its end time."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, elapsed = [], 0.0
    for i, entry in enumerate(history, 1):
        elapsed += float(rng.uniform(15, 30))
        rec = dict(final) if final and i == len(history) else dict(entry)
        rec.update(training_iteration=i, time_total_s=elapsed, timestamp=int(start + elapsed), trial_id=trial_id,
                   config=params, is_final=bool(final) and i == len(history))  # fmt: skip
        lines.append(json.dumps(rec))
    (folder / "result.json").write_text("\n".join(lines) + ("\n" if lines else ""))
    return start + elapsed


def _sample(space: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Optuna-style parameter values (categorical lists encoded as "q,k,v", as Tune's config holds them)."""
    family = str(rng.choice(["lora", "lora", "adalora"]))
    params: dict[str, Any] = {"adapter.family": family}
    for a in space.active_params(family):
        if a.path == "train.lr":
            params[a.name] = float(10 ** rng.uniform(-4, math.log10(2e-2)))
        else:
            choices = a.spec.encoded()
            params[a.name] = choices[int(rng.integers(len(choices)))]
    return params


def _rank_of(params: dict[str, Any]) -> int:
    return int(params.get("lora:adapter.r") or params.get("adalora:adapter.target_r") or 2)


def _curves(
    params: dict[str, Any], rng: np.random.Generator, evals: int
) -> tuple[list[dict], dict[str, float], str]:
    """(history, final metrics, status): base/new accuracy rising to a plateau set by lr, rank and towers."""
    lr, rank = params["train.lr"], _rank_of(params)
    towers = {"both": 1.0, "vision": 0.85, "text": 0.7}[params["placement.towers"]]
    quality = math.exp(-((math.log10(lr) + 2.5) ** 2)) * towers
    base_end = min(
        97.0, 60 + 25 * quality + 3 * math.log2(rank) + rng.normal(0, 2)
    )  # accuracies stay < 100 %
    new_end = min(97.0, 55 + 20 * quality - 2 * math.log2(rank) + rng.normal(0, 2))
    trainable = float(rank * 768 * (3 if params["placement.towers"] == "both" else 1.5))
    u = rng.uniform()
    status = "completed" if u < 0.7 else "pruned" if u < 0.9 else "failed" if u < 0.97 else "error"
    n = evals if status == "completed" else int(rng.integers(1, max(2, evals)))
    history = []
    for i in range(1, n + 1):
        frac = i / evals
        decay = 1.0 - 0.5 * max(0.0, frac - 0.5) * (lr > 5e-3)  # high lr peaks early: best report != last
        base = base_end * (0.75 + 0.25 * frac) * decay
        new = new_end * (0.8 + 0.2 * frac) * decay
        hm = 2 * base * new / (base + new)
        history.append(
            {"step": float(10 * i), "train/loss": 2.0 / i, "val/base": base, "val/new": new, "val/hm": hm,
             "trainable_params": trainable, "total_steps": float(10 * evals)}
        )  # fmt: skip
    final = dict(history[-1]) if status == "completed" else {}
    if final:
        final.update({"test/base": final["val/base"] - 1, "test/new": final["val/new"] - 2})
        final["test/hm"] = (
            2 * final["test/base"] * final["test/new"] / (final["test/base"] + final["test/new"])
        )
        final.update({"val/hm_std": 0.0, "replicates": 1.0, "alloc/total_rank": float(rank * 12)})
    if status in ("failed", "error"):
        history = history[:1]
    return history, final, status


def _allocation(params: dict[str, Any], rng: np.random.Generator, evals: int) -> list[dict]:
    """Allocation snapshots (ALLOCATION_SCHEMA rows) at every evaluation; rank drifts to the top vision layers."""
    rank = _rank_of(params)
    modules = str(params.get("lora:placement.matrices", "q,k,v")).split(",")
    towers = ["vision", "text"] if params["placement.towers"] == "both" else [params["placement.towers"]]
    rows = []
    for i in range(evals + 1):
        for tower in towers:
            for layer in range(_DEPTH[tower]):
                for module in modules:
                    pull = (layer + 1) / _DEPTH[tower] * (1.3 if tower == "vision" else 0.7)
                    r = int(np.clip(round(rank * (0.5 + pull * i / evals) + rng.normal(0, 0.5)), 0, 2 * rank))
                    imp = float(pull + rng.normal(0, 0.1))
                    rows.append(
                        {"step": 10 * i, "tower": tower, "layer": layer, "module": module, "rank": r,
                         "max_rank": 2 * rank, "trainable_params": 2 * rank * 64, "importance_mean": imp,
                         "importance_min": imp - 0.1, "importance_max": imp + 0.1, "effective_rank": r,
                         "importance_std": 0.05, "active_params": r * 128}
                    )  # fmt: skip
    return rows


def _write_journal(path: Path, space: Any, finished: list[tuple[dict, str, dict]]) -> None:
    """The Optuna study as the sweep's searcher leaves it: COMPLETE with values, PRUNED, FAIL."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from ranksearch.space.optuna_space import directions, distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    from ranksearch.sweep.tuner import name_objectives

    study = optuna.create_study(storage=storage, study_name="ranksearch", directions=directions(space))
    name_objectives(study, space)
    objectives = [o.metric for o in space.spec.objectives]
    trials = []
    for params, status, final in finished:
        dists = distributions(space, params["adapter.family"])
        if status == "completed":
            state, values = TrialState.COMPLETE, [final[m] for m in objectives]
        else:
            state, values = (TrialState.PRUNED if status == "pruned" else TrialState.FAIL), None
        trials.append(
            optuna.trial.create_trial(params=params, distributions=dists, values=values, state=state)
        )
    study.add_trials(trials)
