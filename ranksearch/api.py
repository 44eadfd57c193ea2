"""ranksearch's Python API: what the CLI does, as functions, for notebooks and scripts.

    import ranksearch

    result = ranksearch.trial("search_spaces/quickstart.yaml")           # one trial, in this process
    sweep = ranksearch.sweep("search_spaces/quickstart.yaml", gpus=8)    # a Ray Tune sweep
    sweep = ranksearch.load_sweep("ranksearch-runs/sweeps/quickstart")   # a sweep folder, read back
    sweep.trials                # one row per trial (a pandas DataFrame)
    sweep.best_config           # the best trial's full config, ready for ranksearch.trial
    sweep.report()              # the HTML dashboard
    ranksearch.export(sweep, "exported/")                                 # the best trial as plain open_clip

A config is a dict, a YAML path (a trial config or a search space: each parameter's default, or ``params``), or
the validated object (``TrialConfig``, ``SearchSpace``). Errors are the CLI's: ``ConfigError`` lists every
problem with its field path. This module imports nothing heavy until a function runs, so ``import ranksearch``
stays instant.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranksearch.errors import ConfigError, RanksearchError

if TYPE_CHECKING:  # for type checkers only: importing these costs seconds (torch, pandas, optuna)
    import optuna
    import pandas as pd

    from ranksearch.config.schema import TrialConfig
    from ranksearch.space.space import SearchSpace

DEFAULT_TRIALS_DIR = Path("ranksearch-runs") / "trials"


# --------------------------------------------------------------------------------------------- configs
def load_config(
    config: Any, *, params: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrialConfig:
    """A validated trial config from a dict, a YAML path, a ``TrialConfig`` or a ``SearchSpace``.

    Args:
        config: a trial config or a search space (mapping, YAML file, or the validated object). A search space
            gives the trial of ``params`` (each parameter's default where missing).
        params: search-space parameter values by name (``{"train.lr": 1e-3, "adapter.r": 4}``).
        overrides: ``section.field=value`` strings applied last, as ``--set`` does.

    Raises:
        ConfigError: every problem at once, with field paths.
    """
    from ranksearch.config.load import apply_overrides, load_trial_config, load_yaml, validate_trial_config
    from ranksearch.config.schema import TrialConfig
    from ranksearch.space import SearchSpace, load_space, looks_like_space, validate_space

    if isinstance(config, TrialConfig):
        if params:
            raise ConfigError([("params", "a trial config has no search parameters; use overrides")])
        if not overrides:
            return config
        return validate_trial_config(apply_overrides(config.model_dump(mode="json"), overrides))
    if isinstance(config, SearchSpace):
        return config.trial_config(params, overrides)
    if isinstance(config, dict):
        if looks_like_space(config):
            return validate_space(config, source="dict").trial_config(params, overrides)
        if params:
            raise ConfigError([("params", "a trial config has no search parameters; use overrides")])
        return validate_trial_config(apply_overrides(config, overrides), source="dict")
    if isinstance(config, str | Path):
        path = Path(config).expanduser()
        if looks_like_space(load_yaml(path)):
            return load_space(path).trial_config(params, overrides)
        if params:
            raise ConfigError([("params", f"{path} is a trial config, not a search space; use overrides")])
        return load_trial_config(path, overrides)
    raise ConfigError(
        [
            (
                "config",
                f"expected a dict, a YAML path, a TrialConfig or a SearchSpace, got {type(config).__name__}",
            )
        ]
    )


def load_search_space(space: Any, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """A validated ``SearchSpace`` from a dict, a YAML path or a ``SearchSpace`` (``overrides`` set ``base``)."""
    import yaml

    from ranksearch.config.load import apply_overrides
    from ranksearch.space import SearchSpace, load_space, validate_space

    if isinstance(space, str | Path):
        return load_space(Path(space).expanduser(), overrides)
    if isinstance(space, SearchSpace):
        if not overrides:
            return space
        data = (
            yaml.safe_load(space.text)
            if space.text
            else space.spec.model_dump(mode="json", exclude_none=True)
        )
        space, source = data, space.source
    elif isinstance(space, dict):
        source = "dict"
    else:
        raise ConfigError(
            [("space", f"expected a dict, a YAML path or a SearchSpace, got {type(space).__name__}")]
        )
    from ranksearch.space.load import searched_by_overrides

    if searched_by_overrides(space, overrides):  # --set on a searched field would be silently ignored
        raise ConfigError(searched_by_overrides(space, overrides), source)
    data = {**space, "base": apply_overrides(space.get("base") or {}, overrides)} if overrides else space
    # the sweep folder keeps this text as its record of what was searched (and --resume reads it back)
    return validate_space(data, source=source, text=yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------------------------------------------------------------- trials
@dataclass
class TrialOutcome:
    """What ``trial`` returns.

    Attributes:
        metrics: final metrics (mean over seeds, with ``<key>_std``, when several seeds ran).
        folder: the trial's output folder (config.yaml, metrics.json, allocation.parquet, adapter, plots).
        config: the trial config that ran.
        runs: (tracking URI, MLflow run id) per seed, when tracked.
        per_seed: each seed's final metrics.
    """

    metrics: dict[str, float]
    folder: Path
    config: Any
    runs: list[tuple[str, str]] = field(default_factory=list)
    per_seed: list[dict[str, float]] = field(default_factory=list)


def debug_budget(config: TrialConfig) -> TrialConfig:
    """The same trial, shrunk to seconds: few shots, few steps, small test set (``--debug``)."""
    from ranksearch.config.load import validate_trial_config

    d = config.model_dump(mode="json")
    d["data"]["shots"] = min(d["data"]["shots"], 2)
    d["data"]["test_per_class"] = min(d["data"]["test_per_class"], 5)
    d["train"]["iterations"] = min(config.train.total_steps(config.data.shots), 20)
    d["eval"]["evals"] = min(d["eval"]["evals"], 2)
    return validate_trial_config(d, source="--debug")


def fresh_dir(root: Path, name: str) -> Path:
    """A new folder ``root/name`` (suffixed if taken): never write into a user's earlier results."""
    path, i = Path(root) / name, 1
    while path.exists():
        i += 1
        path = Path(root) / f"{name}-{i}"
    path.mkdir(parents=True)
    return path


def trial(
    config: Any,
    *,
    params: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    out_dir: str | Path = DEFAULT_TRIALS_DIR,
    track: bool = True,
    tracking_uri: str | None = None,
    debug: bool = False,
    progress: bool = True,
    source: str | Path | None = None,
) -> TrialOutcome:
    """Run one trial in this process, without Ray: the sweep's code path (``ranksearch trial``).

    Args:
        config: trial config or search space (see ``load_config``).
        params, overrides: see ``load_config``.
        seeds: run once per seed and report mean ± std (default: the config's seed, once).
        out_dir: parent of the trial's new output folder (never an existing one).
        track: log the run(s) to MLflow (if the config's ``tracking.enabled``).
        tracking_uri: MLflow store (default: the config's, else ``$MLFLOW_TRACKING_URI`` or a sqlite file).
        debug: shrink the trial to a few steps (``--debug``).
        progress: show a progress bar.
        source: the file the config came from, recorded as the MLflow run's source (default: ``config``
            when it is a path).

    Raises:
        ConfigError: a bad config. RanksearchError: the trial ran and failed (diverged, over budget).
    """
    from ranksearch.seeds import aggregate
    from ranksearch.trial import run_trial

    if source is None and isinstance(config, str | Path):
        source = Path(config).expanduser()
    cfg = load_config(config, params=params, overrides=overrides)
    if debug:
        cfg = debug_budget(cfg)
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError([("seeds", f"expected distinct seeds, got {seeds!r}")])
    seed_list = list(seeds) if seeds else [cfg.seed]
    folder = fresh_dir(Path(out_dir), datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{cfg.adapter.family}")
    outcome = TrialOutcome({}, folder, cfg)
    for seed in seed_list:
        run_config = cfg.model_copy(update={"seed": seed}) if seeds else cfg
        tracker = None
        if track and cfg.tracking.enabled:
            from ranksearch.quiet import quiet_libraries
            from ranksearch.tracking.mlflow_log import MlflowTracker

            run_name = cfg.tracking.run_name or f"trial-{cfg.adapter.family}"
            with quiet_libraries(debug):  # MLflow's table-migration lines on a new store
                tracker = MlflowTracker(
                    tracking_uri or cfg.tracking.uri, cfg.tracking.experiment,
                    run_name=f"{run_name}-seed{seed}" if seeds else run_name, source=source,
                )  # fmt: skip
        seed_dir = folder / f"seed-{seed}" if seeds else folder
        result = run_trial(run_config, output_dir=seed_dir, tracker=tracker, progress=progress)
        if tracker is not None and tracker.run_id:  # `ranksearch export` links its model to this run
            from ranksearch.tracking.mlflow_model import TRIAL_RUN_FILE

            (seed_dir / TRIAL_RUN_FILE).write_text(
                json.dumps({"tracking_uri": tracker.uri, "run_id": tracker.run_id})
            )
            outcome.runs.append((tracker.uri, tracker.run_id))
        if result.status != "completed":
            raise RanksearchError(f"trial failed (seed {seed}): {result.error} (outputs in {seed_dir})")
        outcome.per_seed.append(result.metrics)
    outcome.metrics = aggregate(outcome.per_seed) if seeds else outcome.per_seed[0]
    if seeds:
        (folder / "seeds.json").write_text(
            json.dumps({"seeds": seed_list, "mean_std": outcome.metrics}, indent=2)
        )
    return outcome


# ---------------------------------------------------------------------------------------------- sweeps
class Sweep:
    """A sweep folder, read back: its trials, study, best trial and report.

    Attributes:
        folder: the sweep folder. name: the sweep's name. status: running | interrupted | finished | failed.
        space: the recorded search space. objectives: [(metric, mode)].
    """

    def __init__(self, folder: str | Path, storage: str | Path | None = None):
        from ranksearch.report.data import find_sweep, open_sweep

        self.folder = find_sweep(folder, Path(storage) if storage else None)
        self._data = open_sweep(self.folder)
        self._loaded = False

    def __repr__(self) -> str:
        return f"Sweep({self.name!r}, {self.status}, {len(self.trials)} trials, folder={str(self.folder)!r})"

    def _repr_html_(self) -> str:  # a notebook shows the summary and the top of the leaderboard
        import html

        best = self.best
        head = (
            f"<b>sweep {html.escape(self.name)}</b> ({html.escape(self.status)}): {len(self.trials)} trials"
            + (f", best {html.escape(self._data.first.metric)} = {best[self._data.first.metric]:.4g} "
               f"(trial {html.escape(str(best['trial_id']))})" if best else "")
        )  # fmt: skip
        return f"<p>{head}</p>" + self.leaderboard().head(10).to_html(index=False, float_format="%.4g")

    @property
    def data(self) -> Any:
        """The loaded ``ranksearch.report.data.SweepData`` (trials, per-report history), read on first use."""
        if not self._loaded:
            from ranksearch.report.data import load_sweep as _load

            _load(self._data)
            self._loaded = True
        return self._data

    def refresh(self) -> Sweep:
        """Read the folder again (a sweep that is still running has written more)."""
        from ranksearch.report.data import open_sweep

        self._data, self._loaded = open_sweep(self.folder), False
        return self

    @property
    def name(self) -> str:
        return str(self._data.manifest.name)

    @property
    def status(self) -> str:
        return str(self._data.manifest.status)

    @property
    def space(self) -> Any:
        return self._data.space

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o.metric, o.mode) for o in self._data.objectives]

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: trial_id, status, family, ``param:<name>`` columns, final metrics, best report."""
        return self.data.trials

    @property
    def history(self) -> pd.DataFrame:
        """Every validation report of every trial (trial_id, report, metrics): learning curves."""
        return self.data.history

    def leaderboard(self) -> pd.DataFrame:
        """Trials with a value of the first objective, best first (completed ones first), as the report ranks."""
        return self.data.ranked().reset_index(drop=True)

    @property
    def best(self) -> dict[str, Any] | None:
        """The sweep's best trial (completed, first objective's final value: what ``ranksearch best`` picks)."""
        from ranksearch.report.data import best_row

        return best_row(self.data)

    def params(self, trial_id: str | None = None) -> dict[str, Any]:
        """The search parameters of a trial (default: the best)."""
        from ranksearch.report.data import trial_params

        return trial_params(self.folder, trial_id or self._best_id())

    def config(self, trial_id: str | None = None) -> TrialConfig:
        """The full trial config of a trial (default: the best), ready for ``ranksearch.trial``."""
        from ranksearch.space import load_space

        return load_space(self.folder / "space.yaml").trial_config(self.params(trial_id))

    @property
    def best_config(self) -> TrialConfig:
        return self.config()

    @property
    def study(self) -> optuna.Study:
        """The sweep's Optuna study (from optuna.journal), e.g. for ``optuna.visualization``."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal = self.folder / "optuna.journal"
        if not journal.is_file():
            raise RanksearchError(f"{self.folder} has no optuna.journal")
        storage = JournalStorage(JournalFileBackend(str(journal)))
        return optuna.load_study(study_name=self._data.manifest.study_name, storage=storage)

    def status_summary(self) -> dict[str, Any]:
        """Counts by state, best so far, elapsed time and ETA (``ranksearch status``)."""
        from ranksearch.report.data import status_summary

        return status_summary(self.data)

    def report(self, out: str | Path | None = None, **options: Any) -> Path:
        """Write the HTML dashboard (default ``<folder>/report.html``) and return its path; ``options`` as
        ``ranksearch.report.html.build_report`` takes them (``top``, ``mlflow_url``, ...)."""
        from ranksearch.report.html import build_report

        return build_report(self.folder, Path(out) if out else None, **options).path

    def _best_id(self) -> str:
        best = self.best
        if best is None:
            raise RanksearchError(f"sweep {self.folder} has no completed trial yet")
        return str(best["trial_id"])


