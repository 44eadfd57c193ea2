"""Run a sweep: Ray Tune + Optuna (define-by-run) + ASHA, tracked in MLflow from the driver, resumable.

``run_sweep`` is the library entry point behind ``ranksearch sweep``. Locally it starts Ray with
``address="local"`` and ``num_gpus=N`` (logical GPUs work on a CPU machine, so fractional trials pack the same
way as on a GPU node); with ``address`` it joins an existing cluster. A Ray runtime that is already
initialised in this process (tests, notebooks) is used as is and left running.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranksearch.errors import ConfigError, RanksearchError
from ranksearch.space import SearchSpace, load_space
from ranksearch.sweep.folder import (
    Manifest,
    default_tracking_uri,
    finished_manifest,
    prepare_folder,
    sweep_folder,
)
from ranksearch.sweep.preflight import preflight
from ranksearch.sweep.state import check_resumable, claim, unstarted
from ranksearch.tracking.credentials import is_database_url, redact

log = logging.getLogger(__name__)

# Tune keeps a finished trial's actor for the next one (no re-import of torch/open_clip per trial);
# bench/search_overhead.py gives its bare-Tune baseline the same setting
REUSE_ACTORS = True

TUNE_DIR, SPACE_COPY, JOURNAL = "tune", "space.yaml", "optuna.journal"


@dataclass
class SweepResult:
    """Outcome of ``run_sweep``: where everything is, and one row per trial (see ``sweep.results``)."""

    name: str
    folder: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    parent_run_id: str | None  # None while the parent run is buffered (its server has not answered yet)
    tracking_uri: str
    experiment: str
    wall_s: float
    space: SearchSpace
    oneshot: dict[str, Any] | None = None  # a one-shot search's summary (rows: estimate vs retrained)
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal ended the sweep early (resumable)
    tracking_pending: int = 0  # MLflow writes still in mlflow.journal.jsonl (the server did not answer)


def run_sweep(
    space_file: str | Path | SearchSpace,
    *,
    gpus: int | None = None,
    address: str | None = None,
    trials: int | None = None,
    name: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    tracking_uri: str | None = None,
    storage: Path | None = None,
    study_storage: str | None = None,
    warm_start: Path | None = None,
    runner: str = "trial",
    runner_options: dict[str, Any] | None = None,
    live: bool | None = None,
    ray_init: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    debug: bool = False,
    trust_state: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep over a search space.

    Args:
        space_file: the search-space YAML or a validated ``SearchSpace`` (ignored on resume: the sweep folder's
            copy is used).
        gpus: logical GPUs of a local Ray (default: detected); ignored with ``address``.
        address: join this Ray cluster instead of starting one ("auto", "HOST:PORT", "ray://...").
        trials: override the space's trial count (new sweeps only).
        overrides: ``a.b=value`` fixed values set in the space's ``base`` (new sweeps only).
        name: sweep name (folder and default MLflow experiment); default the space's ``name`` or file stem.
        resume: continue the interrupted sweep of this name.
        extend: add this many trials to the finished sweep of this name: the same Optuna study (the sampler
            learns from every earlier trial; the defaults are not enqueued again), MLflow parent run and folder,
            with the recorded space (a compute budget applies to the extension on its own).
        tracking_uri: MLflow URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<sweep folder>/mlflow.db``.
        storage: parent folder of sweep folders (default ``./ranksearch-runs/sweeps``).
        study_storage: a database URL for the Optuna study (``postgresql://user@host/db``; see
            ``sweep.study_storage``); default ``optuna.journal`` in the sweep folder. On resume the recorded one
            is used; pass it again only to supply a password that is not in ``PGPASSWORD`` / ``~/.pgpass``.
        warm_start: an earlier sweep folder or Optuna journal whose completed trials seed the sampler.
        runner: ``trial`` (real training) or ``synthetic`` (a cheap stand-in for tests and demos).
        runner_options: keyword arguments for the runner (synthetic only).
        live: live terminal table (default: when stderr is a terminal).
        ray_init: extra ``ray.init`` keyword arguments when this call starts Ray (e.g. ``_temp_dir``).
        debug: show the libraries' start-up output (MLflow, Ray, Tune, Optuna); see ``ranksearch.quiet``.
        trust_state: on resume, accept Tune state that this user's key did not sign (a folder written by an
            older ranksearch or on another machine) and sign it; only for folders the user trusts.

    Returns:
        A ``SweepResult`` (rows, best trial, locations).

    Raises:
        ConfigError: an invalid space, an existing folder without ``--resume``, nothing to resume, nothing
            finished to extend.
        TrustError: on resume, a pickle in the folder's Tune state is not signed with this user's key.
    """
    from ranksearch.quiet import quiet_libraries

    with quiet_libraries(debug):
        return _run_sweep(
            space_file, gpus=gpus, address=address, trials=trials, name=name, resume=resume, extend=extend,
            tracking_uri=tracking_uri, storage=storage, study_storage=study_storage, warm_start=warm_start,
            runner=runner, runner_options=runner_options, live=live, ray_init=ray_init, overrides=overrides,
            trust_state=trust_state,
        )  # fmt: skip


