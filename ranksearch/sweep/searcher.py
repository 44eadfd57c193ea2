"""Ray's OptunaSearch, fixed so Optuna learns only from trials that really finished.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna that a trial stopped early by the scheduler (ASHA) is
COMPLETE with its last, low-fidelity value, so TPE models truncated learning curves as final results. Here:

- a trial whose last report is not ``is_final`` (stopped by the scheduler) is told PRUNED: in a single-objective
  study Optuna then uses its intermediate values as it does for its own pruners; in a multi-objective study a
  PRUNED trial is not used as a finished point either;
- an errored trial, or one whose runner reported ``status: failed`` (diverged), is told FAIL;
- only ``is_final`` results are told COMPLETE, with the objective values;
- the last result of a trial reaches Optuna as an intermediate value even when Tune passes it only to
  ``on_trial_complete`` (it does so for a trial the scheduler stops), so a pruned trial keeps its whole curve.

It also tags each Optuna trial with its Ray trial id, tolerates results without the objective (failed trials),
and after a ``--resume`` marks as FAIL the Optuna trials that were asked for after the last experiment
checkpoint (Tune forgot those trials and creates new ones; left RUNNING they would confuse the study).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

RAY_TRIAL_ID = "ray_trial_id"


LOST_FILE = "lost_by_tune.json"


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch with correct trial states (see module docstring).

    ``tune_dir``: the Tune experiment folder, where an errored trial's ``error.txt`` gives the reason recorded in
    the Optuna user attribute ``ranksearch_failure``. ``constraints``: the space's outcome constraints (``Constraint``
    models); a COMPLETE trial gets one ``trial.set_constraint`` per constraint
    (feasible when <= 0; a missing or non-finite metric counts as infeasible).
    """

    def __init__(
        self, *args: Any, tune_dir: str | None = None, constraints: list[Any] | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.tune_dir = tune_dir
        self.constraints = list(constraints or [])
        # trials the study held before this searcher's Tune experiment (``--extend``): not lost by its Tune state
        # (the defaults this searcher enqueued are WAITING and belong to it)
        study = self._ot_study
        self.earlier_trials = (
            sum(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False)) if study else 0
        )

    def suggest(self, trial_id: str) -> dict | None:
        from ranksearch.sweep.study_storage import ensure_heartbeat

        ensure_heartbeat(self)  # a database study: beat for running trials (once per driver process)
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and config is not None:
            ot_trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or self.metric not in result or trial_id in self._completed_trials:
            return  # multi-objective studies take no intermediate values; failed trials report no objective
        value = result[self.metric]
        if isinstance(value, int | float) and math.isfinite(value):
            try:
                super().on_trial_result(trial_id, result)
            except optuna_errors() as e:  # already finished in Optuna (re-run after a resume): keep the first
                log.debug("intermediate value of trial %s not recorded: %s", trial_id, e)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result and not error:
            # Tune hands a scheduler-stopped trial's last result only to on_trial_complete (never to
            # on_trial_result): without this, a PRUNED trial would lack its last intermediate value
            self._report_last(trial_id, result)
        state, values, reason = classify(result, error, self.metric)
        try:
            ot_trial.set_user_attr("ranksearch_status", reason)
            failure = self._failure(trial_id, result) if state == TrialState.FAIL else None
            if failure:
                ot_trial.set_user_attr("ranksearch_failure", failure)
            if state == TrialState.COMPLETE:
                for key, value in constraint_values(getattr(self, "constraints", []), result).items():
                    ot_trial.set_constraint(key, value)
                self._ot_study.tell(ot_trial, values)
            else:
                self._ot_study.tell(ot_trial, state=state)
        except optuna_errors() as e:
            if self._stored(ot_trial, state):
                # Optuna stored the result and then a sampler hook raised: GridSampler calls study.stop() once
                # the grid is used up, which raises outside study.optimize (tell stores the trial regardless)
                log.debug("Optuna stored trial %s; its sampler then raised: %s", trial_id, e)
            else:
                # e.g. the trial was already told before the driver was killed and is re-run from a checkpoint
                log.warning("Optuna did not accept the result of trial %s: %s", trial_id, e)
        self._completed_trials.add(trial_id)

    def _report_last(self, trial_id: str, result: dict) -> None:
        """Record ``result``'s objective as an intermediate value unless its step already has one."""
        from ray.tune.result import TRAINING_ITERATION

        step = result.get(TRAINING_ITERATION)
        if isinstance(self.metric, list) or not isinstance(step, int):
            return
        ot_trial = self._ot_trials[trial_id]
        try:
            known = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
        except Exception:  # the storage is Optuna's; never lose the completion over a lookup
            known = {}
        if step not in known:
            self.on_trial_result(trial_id, result)

    def _stored(self, ot_trial: Any, state: Any) -> bool:
        """Whether the study holds ``ot_trial`` in ``state`` (told, whatever raised afterwards)."""
        try:
            return self._ot_study._storage.get_trial(ot_trial._trial_id).state == state
        except Exception:
            return False

    def _failure(self, trial_id: str, result: dict | None) -> str | None:
        """Why the trial failed: the runner's error (diverged, over budget) or the exception Tune recorded."""
        from ranksearch.sweep.results import failure_reason

        if result and result.get("error"):
            return str(result["error"])[:1000]
        tune_dir = getattr(self, "tune_dir", None)  # absent in searchers pickled by older versions
        if not tune_dir:
            return None
        for error_file in [
            *_staged_error_files(Path(tune_dir).name, trial_id),
            Path(tune_dir) / trial_id / "error.txt",
        ]:
            try:
                return failure_reason(error_file.read_text(errors="replace"))
            except OSError:
                continue
        return None

    def relocate(self, folder: str | Path) -> None:
        """Restore into the sweep folder ``folder`` (call before Tune restores this searcher).

        The saved state pickles the absolute paths of the folder it was saved in (the Optuna journal, the Tune
        experiment): a copied or moved folder would otherwise keep writing the original's study.
        """
        self._relocate_to = str(folder)

    def _move_to(self, folder: Path) -> None:
        """Point the restored study, its trials and ``tune_dir`` at ``folder``'s own files."""
        import copy

        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.tune_dir = str(folder / "tune")
        if not isinstance(self._ot_study._storage, JournalStorage):
            return  # a study on a database server (--storage postgresql://...) is shared, not in the folder
        storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
        old = self._ot_study
        study = optuna.load_study(
            study_name=old.study_name, storage=storage, sampler=old.sampler, pruner=old.pruner
        )
        moved = {}
        for tid, trial in self._ot_trials.items():  # rebound, not rebuilt: a new Trial would call the sampler
            moved[tid] = copy.copy(trial)
            moved[tid].study, moved[tid].storage = study, study._storage
        self._ot_study, self._ot_trials, self._storage = study, moved, storage

    def restore(self, checkpoint_path: str) -> None:
        target = getattr(self, "_relocate_to", None)  # the saved state brings the old one along
        super().restore(checkpoint_path)
        if target is not None:
            self._relocate_to = target
            self._move_to(Path(target))
        # Trials Optuna already finished, whose completion the restored Tune state predates: Tune runs their
        # tail again from the last checkpoint; keep Optuna's first record and ignore the repeat.
        for tid, t in self._ot_trials.items():
            if self._ot_study._storage.get_trial(t._trial_id).state.is_finished():
                self._completed_trials.add(tid)
        self.fail_orphans()
        self.record_lost_results()

    def record_lost_results(self) -> list[int]:
        """Finished Optuna trials that the restored Tune state never knew: record them in the sweep folder.

        Tune snapshots its experiment every few seconds; a driver killed after Optuna was told a trial's result
        but before the next snapshot leaves a finished Optuna trial that Tune will not report again (it runs a
        new trial in its place). Optuna's record cannot be undone (finished trials are immutable), so it stays,
        learned from like any result, and ``lost_by_tune.json`` lists it; its MLflow run is kept and tagged
        ``ranksearch.orphaned`` with the other orphans (nothing a trial logged is deleted).
        """
        owned = {t.number for t in self._ot_trials.values()}
        lost = [
            {"number": t.number, "ray_trial_id": t.user_attrs.get(RAY_TRIAL_ID), "state": t.state.name}
            for t in self._ot_study.get_trials(deepcopy=False)
            if t.state.is_finished()
            and t.number not in owned
            and t.user_attrs.get("ranksearch_status") != "orphaned"
            and "warm_start_from" not in t.user_attrs
            and t.number >= getattr(self, "earlier_trials", 0)
        ]
        if lost and self.tune_dir:
            path = Path(self.tune_dir).parent / LOST_FILE
            known = json.loads(path.read_text()) if path.is_file() else []
            seen = {entry["number"] for entry in known}
            path.write_text(json.dumps(known + [e for e in lost if e["number"] not in seen], indent=2))
            log.warning(
                "%d finished Optuna trials were lost by Tune's last snapshot; see %s", len(lost), path
            )
        return [e["number"] for e in lost]

    def fail_orphans(self) -> list[int]:
        """Mark RUNNING Optuna trials that no Tune trial owns as FAIL; returns their numbers."""
        from optuna.trial import TrialState

        owned = {t.number for t in self._ot_trials.values()}
        orphans = []
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in owned:
                self._ot_study._storage.set_trial_user_attr(t._trial_id, "ranksearch_status", "orphaned")
                self._ot_study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                orphans.append(t.number)
        if orphans:
            log.info(
                "marked %d Optuna trials lost with the previous driver as FAIL: %s", len(orphans), orphans
            )
        return orphans