def load_sweep(folder: str | Path, storage: str | Path | None = None) -> Sweep:
    """Read a sweep folder (or a sweep name under ``storage``, default ./ranksearch-runs/sweeps)."""
    return Sweep(folder, storage)


def sweep(
    space: Any,
    *,
    gpus: int | None = None,
    address: str | None = None,
    trials: int | None = None,
    name: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    warm_start: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    live: bool | None = False,
    debug: bool = False,
    runner: str = "trial",
    runner_options: dict[str, Any] | None = None,
    ray_init: dict[str, Any] | None = None,
    trust_state: bool = False,
) -> Sweep:
    """Run (or resume) a sweep: Ray Tune trials sampled by Optuna, early-stopped by ASHA, logged to MLflow
    (``ranksearch sweep``). Blocks until the sweep ends; returns it read back (``load_sweep``).

    Args:
        space: the search space (dict, YAML path or ``SearchSpace``).
        gpus: logical GPUs of a local Ray (default: detected). address: join this Ray cluster instead.
        trials, name, resume, extend, tracking_uri, storage, warm_start: as the CLI options of the same names
            (``extend=N``: N more trials for the finished sweep ``name``).
        overrides: ``section.field=value`` fixed for every trial (``--set``).
        live: the live terminal table (default off: a notebook cell is not a terminal).
        debug: show the libraries' start-up output.
        runner, runner_options, ray_init: see ``ranksearch.sweep.tuner.run_sweep``.
        trust_state: with ``resume``, accept Tune state your key did not sign (``--trust-state``).
    """
    from ranksearch.sweep.tuner import run_sweep

    target: Any = space
    if not isinstance(space, str | Path) or overrides:
        target = load_search_space(space, overrides)
    result = run_sweep(
        target, gpus=gpus, address=address, trials=trials, name=name, resume=resume, extend=extend,
        tracking_uri=tracking_uri, storage=Path(storage) if storage else None,
        warm_start=Path(warm_start) if warm_start else None,
        runner=runner, runner_options=runner_options, live=live, ray_init=ray_init, debug=debug,
        trust_state=trust_state,
    )  # fmt: skip
    return Sweep(result.folder)