def _run_sweep(
    space_file: str | Path | SearchSpace,
    *,
    gpus: int | None,
    address: str | None,
    trials: int | None,
    name: str | None,
    resume: bool,
    extend: int | None,
    tracking_uri: str | None,
    storage: Path | None,
    study_storage: str | None,
    warm_start: Path | None,
    runner: str,
    runner_options: dict[str, Any] | None,
    live: bool | None,
    ray_init: dict[str, Any] | None,
    overrides: list[str] | tuple[str, ...],
    trust_state: bool = False,
) -> SweepResult:
    import ray

    from ranksearch.sweep.ray_runtime import probe_address

    t0 = time.time()
    if runner not in _runners():
        raise ConfigError([("runner", f"unknown runner {runner!r}; known: {', '.join(_runners())}")])
    if extend is not None:
        _check_extend(extend, resume, trials, overrides, warm_start)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        # Ray reads num_samples=-1 as "forever", and 0 was taken for "the space's count"
        raise ConfigError(
            [("--trials", f"{trials!r}: the number of trials must be an integer of at least 1")]
        )
    if address and not ray.is_initialized():
        probe_address(address)  # before anything is created: nothing answers there -> nothing left behind
    given = space_file if isinstance(space_file, SearchSpace) else None  # the Python API passes the object
    if given is not None:
        space_file = Path(given.source or "space.yaml")
    reuse = resume or extend is not None  # the folder's recorded space is run, not the given one
    space = (given or load_space(space_file, overrides)) if not reuse or name is None else None
    name = name or (space.spec.name if space else None) or Path(space_file).stem
    folder = sweep_folder(name, storage)
    if runner == "trial" and space is not None and not reuse:
        preflight(space)  # the model and data load: before any folder, study or MLflow run exists
    if study_storage is not None and not is_database_url(study_storage):
        raise ConfigError([("--storage", f"{redact(study_storage)}: not a database URL (postgresql://...)")])
    from ranksearch.sweep.study_storage import open_storage

    study = None
    if study_storage and not reuse:  # reach the study server before anything is created
        study = open_storage(study_storage)
    if extend is None:
        prepare_folder(folder, resume, unstarted(folder))
    # one driver per folder; a new sweep that fails before its first trial leaves no folder behind
    with claim(folder, reuse):
        return _run_in_folder(
            folder, space, space_file, name=name, gpus=gpus, address=address, trials=trials, resume=resume,
            extend=extend, tracking_uri=tracking_uri, storage=storage, study_storage=study_storage,
            study=study, warm_start=warm_start, runner=runner, runner_options=runner_options, live=live,
            ray_init=ray_init, trust_state=trust_state, t0=t0,
        )  # fmt: skip


