"""MLflow for a sweep, written only from the driver: one parent run per sweep, one child run per trial.

A Tune ``Callback`` in the driver process does every write, so a sqlite store never sees concurrent writers
(trials run with ``tracker=None``). Child runs are found by the tag ``ranksearch.trial_id`` before one is
created, so a trial that is retried or resumed reuses its run. Metrics go out in ``log_batch`` calls. When a
trial ends its artifacts (carried in its final checkpoint) are logged; the parent run holds the space file, a
parquet table of all trials (rewritten as trials finish) and the best trial.

The callback keeps no live clients in its pickled state: Tune pickles callbacks into ``tuner.pkl`` and
``--resume`` unpickles them.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ranksearch.sweep.trainable import TUNE_KEYS

log = logging.getLogger(__name__)

TRIAL_TAG, SWEEP_TAG = "ranksearch.trial_id", "ranksearch.sweep"


def experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def create_parent_run(
    uri: str, experiment: str, sweep: str, params: dict[str, Any], artifact_location: str | None
) -> str:
    """The sweep's parent run (called once per sweep; its id is kept in sweep.json)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from ranksearch.tracking.mlflow_log import reproducibility_tags

    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, experiment, artifact_location)
    run = client.create_run(
        exp,
        run_name=f"sweep-{sweep}",
        tags={SWEEP_TAG: sweep, "ranksearch.kind": "sweep", **reproducibility_tags()},
    )
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


class MlflowSweepCallback(Callback):
    """Driver-side MLflow logging of a sweep (see module docstring)."""

    def __init__(self, uri: str, parent_run_id: str, space: Any, sweep: str, folder: str):
        self.uri, self.parent_run_id, self.space, self.sweep = uri, parent_run_id, space, sweep
        self.folder = folder
        self._client: Any = None
        self._runs: dict[str, str] = {}
        self._cleaned = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _cleaned=False)
        return state

    # ----------------------------------------------------------------------------------------------- runs
    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.parent_run_id).info.experiment_id

    def children(self) -> dict[str, Any]:
        """trial id -> child run (active runs only)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=50_000,
        )
        return {r.data.tags.get(TRIAL_TAG): r for r in runs}

    def run_id(self, trial: Any) -> str:
        """The trial's child run, found by tag or created (idempotent across retries and resume)."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial.trial_id}'",
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create_child(trial)
        self._runs[trial.trial_id] = run_id
        return run_id

    def _create_child(self, trial: Any) -> str:
        from mlflow.entities import Param

        from ranksearch.tracking.mlflow_log import flatten

        params = dict(trial.config)
        family = str(params.get("adapter.family", self.space.default_family))
        tags = {
            "mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id, SWEEP_TAG: self.sweep,
            "family": family, "ranksearch.kind": "trial",
        }  # fmt: skip
        run = self.client.create_run(self.experiment_id, run_name=f"{trial.trial_id}-{family}", tags=tags)
        items = {f"search/{k}": v for k, v in params.items()}
        try:
            items.update(flatten(self.space.trial_config(params).model_dump(mode="json")))
        except Exception as e:  # the trial itself will report the problem; keep the search params
            log.warning("could not build the config of trial %s: %s", trial.trial_id, e)
        batch = [Param(k, str(v)[:6000]) for k, v in items.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run.info.run_id, params=batch[i : i + 100])
        return run.info.run_id

    # ------------------------------------------------------------------------------------------ callbacks
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # On the first step of a (resumed) run Tune knows all its trials; runs of other trials are orphans.
        # The pickled callback of a restored Tuner is the original one, so this does not depend on a flag.
        if not self._cleaned:
            self._cleaned = True
            self.remove_orphans({t.trial_id for t in trials})

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Delete child runs of trials the restored Tune experiment does not know (started after its last
        checkpoint, before the driver died): Tune runs those points again as new trials."""
        children = self.children()
        orphans = [tid for tid in children if tid and tid not in known]
        for tid in orphans:
            run = children[tid]
            self.client.set_tag(run.info.run_id, "ranksearch.orphaned", "true")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            self.client.delete_run(run.info.run_id)
        if orphans:
            log.info("removed %d MLflow runs of trials lost with the previous driver", len(orphans))
        return orphans

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, step)
            for k, v in result.items()
            if k not in TUNE_KEYS and _finite(v) and not k.startswith("config/")
        ]
        if "time_total_s" in result and _finite(result["time_total_s"]):
            items.append(Metric("time_total_s", float(result["time_total_s"]), ts, step))
        run_id = self.run_id(trial)
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ranksearch.sweep.results import trial_status

        status = trial_status(trial, "TERMINATED")
        self._finish(trial, status, "FINISHED" if status != "failed" else "FAILED")
        self.write_table(trials, {trial.trial_id: "TERMINATED"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "error", "FAILED")
        self.write_table(trials, {trial.trial_id: "ERROR"})

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.write_table(trials)

    def _finish(self, trial: Any, status: str, mlflow_status: str) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "ranksearch.status", status)
        if status == "completed":
            self._log_artifacts(trial, run_id)
        self.client.set_terminated(run_id, status=mlflow_status)

    def _log_artifacts(self, trial: Any, run_id: str) -> None:
        ckpt = trial.checkpoint
        if ckpt is None:
            return
        try:
            with ckpt.as_directory() as d:
                art = Path(d) / "artifacts"
                if art.is_dir():
                    self.client.log_artifacts(run_id, str(art))
        except Exception as e:  # artifacts are a convenience; the metrics are already logged
            log.warning("could not log artifacts of trial %s: %s", trial.trial_id, e)

    # -------------------------------------------------------------------------------------- parent run
    def write_table(self, trials: list, ended: dict[str, str] | None = None) -> None:
        """Rewrite the parent's trials.parquet and best-trial tags/metrics."""
        from ranksearch.sweep.results import best_trial, trial_rows, write_parquet

        rows = trial_rows(trials, self.space, ended)
        path = Path(self.folder) / "trials.parquet"
        write_parquet(rows, path)
        self.client.log_artifact(self.parent_run_id, str(path))
        best = best_trial(rows, self.space)
        if best is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            metrics = [
                Metric(f"best/{o.metric}", float(best[o.metric]), ts, 0)
                for o in self.space.spec.objectives
                if _finite(best.get(o.metric))
            ]
            self.client.log_batch(self.parent_run_id, metrics=metrics)
            self.client.set_tag(self.parent_run_id, "best.trial_id", best["trial_id"])
            self.client.set_tag(self.parent_run_id, "best.run_id", self._runs.get(best["trial_id"], ""))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        for k, v in counts.items():
            self.client.set_tag(self.parent_run_id, f"trials.{k}", str(v))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