def optuna_errors() -> tuple[type[BaseException], ...]:
    import optuna

    return (RuntimeError, ValueError, optuna.exceptions.OptunaError)


def classify(
    result: dict | None, error: bool, metric: str | list[str]
) -> tuple[Any, list[float] | None, str]:
    """(Optuna state, objective values, reason) for a finished Tune trial."""
    from optuna.trial import TrialState

    if error:
        return TrialState.FAIL, None, "error"
    if not result or not result.get("is_final"):
        return TrialState.PRUNED, None, "pruned"
    if result.get("status") != "completed":
        return TrialState.FAIL, None, "failed"
    metrics = metric if isinstance(metric, list) else [metric]
    values = [result.get(m) for m in metrics]
    if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
        return TrialState.FAIL, None, "no objective value"
    return TrialState.COMPLETE, [float(v) for v in values], "completed"


def constraint_values(constraints: list[Any], result: dict | None) -> dict[str, float]:
    """Optuna constraint values (<= 0: feasible) of a final result, keyed by metric.

    ``constraints``: the space's ``Constraint`` models. A missing or non-finite metric cannot be shown
    feasible: it gets a large violation (finite, so every storage can hold it).
    """
    out = {}
    for c in constraints:
        v = (result or {}).get(c.metric)
        finite = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        out[c.metric] = float(c.violation(v)) if finite else 1e300
    return out