def _run_in_folder(
    folder: Path, space: SearchSpace | None, space_file: str | Path, *, name: str, gpus: int | None,
    address: str | None, trials: int | None, resume: bool, extend: int | None, tracking_uri: str | None,
    storage: Path | None, study_storage: str | None, study: Any, warm_start: Path | None, runner: str,
    runner_options: dict[str, Any] | None, live: bool | None, ray_init: dict[str, Any] | None,
    trust_state: bool, t0: float,
) -> SweepResult:  # fmt: skip
    """The sweep in its claimed folder: start, resume or extend the manifest, run Tune, record the outcome."""
    import ray
    from ray import tune

    from ranksearch.sweep.checkpoints import CheckpointPruner
    from ranksearch.sweep.compute_budget import budget_spent
    from ranksearch.sweep.live import LiveView
    from ranksearch.sweep.mlflow_sweep import MlflowSweepCallback
    from ranksearch.sweep.ray_runtime import check_resources, start_ray
    from ranksearch.sweep.results import best_trial, trial_rows
    from ranksearch.sweep.signing import sign_tune_state
    from ranksearch.sweep.state_signer import StateSigner
    from ranksearch.sweep.stop_signals import stop_on_signals
    from ranksearch.sweep.study_storage import open_storage

    reuse = resume or extend is not None
    earlier: list[dict[str, Any]] = []  # rows of the trials of earlier Tune experiments (--extend)
    if extend is not None:  # a new Tune experiment for the finished sweep's study, parent run and folder
        manifest = finished_manifest(folder)
        _check_state_signed(folder, space_file, name, storage, trust_state)  # the stores sweep.json names
        space = load_space(folder / SPACE_COPY)
        tracking_uri = _recorded_url(tracking_uri, manifest.tracking_uri, "--tracking-uri")
        study_storage = _recorded_url(study_storage, manifest.study_storage, "--storage")
        if study_storage:  # the finished sweep's study, on its database
            study = open_storage(study_storage)
        _parent_in_mlflow(manifest, folder, tracking_uri)
        earlier = _earlier_rows(folder)
        manifest.earlier_trials = [str(r["trial_id"]) for r in earlier]
        manifest.extensions += 1
        manifest.trials = len(earlier) + extend
        _reopen_parent(manifest, tracking_uri, added=extend)
    elif resume:  # the recorded space and stores, whatever the arguments say
        check_resumable(folder)  # every state file whole and consistent before anything is read or written
        manifest = Manifest.load(folder)
        _check_state_signed(folder, space_file, name, storage, trust_state)
        space = load_space(folder / SPACE_COPY)
        tracking_uri = _recorded_url(tracking_uri, manifest.tracking_uri, "--tracking-uri")
        study_storage = _recorded_url(study_storage, manifest.study_storage, "--storage")
        manifest.resumes += 1
        if manifest.tracking_uri == default_tracking_uri(folder) and manifest.parent_run_id:
            from ranksearch.sweep.relocate import relocate_store  # a copied/moved folder logs into itself

            relocate_store(folder, manifest.parent_run_id)
        _resume_parent(manifest, folder, tracking_uri)
        if manifest.earlier_trials:  # an interrupted extension
            earlier = _earlier_rows(folder, manifest.earlier_trials)
    else:
        assert space is not None
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(folder)
        manifest = _start_manifest(space, Path(space_file), folder, name, tracking_uri, trials, study_storage)
    manifest.status, manifest.ended = "running", None
    manifest.save(folder)
    total = trials if (trials and manifest.resumes == 0) else _recorded_trials(space, manifest, tracking_uri)
    total -= len(manifest.earlier_trials)  # this Tune experiment's share (--extend)

    if runner == "trial" and reuse:  # the recorded space, checked now that it is known
        preflight(space)
    started_ray = False
    if not ray.is_initialized():
        start_ray(address, gpus, ray_init)  # fails fast on an --address nothing answers
        started_ray = True
    res = space.spec.resources
    try:  # a request no node can hold would leave every trial pending forever
        check_resources(res.cpu, res.gpu, "per pack" if res.pack > 1 else "per trial")
    except ConfigError:
        if started_ray:
            ray.shutdown()
        raise
    if space.spec.one_shot:  # one supernet, evaluations, retrains: ranksearch.oneshot.pipeline
        return _run_oneshot(space, folder, manifest, name, started_ray, t0, tracking_uri)
    # The experiment state is saved often (every 2 s: after a killed driver, only trials started since the last
    # save are lost and re-created) but at most 5 % of the loop's time: sweep.snapshots.bounded_snapshots
    # CheckpointConfig(num_to_keep=...) makes Tune snapshot the experiment at every trial checkpoint, which is
    # what a reliable --resume wants; its warning about that is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    broker = None
    if space.spec.resources.pack > 1:  # packed trials: pack hosts train, the Tune trials relay (sweep.packed)
        from ranksearch.sweep.packed import start_broker

        broker_name, broker = start_broker(space, runner, runner_options)
        runner_options = {**(runner_options or {}), "pack_broker": broker_name}
    trainable = _trainable(space, folder, runner, runner_options)
    # latest + best checkpoint per trial, deleted only once Tune's snapshot has moved on (sweep.checkpoints)
    first = space.spec.objectives[0]
    pruner = CheckpointPruner(str(folder / TUNE_DIR), first.metric, first.mode)
    tracking = MlflowSweepCallback(
        tracking_uri, manifest.parent_run_id, space, name, str(folder), earlier=earlier
    )
    callbacks = [StateSigner(str(folder)), LiveView(space, name, total, live=live), tracking, pruner]
    status, pending = "failed", 0
    try:
        if resume:
            tuner = tune.Tuner.restore(
                str(folder / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True
            )
            _use_callbacks(tuner, callbacks)
            _relocate_searcher(tuner, folder)
        else:
            # a new Tune experiment in the same tune/ folder (the newest state is what --resume restores)
            tuner = _new_tuner(space, folder, manifest, trainable, callbacks, total, warm_start, study)
            sign_tune_state(folder)  # tune/tuner.pkl, written by the Tuner itself (not staged)
        from ranksearch.sweep.snapshots import bounded_snapshots

        # Ctrl-C, SIGTERM: Tune stops cleanly, state saved for --resume
        with stop_on_signals() as stop, bounded_snapshots():
            grid = tuner.fit()
        pruned = pruner.finish()  # Tune's final snapshot is written: latest + best per trial stay
        log.debug("deleted %d superseded checkpoints at the end", pruned)
        sign_tune_state(folder)  # fit waited for Tune's last copy into tune/: sign what is there now
        trials_done = _grid_trials(grid)
        rows = trial_rows(trials_done, space)
        # Tune returns normally after Ctrl-C (it saves its state first): an unfinished sweep is "interrupted",
        # unless it ended because its compute budget was spent
        unfinished = len(rows) < total or any(r["status"] in ("pending", "running") for r in rows)
        unfinished = unfinished and not budget_spent(space, trials_done)
        # Tune marks the trials a signal cut short as ended (TERMINATED) in memory, though its saved state has
        # them running (--resume continues them): after a stop signal the sweep is interrupted, whatever the rows
        unfinished = unfinished or stop.signal is not None
        status = "interrupted" if unfinished else "finished"
        rows = earlier + rows
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        from ranksearch.sweep.study_storage import stop_heartbeats

        stop_heartbeats()
        tracking.close()  # its delivery thread stops; the parent's end is journalled after its writes
        manifest.parent_run_id = manifest.parent_run_id or tracking.resolved_parent_run_id
        manifest.status, manifest.ended = status, time.time()
        manifest.save(folder)
        if status != "interrupted":
            pending = _end_parent_journalled(manifest, folder, status, tracking_uri)
        if broker is not None:
            from ranksearch.sweep.packed import stop_broker

            stop_broker(broker)
        if started_ray:
            ray.shutdown()

    return SweepResult(
        name, folder, rows, best_trial(rows, space), manifest.parent_run_id, redact(tracking_uri),
        manifest.experiment, time.time() - t0, space, stopped_by=stop.signal if status == "interrupted" else None,
        tracking_pending=pending,
    )  # fmt: skip


def _check_extend(
    extend: int, resume: bool, trials: int | None, overrides: Any, warm_start: Path | None
) -> None:
    """--extend N: a trial count, and none of the options that only a new sweep takes."""
    if isinstance(extend, bool) or not isinstance(extend, int) or not 1 <= extend <= 100_000:
        raise ConfigError([("--extend", f"{extend!r}: give the number of trials to add (1 to 100000)")])
    clash = [o for o, v in (("--resume", resume), ("--trials", trials), ("--set", overrides),
                            ("--warm-start", warm_start)) if v]  # fmt: skip
    if clash:
        raise ConfigError(
            [
                (
                    "--extend",
                    f"continues a finished sweep with its recorded space; {', '.join(clash)} does not apply",
                )
            ]
        )


def _earlier_rows(folder: Path, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The trial rows in the folder's trials.parquet (those of ``ids`` when given), as ``trial_rows`` has them."""
    import pyarrow.parquet as pq

    path = folder / "trials.parquet"
    if not path.is_file():
        return []
    table = pq.read_table(path)
    table = table.select([n for n in table.column_names if n != "config"])
    rows = [{k: v for k, v in r.items() if v is not None} for r in table.to_pylist()]
    wanted = None if ids is None else set(ids)
    return [r for r in rows if wanted is None or str(r.get("trial_id")) in wanted]


def _check_state_signed(
    folder: Path, space_file: Any, name: str, storage: Path | None, trust_state: bool
) -> None:
    """Before ``Tuner.restore`` unpickles anything: every pickle in the folder must carry this user's MAC."""
    from ranksearch.sweep.signing import sign_tune_state, verify_tune_state

    if trust_state:
        log.warning("--trust-state: signing %s's Tune state as yours without verifying it", folder)
        sign_tune_state(folder)
        return
    where = f" --runs-dir {storage}" if storage is not None else ""
    verify_tune_state(folder, f"ranksearch sweep {space_file} --name {name}{where} --resume --trust-state")


def _run_oneshot(
    space: SearchSpace, folder: Path, manifest: Manifest, name: str, started_ray: bool, t0: float, uri: str
) -> SweepResult:
    """``search: {mode: one-shot}``: the one-shot pipeline in place of Tune; the same folder, parent run, result."""
    import ray

    from ranksearch.oneshot.pipeline import run_oneshot
    from ranksearch.sweep.signing import sign_tune_state

    sign_tune_state(folder)  # sweep.json as saved just now: a killed driver's folder still resumes
    status = "failed"
    try:
        result = run_oneshot(space, folder, manifest, uri)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        manifest.status = status
        manifest.save(folder)
        sign_tune_state(folder)
        if status != "interrupted":
            _end_parent(manifest, status, uri)
        if started_ray:
            ray.shutdown()
    rows = result.summary["rows"]
    best = rows[0] if rows else None
    return SweepResult(
        name, folder, rows, best, manifest.parent_run_id, redact(uri), manifest.experiment, time.time() - t0,
        space, oneshot=result.summary,
    )  # fmt: skip


def _runners() -> dict[str, Any]:
    from ranksearch.sweep.runners import RUNNERS

    return RUNNERS


def _recorded_url(given: str | None, recorded: str | None, option: str) -> str | None:
    """The URL a resumed sweep uses: the recorded one (its password masked in sweep.json); ``given`` only when it
    is the same URL (it supplies the password). A recorded URL without its password connects with libpq's
    ``PGPASSWORD`` / ``~/.pgpass`` (see ``study_storage.connectable``)."""
    from ranksearch.sweep.study_storage import connectable, remember

    if recorded is None:
        if given:
            log.warning("%s ignored on resume: this sweep was started without it", option)
        return None
    if given and remember(given) == recorded:
        return given
    if given:
        log.warning("%s ignored on resume; the sweep uses %s", option, recorded)
    return connectable(recorded)


def _start_manifest(
    space: SearchSpace, space_file: Path, folder: Path, name: str, uri: str, trials: int | None,
    study_storage: str | None = None,
) -> Manifest:  # fmt: skip
    """New sweep: copy the space, create the MLflow parent run, write sweep.json (URLs without passwords)."""
    from ranksearch.sweep.study_storage import remember

    # the space as searched (with any --set overrides), so --resume runs exactly the same space
    (folder / SPACE_COPY).write_text(space.text if space.text is not None else Path(space_file).read_text())
    experiment = space.spec.experiment or name
    artifacts = (folder / "mlartifacts").as_uri() if uri == default_tracking_uri(folder) else None
    s = space.spec
    params = {
        "sweep": name, "space_file": str(space_file), "trials": trials or s.trial_count, "concurrency": s.concurrency,
        "sampler": s.sampler.type, "sampler_seed": s.sampler.seed, "early_stopping": s.early_stopping.type,
        "objectives": ",".join(f"{o.metric}:{o.mode}" for o in s.objectives), "families": ",".join(space.families),
        "seeds": ",".join(map(str, s.seeds or [])), "resources": f"cpu={s.resources.cpu},gpu={s.resources.gpu},pack={s.resources.pack}",
    }  # fmt: skip
    if study_storage:
        params["study_storage"] = remember(study_storage)
    # a server that does not answer (yet) only delays tracking: the parent run is journalled (not for one-shot)
    parent = _parent_run_or_refuse(uri, experiment, name, params, artifacts, folder, not space.spec.one_shot)
    manifest = Manifest(
        name, str(space_file), remember(uri), experiment, parent, study_name="ranksearch", trials=params["trials"],
        study_storage=remember(study_storage) if study_storage else None,
    )  # fmt: skip
    manifest.save(folder)
    if parent is None:
        import uuid

        from ranksearch.sweep.mlflow_sweep import journal_parent_writes, parent_run_spec

        spec = {**parent_run_spec(experiment, name, params, artifacts), "key": uuid.uuid4().hex}
        writes = [("parent", spec), ("artifact", {"path": SPACE_COPY}), ("artifact", {"path": "sweep.json"})]
        manifest.parent_run_id = journal_parent_writes(folder, uri, None, writes)[0]  # the server may be back
        if manifest.parent_run_id:
            manifest.save(folder)
        return manifest
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_artifact(parent, str(folder / SPACE_COPY))
    client.log_artifact(parent, str(folder / "sweep.json"))
    return manifest


def _parent_run_or_refuse(
    uri: str, experiment: str, name: str, params: dict[str, Any], artifacts: str | None, folder: Path,
    may_buffer: bool,
) -> str | None:  # fmt: skip
    """The new sweep's parent run; a tracking URI MLflow cannot use is a one-line ``--tracking-uri`` error (the
    failed start then leaves nothing, see ``state.claim``), after one try instead of minutes of HTTP retries.

    A tracking server that does not answer (connection refused or timed out, 502/503/504) is no error when
    ``may_buffer``: None, and the caller journals the parent run's creation (``mlflow_buffer``)."""
    from ranksearch.sweep.mlflow_buffer import JOURNAL_FILE, _fail_fast, unreachable
    from ranksearch.sweep.mlflow_sweep import create_parent_run

    try:
        with _fail_fast():
            return create_parent_run(uri, experiment, name, params, artifacts)
    except Exception as e:  # MLflow raises its own classes, and requests/sqlalchemy ones, for a bad store
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if may_buffer and unreachable(uri, e):
            from ranksearch.tracking.credentials import redact_text

            log.warning(
                "MLflow at %s is not answering (%s): the sweep starts anyway; its parent run and every tracking "
                "write wait in %s and are delivered when the server answers (or later by: ranksearch sync %s)",
                redact(uri), redact_text(reason), folder / JOURNAL_FILE, folder,
            )  # fmt: skip
            return None
        raise ConfigError(
            [("--tracking-uri", f"{redact(uri)}: MLflow cannot log there ({reason})")]
        ) from None


def _recorded_trials(space: SearchSpace, manifest: Manifest, uri: str) -> int:
    """Trial count of a resumed sweep: sweep.json's, or (folders from before it recorded one) the parent run's."""
    if manifest.trials is not None:
        return manifest.trials
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=uri).get_run(manifest.parent_run_id)
        return int(run.data.params.get("trials", space.spec.trial_count))
    except Exception:
        return space.spec.trial_count


def _trainable(space: SearchSpace, folder: Path, runner: str, runner_options: dict[str, Any] | None) -> Any:
    from ray import tune

    from ranksearch.sweep.trainable import sweep_trainable

    fn = tune.with_parameters(
        sweep_trainable, space=space, trials_dir=str(folder / "trials"), runner=runner,
        runner_options=runner_options or {},
    )  # fmt: skip
    res = space.spec.resources
    if res.pack > 1:  # the pack hosts hold the CPUs/GPUs; a trial only relays (ranksearch.sweep.packed)
        from ranksearch.sweep.packed import TRIAL_RESOURCES

        return tune.with_resources(fn, TRIAL_RESOURCES)
    return tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})


