"""MLflow for a sweep, written only from the driver: one parent run per sweep, one child run per trial.

A Tune ``Callback`` in the driver process does every write, so a sqlite store never sees concurrent writers
(trials run with ``tracker=None``). Every write goes through a durable journal in the sweep folder
(``mlflow_buffer.TrackingJournal``): a tracking-server outage or a killed driver loses nothing, and replays do not
duplicate. Child runs are found by the tag ``ranksearch.trial_id`` before one is created, so a trial that is
retried or resumed reuses its run; metric points are keyed by (trial, key, step), so a trial's tail re-run
after ``--resume`` is not logged twice. Failed trials end FAILED with the tag ``ranksearch.failure``. When a
trial ends its artifacts (carried in its final checkpoint) are logged; the parent run holds the space file, a
parquet table of all trials and the best trial.

The Tune loop never waits for MLflow: callbacks only append to the journal, whose own thread delivers. Per
finished trial the callback updates one row of the trial table and the best trial in O(1); the parquet file is
rewritten by the delivery thread at most every ``TABLE_EVERY_S`` (and once at the end), not per completion.

The callback keeps no live clients in its pickled state: Tune pickles callbacks into ``tuner.pkl`` and
``--resume`` unpickles them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ranksearch.sweep.mlflow_buffer import PARENT
from ranksearch.sweep.trainable import TUNE_KEYS

log = logging.getLogger(__name__)

TRIAL_TAG, SWEEP_TAG = "ranksearch.trial_id", "ranksearch.sweep"
TRIAL_STATUSES = ("pending", "running", "completed", "pruned", "failed", "error")  # see sweep.results
TABLE_EVERY_S = 10.0


def parent_run_spec(
    experiment: str, sweep: str, params: dict[str, Any], artifact_location: str | None
) -> dict[str, Any]:
    """What the sweep's parent run is created with: in a model-training experiment, MLflow's context tags (source:
    the space file) and a description for the UI. Also the fields of a journalled ``parent`` entry."""
    from ranksearch.tracking.mlflow_log import param_values, reproducibility_tags

    note = (
        f"ranksearch sweep **{sweep}** over `{params.get('space_file', '?')}`: {params.get('trials', '?')} trials; "
        f"objectives {params.get('objectives', '?')}. Child runs are the trials (`tags.ranksearch.status` = "
        f"completed / pruned / failed / error). Dashboard: `ranksearch report {sweep}`."
    )
    tags = {SWEEP_TAG: sweep, "ranksearch.kind": "sweep", "mlflow.note.content": note,
            **reproducibility_tags(source=params.get("space_file"))}  # fmt: skip
    return {
        "experiment": experiment, "artifact_location": artifact_location, "run_name": f"sweep-{sweep}",
        "tags": tags, "params": {k: str(v) for k, v in param_values(params).items()},
    }  # fmt: skip


def create_parent_run(
    uri: str, experiment: str, sweep: str, params: dict[str, Any], artifact_location: str | None
) -> str:
    """The sweep's parent run (called once per sweep; its id is kept in sweep.json); see ``parent_run_spec``."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from ranksearch.tracking.mlflow_log import experiment_id

    spec = parent_run_spec(experiment, sweep, params, artifact_location)
    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(client, experiment, artifact_location)
    run = client.create_run(exp, run_name=spec["run_name"], tags=spec["tags"])
    items = [Param(k, v) for k, v in spec["params"].items()]
    client.log_batch(run.info.run_id, params=items)  # MlflowClient.log_batch splits into the server's limits
    return run.info.run_id