# ---------------------------------------------------------------------------------------------- export
def export(
    source: Any,
    out_dir: str | Path,
    *,
    trial: str | None = None,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    register: str | None = None,
    alias: str = "champion",
    allocation: int | None = None,
) -> dict[str, Any]:
    """Merge a trial's adapter into a plain open_clip model folder (``ranksearch export``).

    Args:
        source: a trial folder, a sweep (folder, name or ``Sweep``: its best trial, or ``trial``), a
            ``TrialOutcome``, or an MLflow run id.
        out_dir: a new folder (an export never overwrites).
        trial: with a sweep, this trial instead of the best.
        tracking_uri: with a run id, the MLflow store to look in.
        mlflow: log the export as an MLflow model of the trial's run (when its run is known).
        register: also register it in the MLflow model registry under this name, ``alias`` pointing at it.
        allocation: with a one-shot sweep, export its evaluation number ``allocation`` (any scored allocation, the
            supernet merged with that mask; ``ranksearch.oneshot.export``); not logged to MLflow.

    Returns:
        The export manifest (``export.json``): ``load_with``, ``merged``, and ``mlflow`` (model URI, run,
        registered version) when logged.
    """
    import tempfile

    from ranksearch.export import export_trial, log_export, trial_run
    from ranksearch.report.data import find_sweep
    from ranksearch.report.locate import trial_source

    source = str(source.folder if isinstance(source, Sweep | TrialOutcome) else source)
    if not Path(source).expanduser().exists() and "/" not in source and not source.startswith("."):
        with contextlib.suppress(RanksearchError):  # a sweep name under ./ranksearch-runs/sweeps
            source = str(find_sweep(source))
    out_dir = Path(out_dir)
    if allocation is not None:
        from ranksearch.oneshot.export import export_sweep_allocation

        return export_sweep_allocation(Path(source), allocation, out_dir)
    with tempfile.TemporaryDirectory(prefix="rs-export-") as scratch:
        trial_dir, what = trial_source(source, trial, tracking_uri, Path(scratch))
        manifest = export_trial(trial_dir, out_dir)
        run = trial_run(source, trial_dir, tracking_uri) if (mlflow or register) else None
    manifest["exported"] = what
    if register and run is None:
        raise RanksearchError(f"register= needs the trial's MLflow run, and none is known for {what}")
    if run is not None:
        manifest["mlflow"] = log_export(out_dir, run, register, alias)
        (out_dir / "export.json").write_text(json.dumps(manifest, indent=2))
    return manifest