def _new_tuner(
    space: SearchSpace, folder: Path, manifest: Manifest, trainable: Any, callbacks: list, total: int,
    warm_start: Path | None, study: Any = None,
) -> Any:  # fmt: skip
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune

    from ranksearch.sweep.search import build_scheduler, build_searcher, build_stopper

    if study is None:  # the default: optuna.journal in the sweep folder
        study = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    searcher = build_searcher(
        space, storage=study, study_name=manifest.study_name,
        tune_dir=str(folder / TUNE_DIR), warm_start=warm_start,
    )  # fmt: skip
    name_objectives(searcher._ot_study, space)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(space),
            num_samples=total,
            max_concurrent_trials=space.spec.concurrency,
            reuse_actors=REUSE_ACTORS,
            trial_dirname_creator=trial_dirname,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(folder),
            callbacks=callbacks,
            stop=build_stopper(space),
            verbose=0,
            # Tune keeps every checkpoint: its own pruning deletes old ones before its experiment snapshot catches
            # up, so a driver killed in between leaves the snapshot pointing at a deleted checkpoint (or Tune,
            # after --resume, failing to delete one that is already gone) and the trial errors instead of
            # resuming. Both were seen under load in tests/test_sweep_resume.py. sweep.checkpoints.CheckpointPruner
            # prunes instead (latest + best per trial), only what the newest snapshot no longer names.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=1),
        ),  # fmt: skip
    )


