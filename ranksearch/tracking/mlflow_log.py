"""MLflow logging of one trial (debug mode). In a sweep, the driver logs instead (one writer per backend).

Params are flattened with "/" keys, metrics are buffered and sent with ``log_batch`` (one call costs about as
much as one ``log_metric`` on sqlite), and tags record what is needed to reproduce the run.
"""

from __future__ import annotations

import contextlib
import logging
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


def reproducibility_tags(seed: int | None = None) -> dict[str, str]:
    """git sha (and dirty flag) of the ranksearch checkout, package versions, seed."""
    from importlib.metadata import PackageNotFoundError, version

    tags: dict[str, str] = {}
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0:
            tags["git.sha"] = sha.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=5
            )
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("ranksearch", "torch", "open_clip_torch", "ray", "optuna", "mlflow"):
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version.{pkg}"] = version(pkg)
    if seed is not None:
        tags["seed"] = str(seed)
    return tags


class MlflowTracker:
    """One MLflow run for one trial, through ``MlflowClient`` (no global active-run state)."""

    def __init__(
        self, uri: str | None, experiment: str, run_name: str | None = None, parent_run_id: str | None = None
    ):
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_name, self.parent_run_id = run_name, parent_run_id
        self.run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        all_tags = dict(tags)
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow: at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v == v]  # drop NaN
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

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