def journal_parent_writes(
    folder: str | Path, uri: str, parent_run_id: str | None, writes: list[tuple[str, dict[str, Any]]]
) -> tuple[str | None, int]:
    """Journal writes to the parent run (``(op, fields)``; a ``parent`` op creates it) outside the Tune loop, and
    try once to deliver all that is pending (a refused connection fails at once). Returns (the parent's run id,
    None while MLflow has not got it; the writes still pending). Never raises for a tracking problem."""
    from ranksearch.sweep.mlflow_buffer import TrackingJournal

    journal = TrackingJournal(folder, uri, parent_run_id)
    try:
        for op, fields in writes:
            journal.append(op, PARENT, **fields)
        try:
            journal.flush(force=True)
        except Exception as e:  # the journal keeps them; the next driver or `ranksearch sync` delivers
            log.debug("MLflow delivery failed: %s", e)
        parent = journal._runs.get(PARENT)
        if parent is None and not journal.pending:  # delivered by an earlier driver: found by its key
            from ranksearch.sweep.mlflow_buffer import _fail_fast

            with contextlib.suppress(Exception), _fail_fast():
                parent = journal.parent_run_id
        return parent, journal.pending
    finally:
        journal.close()


class MlflowSweepCallback(Callback):
    """Driver-side MLflow logging of a sweep (see module docstring), buffered by a ``TrackingJournal``.

    ``earlier``: the rows of trials that earlier Tune experiments of this sweep ran (``--extend``): kept in
    trials.parquet and the best-trial tags, and their runs are never taken for orphans.
    """

    def __init__(
        self, uri: str, parent_run_id: str, space: Any, sweep: str, folder: str,
        earlier: list[dict[str, Any]] | None = None,
    ):  # fmt: skip
        self.uri, self.parent_run_id, self.space, self.sweep = uri, parent_run_id, space, sweep
        self.folder = folder
        self.earlier = list(earlier or [])
        self._journal: Any = None
        self._cleaned = False
        self._context: dict[str, str] | None = None  # MLflow context tags of every child run
        self._table: Any = None  # the trial table, row by row (TrialTable)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into tuner.pkl: no open file or client, and a restored driver starts fresh
        from ranksearch.tracking.credentials import redact

        state = self.__dict__.copy()
        state.update(_journal=None, _cleaned=False, _context=None, _table=None, uri=redact(self.uri))
        return state

    # ----------------------------------------------------------------------------------------------- runs
    @property
    def journal(self) -> Any:
        if self._journal is None:
            from ranksearch.sweep.mlflow_buffer import TrackingJournal

            self._journal = TrackingJournal(self.folder, self.uri, self.parent_run_id)
            self._journal.periodic.append((TABLE_EVERY_S, self._write_parquet))
            self._journal.start()  # delivery from its own thread: the Tune loop only appends
        return self._journal

    @property
    def client(self) -> Any:
        return self.journal.client

    def close(self) -> None:
        """Stop delivering and close the journal file (the driver's own writes to the parent follow)."""
        if self._journal is not None:
            self._journal.close()

    @property
    def resolved_parent_run_id(self) -> str | None:
        """The parent run's id once MLflow holds it (a buffered parent: None until delivered), no MLflow call."""
        if self._journal is None:
            return self.parent_run_id
        return self._journal._runs.get(PARENT)

    def run_id(self, trial: Any) -> str | None:
        """The MLflow run id of ``trial`` once its creation has been delivered (None while buffered)."""
        return self.journal.run_id(trial.trial_id)

    def _send(self, op: str, target: str, **fields: Any) -> None:
        """Journal one write (the delivery thread sends it)."""
        self.journal.append(op, target, **fields)

    def _child_spec(self, trial: Any) -> dict[str, Any]:
        from ranksearch.sweep.folder import safe_name
        from ranksearch.tracking.mlflow_log import flatten, param_values, reproducibility_tags
        from ranksearch.trial_record import trial_params

        params = dict(trial.config)
        family = str(params.get("adapter.family", self.space.default_family))
        if getattr(self, "_context", None) is None:  # the same for every trial: computed once (runs git)
            self._context = reproducibility_tags(source=self.space.source)
        tags = {
            # the parent's id, resolved at delivery (the parent run may itself be buffered: see mlflow_buffer)
            **self._context, "mlflow.parentRunId": {"run_of": PARENT}, TRIAL_TAG: trial.trial_id,
            SWEEP_TAG: self.sweep, "family": family, "ranksearch.kind": "trial",
        }  # fmt: skip
        items = {f"search/{k}": v for k, v in params.items()}
        try:
            items.update(flatten(trial_params(self.space.trial_config(params))))
        except Exception as e:  # the trial itself will report the problem; keep the search params
            log.warning("could not build the config of trial %s: %s", trial.trial_id, e)
        return {
            "run_name": safe_name(f"{trial.trial_id}-{family}"),
            "tags": tags,
            "params": param_values(items),
        }

    # ------------------------------------------------------------------------------------------ callbacks
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # On the first step of a (resumed) run Tune knows all its trials; runs of other trials are orphans.
        # A restored Tuner gets a fresh callback (tuner._use_callbacks), so this runs once per driver process.
        if not self._cleaned:
            self._cleaned = True
            self.remove_orphans({t.trial_id for t in trials})

    def remove_orphans(self, known: set[str]) -> None:
        """Mark child runs of trials the restored Tune experiment does not know (started after its last
        checkpoint, before the driver died; Tune runs those points again as new trials): a run with metrics is
        kept, ended and tagged ``ranksearch.orphaned``; only an empty one is removed (``TrackingJournal``)."""
        known = known | {str(r["trial_id"]) for r in getattr(self, "earlier", [])}
        self._send("orphans", PARENT, known=sorted(known))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("child", trial.trial_id, **self._child_spec(trial))
        self.table.update(trial)  # a running row, so a report built mid-sweep lists it

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # a failure Tune retries (e.g. its node was lost): the run stays RUNNING, the retry is visible
        self._send("tags", trial.trial_id, tags={"ranksearch.retries": str(trial.num_failures)})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from ranksearch.tracking.mlflow_log import metric_values

        step = int(result.get("training_iteration", 0))
        ts = int(time.time() * 1000)
        reported = {k: v for k, v in result.items() if k not in TUNE_KEYS and not k.startswith("config/")}
        items = [[k, v, ts, step] for k, v in metric_values(reported).items()]
        if "time_total_s" in result and _finite(result["time_total_s"]):
            items.append(["time_total_s", float(result["time_total_s"]), ts, step])
        # keyed by (trial, key, step): a tail re-run after --resume or a node loss is not logged twice
        self._send("metrics", trial.trial_id, metrics=items)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ranksearch.sweep.results import trial_status

        status = trial_status(trial, "TERMINATED")
        reason = str((trial.last_result or {}).get("error") or "") if status == "failed" else None
        # pruned: KILLED (stopped by the scheduler), so the runs table tells them from finished trials
        mlflow_status = {"completed": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        self._finish(trial, status, mlflow_status, reason)
        self.update_table(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ranksearch.sweep.results import failure_reason, tune_error_text

        reason = failure_reason(tune_error_text(trial))
        self._finish(trial, "error", "FAILED", reason)
        self.update_table(trial, "ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        import os

        self.journal.stop()  # no table write from the thread while the final one is made
        self.write_table(trials)
        # a short outage at the very end should not leave the record incomplete: wait for the server a while
        self.journal.drain(float(os.environ.get("RANKSEARCH_MLFLOW_DRAIN_S", "300")))

    def _finish(self, trial: Any, status: str, mlflow_status: str, reason: str | None = None) -> None:
        tags = {"ranksearch.status": status}
        if reason is not None:
            tags["ranksearch.failure"] = reason or status
        self._send("tags", trial.trial_id, tags=tags)
        if status == "completed":
            self._log_artifacts(trial)
        self._send("end", trial.trial_id, status=mlflow_status)

    def _log_artifacts(self, trial: Any) -> None:
        ckpt = trial.checkpoint
        if ckpt is None:
            return
        # storage is the sweep folder (a local or shared path): the final checkpoint stays where it is, so the
        # journal keeps its path and logs it whenever MLflow answers
        art = Path(ckpt.path) / "artifacts"
        if art.is_dir():
            self._send("artifact", trial.trial_id, path=self._in_folder(art))

    def _in_folder(self, path: Path) -> str:
        """``path`` relative to the sweep folder when it is inside it (the journal of a copied folder then
        logs the copy's files), else absolute."""
        try:
            return str(Path(path).resolve().relative_to(Path(self.folder).resolve()))
        except ValueError:
            return str(path)

    # -------------------------------------------------------------------------------------- parent run
    @property
    def table(self) -> Any:
        if self._table is None:
            from ranksearch.sweep.results import TrialTable

            self._table = TrialTable(self.space, earlier=getattr(self, "earlier", []))
        return self._table

    def update_table(self, trial: Any, ended: str) -> None:
        """A trial ended: its row, the counts and the best trial, in O(1); parent tags (and, if the best
        changed, the best/ metrics)."""
        best_changed = self.table.update(trial, ended)
        # every status, zeros included (see write_table)
        tags: dict[str, Any] = {f"trials.{k}": str(self.table.counts.get(k, 0)) for k in TRIAL_STATUSES}
        best = self.table.best
        if best is not None and best_changed:
            ts = int(time.time() * 1000)
            # step = trials finished so far: one point per change of the best trial
            metrics = [
                [f"best/{o.metric}", float(best[o.metric]), ts, self.table.finished]
                for o in self.space.spec.objectives
                if _finite(best.get(o.metric))
            ]
            if metrics:
                self.journal.append("metrics", PARENT, metrics=metrics)
            tags.update({"best.trial_id": best["trial_id"], "best.run_id": {"run_of": best["trial_id"]}})
        self._send("tags", PARENT, tags=tags)

    def _write_parquet(self) -> None:
        """Rewrite trials.parquet from the table and log it (the delivery thread, every TABLE_EVERY_S)."""
        from ranksearch.sweep.results import write_parquet

        if self._table is None or not self._table.changed:
            return
        rows = self._table.snapshot()
        path = Path(self.folder) / "trials.parquet"
        write_parquet(rows, path)
        self._send("artifact", PARENT, path=str(path))

    def write_table(self, trials: list, ended: dict[str, str] | None = None) -> None:
        """Rewrite the parent's trials.parquet and best-trial tags/metrics from every trial (the end)."""
        from ranksearch.sweep.results import best_trial, trial_rows, write_parquet

        rows = list(getattr(self, "earlier", [])) + trial_rows(trials, self.space, ended)
        path = Path(self.folder) / "trials.parquet"
        write_parquet(rows, path)
        self._send("artifact", PARENT, path=self._in_folder(path))
        tags: dict[str, Any] = {}
        best = best_trial(rows, self.space)
        if best is not None:
            ts = int(time.time() * 1000)
            # step = trials finished so far: one point per finished trial, and a repeat (same count) is dropped
            done = sum(r["status"] not in ("pending", "running") for r in rows)
            metrics = [
                [f"best/{o.metric}", float(best[o.metric]), ts, done]
                for o in self.space.spec.objectives
                if _finite(best.get(o.metric))
            ]
            if metrics:
                self.journal.append("metrics", PARENT, metrics=metrics)
            tags.update({"best.trial_id": best["trial_id"], "best.run_id": {"run_of": best["trial_id"]}})
        # every status, zeros included: a tag once written stays, so "trials.running: 1" would outlive the sweep
        counts: dict[str, int] = dict.fromkeys(TRIAL_STATUSES, 0)
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        tags.update({f"trials.{k}": str(v) for k, v in counts.items()})
        self._send("tags", PARENT, tags=tags)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