def _use_callbacks(tuner: Any, callbacks: list) -> None:
    """Give a restored Tuner this process's callbacks instead of the ones pickled with the experiment.

    ``Tuner.restore`` reuses the saved ``RunConfig``, callbacks included, so without this a ``--resume`` would
    show the live view (or not) as the first driver decided, and run a callback class as it was pickled. Ray
    offers no public way to replace them; the private attribute is checked so a Ray upgrade fails loudly.
    """
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if run_config is None or not hasattr(run_config, "callbacks"):
        raise RanksearchError(
            "Ray Tune's restored Tuner no longer exposes its run config; update ranksearch.sweep.tuner"
        )
    run_config.callbacks = callbacks


def _relocate_searcher(tuner: Any, folder: Path) -> None:
    """Make the restored searcher use this folder's Optuna journal, not the one its pickle names.

    Ray re-derives trial and checkpoint paths from the restore path, but restores the searcher as it was
    pickled; a copied or moved sweep folder must not write its original's study. Private attribute, checked.
    """
    searcher = getattr(
        getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "search_alg", None
    )
    if not hasattr(searcher, "relocate"):
        raise RanksearchError(
            "Ray Tune's restored Tuner no longer exposes its searcher; update ranksearch.sweep.tuner"
        )
    searcher.relocate(folder)


