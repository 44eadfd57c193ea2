"""MLflow logging of one trial (debug mode). In a sweep, the driver logs instead (one writer per backend).

Params are flattened with "/" keys (unset ones left out), metrics are buffered and sent with ``log_batch`` (one
call costs about as much as one ``log_metric`` on sqlite; bookkeeping values such as ``step`` are not metrics),
and tags are MLflow's own context tags (user, source file, git commit) plus package versions. Experiments are
created as model-training experiments, so MLflow 3's UI opens them on runs, not on GenAI traces.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = Path("ranksearch-runs")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a sqlite file under ./ranksearch-runs (MLflow 3's file store is off)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    DEFAULT_RUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_RUNS_DIR / 'mlflow.db').resolve()}"


# MLflow 3's UI opens an experiment as "Machine learning" (runs, metrics, models) or "GenAI apps & agents"
# (traces, evaluations) by this experiment tag; without it the UI guesses, and guessed GenAI for ours.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# Values a trial reports that are positions, not measurements: logged as metrics they clutter the compare view
# (its parallel coordinates default to the first metric: "step"). MLflow's own step axis carries the position.
BOOKKEEPING = frozenset({"step", "eval_step", "replicate", "replicates", "total_steps", "is_final"})


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created as a model-training experiment if it does not exist; an existing
    experiment without a kind gets it (one chosen in the UI is kept)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train/lr": 1e-3}; lists become comma-joined strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, list | tuple):
            out[key] = ",".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def param_values(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them (strings of at most 6000 characters); unset ones (None, empty) left out
    rather than stored as the string "None"."""
    return {k: str(v)[:6000] for k, v in params.items() if v is not None and v != ""}


def metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The measurements among a report's values: finite numbers, bookkeeping keys left out."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in BOOKKEEPING
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def _git(folder: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """A remote URL with any user:password@ part removed (it must never reach a run's tags)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def git_info(folder: Path) -> dict[str, str]:
    """commit, branch, repoURL and dirty ("true"/"false") of the git checkout holding ``folder``; {} if none."""
    if not _git(folder, "rev-parse", "--show-toplevel"):
        return {}
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return {}
    info = {"commit": commit}
    branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        info["branch"] = branch
    remote = _git(folder, "remote", "get-url", "origin")
    if remote:
        info["repoURL"] = _without_credentials(remote)
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["dirty"] = str(bool(status)).lower()
    return info


def reproducibility_tags(seed: int | None = None, source: str | Path | None = None) -> dict[str, str]:
    """MLflow's own context tags, so its UI shows who ran what from which commit, plus package versions.

    ``mlflow.source.name`` is ``source`` (the config or space file the run comes from) and
    ``mlflow.source.git.*`` the checkout holding it, else ranksearch's own checkout (``ranksearch.git_dirty``:
    uncommitted changes there). ranksearch's commit is kept as ``ranksearch.git.commit`` when it runs from a
    checkout, since the source file's repository may be another one.
    """
    import getpass
    from importlib.metadata import PackageNotFoundError, version

    tags: dict[str, str] = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "ranksearch"}
    with contextlib.suppress(KeyError, OSError):  # no passwd entry (some containers)
        tags["mlflow.user"] = getpass.getuser()
    here = Path(__file__).resolve().parents[2]
    own = git_info(here) if (here / ".git").exists() else {}
    if own:
        tags["ranksearch.git.commit"] = own["commit"]
    info = own
    if source is not None:
        path = Path(source).expanduser()
        tags["mlflow.source.name"] = str(path.resolve() if path.exists() else path)
        info = (git_info(path.resolve().parent) if path.exists() else {}) or own
    for key in ("commit", "branch", "repoURL"):
        if key in info:
            tags[f"mlflow.source.git.{key}"] = info[key]
    if "dirty" in info:
        tags["ranksearch.git_dirty"] = info["dirty"]
    for pkg in ("ranksearch", "torch", "open_clip_torch", "ray", "optuna", "mlflow"):
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version.{pkg}"] = version(pkg)
    if seed is not None:
        tags["seed"] = str(seed)
    return tags


class MlflowTracker:
    """One MLflow run for one trial, through ``MlflowClient`` (no global active-run state).

    ``source``: the config file the trial comes from (``mlflow.source.name`` and its git commit).
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        source: str | Path | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = experiment_id(self.client, experiment)
        self.run_name, self.parent_run_id, self.source = run_name, parent_run_id, source
        self.run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        all_tags = dict(tags)
        if self.source is not None:  # the file this run comes from, not the generic default
            all_tags.update({k: v for k, v in reproducibility_tags(source=self.source).items()
                             if k.startswith("mlflow.source.") or k == "ranksearch.git_dirty"})  # fmt: skip
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in param_values(flatten(params)).items()]
        self.client.log_batch(self.run_id, params=items)  # log_batch splits into MLflow's per-request limits

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in metric_values(metrics).items()]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    @property
    def run_url_hint(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}  (experiment id {self.experiment_id}, run {self.run_id})"
