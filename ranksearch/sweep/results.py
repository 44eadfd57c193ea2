"""A sweep's trials as rows: status, parameters, final metrics; the best trial; the parquet table.

Status of a trial: ``pending``/``running`` while Tune has it, then ``completed`` (its final report arrived),
``pruned`` (stopped by the scheduler before its final report), ``failed`` (the run diverged or ran over its
time budget) or ``error`` (an exception).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ranksearch.sweep.trainable import TUNE_KEYS


def trial_status(trial: Any, ended: str | None = None) -> str:
    """The trial's status; ``ended`` ("TERMINATED"/"ERROR") for callbacks, which run before Tune updates it."""
    last = trial.last_result or {}
    tune_status = ended or trial.status
    if tune_status == "ERROR":
        return "error"
    if tune_status == "TERMINATED":
        if last.get("is_final"):
            return "completed" if last.get("status") == "completed" else "failed"
        return "pruned"
    return "running" if trial.status == "RUNNING" else "pending"


def trial_rows(trials: list, space: Any, ended: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial: id, status, family, reports, each parameter (``param:<name>``), last metrics.

    ``ended`` maps trial ids to the Tune status they are ending with (see ``trial_status``).
    """
    ended = ended or {}
    rows = []
    for t in trials:
        last = t.last_result or {}
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": trial_status(t, ended.get(t.trial_id)),
            "family": str(t.config.get("adapter.family", space.default_family)),
            "reports": int(last.get("training_iteration", 0) or 0),
        }
        row.update({f"param:{k}": v for k, v in t.config.items()})
        for k, v in last.items():
            if k not in TUNE_KEYS and not k.startswith("config/") and k not in ("is_final", "status"):
                row[k] = v
        if "error" in last:
            row["error"] = str(last["error"])
        elif row["status"] == "error":
            row["error"] = _tune_error(t)
        rows.append(row)
    return rows


class TrialTable:
    """The rows of started and finished trials, kept up to date one trial at a time (the driver's table while a
    sweep runs).

    ``update`` costs O(1) in the number of trials (one row built, the counts and the best compared), unlike
    ``trial_rows`` over every trial; ``snapshot`` copies the rows for a parquet write in another thread.
    """

    def __init__(self, space: Any, earlier: list[dict[str, Any]] | None = None):
        import threading

        self.space = space
        # rows of trials that earlier Tune experiments of this sweep ran (--extend) come first
        self.rows: dict[str, dict[str, Any]] = {str(r["trial_id"]): r for r in earlier or []}
        self.counts: dict[str, int] = {}
        for r in self.rows.values():
            self.counts[r["status"]] = self.counts.get(r["status"], 0) + 1
        self.best: dict[str, Any] | None = best_trial(list(self.rows.values()), space)
        self.changed = False
        self._lock = threading.Lock()

    @property
    def finished(self) -> int:
        """Trials that have ended (whatever their status)."""
        return sum(n for status, n in self.counts.items() if status not in ("pending", "running"))

    def update(self, trial: Any, ended: str | None = None) -> bool:
        """Record ``trial`` (ending with Tune status ``ended``, or started); True when it is the new best."""
        (row,) = trial_rows([trial], self.space, {trial.trial_id: ended} if ended else None)
        with self._lock:
            old = self.rows.get(trial.trial_id)
            if old is not None:
                self.counts[old["status"]] -= 1
            self.rows[trial.trial_id] = row
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            self.changed = True
            candidate = best_trial([row] + ([self.best] if self.best else []), self.space)
            if candidate is row or (self.best is not None and self.best["trial_id"] == row["trial_id"]):
                self.best = candidate
                return True
            return False

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            self.changed = False
            return list(self.rows.values())


def best_trial(rows: list[dict[str, Any]], space: Any) -> dict[str, Any] | None:
    """The completed trial with the best first objective (for several objectives: one Pareto-optimal trial)."""
    first = space.spec.objectives[0]
    done = [r for r in rows if r["status"] == "completed" and _finite(r.get(first.metric))]
    if not done:
        return None
    sign = 1 if first.mode == "max" else -1
    return max(done, key=lambda r: sign * r[first.metric])


def pareto_front(rows: list[dict[str, Any]], space: Any) -> list[dict[str, Any]]:
    """Completed trials no other completed trial dominates on all objectives."""
    from ranksearch.pareto import pareto_mask

    objs = space.spec.objectives
    done = [r for r in rows if r["status"] == "completed" and all(_finite(r.get(o.metric)) for o in objs)]
    if not done:
        return []
    values = [[r[o.metric] for o in objs] for r in done]
    mask = pareto_mask(values, [o.mode == "max" for o in objs])
    return [r for r, keep in zip(done, mask, strict=True) if keep]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows with the union of their keys as columns; a column of mixed types is stored as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    columns = {}
    for k in keys:
        values = [r.get(k) for r in rows]
        try:
            columns[k] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[k] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    table = pa.table(columns) if columns else pa.table({"trial_id": pa.array([], pa.string())})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def tune_error_text(trial: Any) -> str:
    """Tune's error text of an errored trial ("" when there is none).

    Tune writes ``error.txt`` into the trial's local folder before it calls the callbacks, and copies it to the
    experiment's storage later, in the background: ``trial.get_error()`` reads the storage copy, which a busy
    machine may not have yet. So the local file first (plain text, never the pickled error), then storage.
    """
    local = getattr(trial, "error_file", None)
    try:
        if local and Path(local).is_file():
            return Path(local).read_text(errors="replace")
    except OSError:
        pass
    try:
        return str(trial.get_error() or "")
    except Exception:  # no error file anywhere (yet)
        return ""


def _tune_error(trial: Any) -> str:
    """The exception an errored trial raised, from Tune's error file (a short line, never a traceback)."""
    return failure_reason(tune_error_text(trial))


def failure_reason(error_text: str, limit: int = 1000) -> str:
    """The reason a trial raised, from Tune's error text: its last ``Type: message`` line, shortened.

    Tune wraps the trial's exception in a traceback (``RayTaskError(...)`` and the original); the last
    non-empty line is the original exception, which is what a user needs in the MLflow tag and Optuna.
    """
    lines = [line.strip() for line in str(error_text).splitlines() if line.strip()]
    reason = lines[-1] if lines else "the trial raised an exception"
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