def name_objectives(study: Any, space: SearchSpace) -> None:
    """Name the study's objectives after the metrics, so optuna-dashboard says "val/hm", not "Objective 0"."""
    import warnings

    with warnings.catch_warnings():  # set_metric_names is marked experimental in Optuna 5
        warnings.simplefilter("ignore")
        study.set_metric_names([o.metric for o in space.spec.objectives])


def trial_dirname(trial: Any) -> str:
    from ranksearch.sweep.folder import safe_name

    return safe_name(trial.trial_id)


def _grid_trials(grid: Any) -> list:
    """The Tune trials behind a ResultGrid (for status and config), in creation order."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is None:
        raise RanksearchError(
            "Ray Tune's ResultGrid no longer exposes its trials; update ranksearch.sweep.tuner"
        )
    return list(trials)


def _reopen_parent(manifest: Manifest, uri: str, added: int) -> None:
    """--extend: the finished sweep's parent run is RUNNING again, with the count of trials added."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.update_run(manifest.parent_run_id, status="RUNNING")
    # --extend: the parent's "trials" param is immutable: the tag says how many were added since
    client.set_tag(manifest.parent_run_id, "ranksearch.extensions", str(manifest.extensions))
    before = int(client.get_run(manifest.parent_run_id).data.tags.get("ranksearch.extended_trials", 0))
    client.set_tag(manifest.parent_run_id, "ranksearch.extended_trials", str(before + added))