def warm_start(study: Any, space: Any, path: Path) -> int:
    """Add the COMPLETE trials of an earlier study (a journal file or a sweep folder) to ``study``.

    Trials whose parameters do not fit this space (other names, values outside the ranges) are skipped.
    Returns the number of trials added.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ranksearch.errors import ConfigError
    from ranksearch.space.optuna_space import distributions
    from ranksearch.space.space import FAMILY_PATH

    path = Path(path)
    journal = path / "optuna.journal" if path.is_dir() else path
    if not journal.is_file():
        raise ConfigError([("--warm-start", f"{journal} is not an Optuna journal file or a sweep folder")])
    storage = JournalStorage(JournalFileBackend(str(journal)))
    added = 0
    for summary in optuna.get_all_study_summaries(storage):
        old = optuna.load_study(study_name=summary.study_name, storage=storage)
        if len(old.directions) != len(study.directions):
            continue
        for t in old.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            family = t.params.get(FAMILY_PATH, space.default_family)
            if family not in space.families:
                continue
            dists = distributions(space, family)
            if not _fits(dists, t.params):
                continue
            study.add_trial(
                optuna.trial.create_trial(
                    params=t.params, distributions=dists, values=t.values,
                    user_attrs={"warm_start_from": str(journal), "warm_start_number": t.number},
                )
            )  # fmt: skip
            added += 1
    return added


def _fits(dists: dict[str, Any], params: dict[str, Any]) -> bool:
    if set(params) != set(dists):
        return False
    try:
        return all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items())
    except (ValueError, TypeError):
        return False


def _staged_error_files(experiment: str, trial_id: str) -> list[Path]:
    """The driver's local copy of a trial's ``error.txt`` (Tune's staging folder of this Ray session).

    Tune writes a failed trial's error there just before it tells the searcher, and copies it into the
    experiment's storage (the sweep folder's ``tune/``) later, in the background: on a busy machine the storage copy
    is not there yet when the searcher records the reason. Trial folders are named by trial id (unique), so the
    glob over this session's experiments finds only this trial's file.
    """
    try:
        from ray.train.constants import _get_ray_train_session_dir

        session = Path(_get_ray_train_session_dir())
    except Exception:  # no Ray session here (a replay, a unit test) or Ray moved the helper: storage only
        return []
    return sorted(session.glob(f"*/{experiment}/driver_artifacts/{trial_id}/error.txt"))