def _resume_parent(manifest: Manifest, folder: Path, uri: str) -> None:
    """--resume: the parent run is RUNNING again, with its resume count; journalled (the server may be away)."""
    from ranksearch.sweep.mlflow_sweep import journal_parent_writes

    writes = [("running", {}), ("tags", {"tags": {"ranksearch.resumes": str(manifest.resumes)}})]
    parent, _ = journal_parent_writes(folder, uri, manifest.parent_run_id, writes)
    manifest.parent_run_id = manifest.parent_run_id or parent


def _parent_in_mlflow(manifest: Manifest, folder: Path, uri: str) -> None:
    """--extend reads the parent run: a parent still buffered is delivered first, or the extension is refused."""
    if manifest.parent_run_id:
        return
    from ranksearch.sweep.mlflow_sweep import journal_parent_writes

    manifest.parent_run_id, pending = journal_parent_writes(folder, uri, None, [])
    if manifest.parent_run_id is None:
        raise ConfigError(
            [("--extend", f"the sweep's MLflow parent run is not in {redact(uri)} yet ({pending} writes wait in "
                          f"{folder}/mlflow.journal.jsonl): deliver them first with  ranksearch sync {folder}")]
        )  # fmt: skip


def _end_parent_journalled(manifest: Manifest, folder: Path, status: str, uri: str) -> int:
    """The parent run's status at the end, journalled after every other write; returns the writes still pending
    (the server did not answer: they wait in the journal for the next driver or ``ranksearch sync``)."""
    from ranksearch.sweep.mlflow_buffer import JOURNAL_FILE
    from ranksearch.sweep.mlflow_sweep import journal_parent_writes

    writes = [
        ("tags", {"tags": {"ranksearch.status": status}}),
        ("end", {"status": "FINISHED" if status == "finished" else "FAILED"}),
    ]
    parent, pending = journal_parent_writes(folder, uri, manifest.parent_run_id, writes)
    if parent and not manifest.parent_run_id:
        manifest.parent_run_id = parent
        manifest.save(folder)
    if pending:
        log.warning(
            "MLflow at %s did not take %d tracking writes: they are kept in %s; deliver them with  ranksearch "
            "sync %s  once the server answers (nothing is logged twice)",
            redact(uri), pending, folder / JOURNAL_FILE, folder,
        )  # fmt: skip
    return pending


def sync_tracking(sweep: str | Path, storage: Path | None, wait_s: float) -> tuple[int, int, str | None]:
    """Deliver the buffered MLflow writes of a sweep that no driver runs (``ranksearch sync``): (delivered, still
    pending, parent run id). Only a folder whose sweep.json this user's key signed: its journal names files to
    upload and a server to send them to.

    Raises:
        TrustError: the folder is not this user's; SweepBusy: a driver runs it (and delivers itself).
    """
    from ranksearch.report.data import find_sweep
    from ranksearch.sweep.lock import SweepLock
    from ranksearch.sweep.mlflow_buffer import PARENT, TrackingJournal
    from ranksearch.sweep.signing import TrustError, trusted_manifest
    from ranksearch.sweep.study_storage import connectable

    folder = find_sweep(sweep, storage)
    if not trusted_manifest(folder):
        raise TrustError(f"{folder} was not created by you (sweep.json is not signed by your ranksearch key): its "
                         "journal is not sent anywhere")  # fmt: skip
    with SweepLock(folder):
        manifest = Manifest.load(folder)
        uri = connectable(manifest.tracking_uri)
        journal = TrackingJournal(folder, uri, manifest.parent_run_id)
        try:
            journal.drain(wait_s)
            parent = journal._runs.get(PARENT) or manifest.parent_run_id
            if parent is None and not journal.pending:
                parent = journal.parent_run_id
        finally:
            journal.close()
        if parent and not manifest.parent_run_id:
            manifest.parent_run_id = parent
            manifest.save(folder)
        return journal.stats["delivered"], journal.pending, parent


def _end_parent(manifest: Manifest, status: str, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        client.set_tag(manifest.parent_run_id, "ranksearch.status", status)
        client.set_terminated(manifest.parent_run_id, status="FINISHED" if status == "finished" else "FAILED")
    except Exception as e:  # never hide the sweep's own outcome behind a tracking problem
        from ranksearch.tracking.credentials import redact_text

        log.warning("could not close the MLflow parent run: %s", redact_text(str(e)))
