"""What ``ranksearch export`` is pointed at: a trial folder, a sweep folder (best or named trial), or an MLflow
run id (its artifacts are downloaded; a sweep's parent run means its best trial's run)."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from ranksearch.errors import RanksearchError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_trial_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "adapter.safetensors").is_file()


def trial_source(source: str, trial: str | None, tracking_uri: str | None, scratch: Path) -> tuple[Path, str]:
    """(trial folder to export, a line saying what was chosen). ``scratch`` receives downloaded artifacts.

    Raises:
        RanksearchError: nothing exportable at ``source`` (the message says what was tried).
    """
    path = Path(source).expanduser()
    if path.is_dir() and (path / "sweep.json").is_file():
        return _from_sweep(path, trial)
    if path.is_dir():
        if trial:
            raise RanksearchError("--trial applies to a sweep folder; this is a trial folder")
        if not is_trial_folder(path):
            raise RanksearchError(f"{path} is neither a finished trial folder nor a sweep folder")
        return path, f"trial folder {path}"
    if RUN_ID.match(source):
        return _from_run(source, tracking_uri, scratch)
    raise RanksearchError(f"{source}: no such folder, and not an MLflow run id (32 hex characters)")


def _from_sweep(folder: Path, trial: str | None) -> tuple[Path, str]:
    from ranksearch.report.data import best_row, load_sweep, trial_folder

    data = load_sweep(folder, history=False)
    row = best_row(data, trial)
    if row is None:
        raise RanksearchError(f"sweep {folder} has no completed trial yet (see: ranksearch status {folder})")
    tid = str(row["trial_id"])
    if row.get("status") != "completed":
        raise RanksearchError(
            f"trial {tid} did not complete ({row.get('status')}): it has no adapter to export"
        )
    found = trial_folder(data.folder, tid)
    if found is None:
        raise RanksearchError(
            f"trial {tid} has no adapter.safetensors under {data.folder / 'trials' / tid} (export its MLflow "
            "run id instead if the trial ran on another machine)"
        )
    what = "named" if trial else f"best by {data.first.metric}"
    return found, f"trial {tid} ({what}) of sweep {data.manifest.name}"


def _candidate_uris(explicit: str | None) -> list[str]:
    """Tracking stores to look for a run in: --tracking-uri, $MLFLOW_TRACKING_URI, local sweeps, the default."""
    if explicit:
        return [explicit]
    uris = [os.environ["MLFLOW_TRACKING_URI"]] if os.environ.get("MLFLOW_TRACKING_URI") else []
    from ranksearch.sweep.folder import DEFAULT_ROOT, Manifest
    from ranksearch.sweep.signing import trusted_manifest

    for manifest in sorted(DEFAULT_ROOT.glob("*/sweep.json")):
        if not trusted_manifest(manifest.parent):  # a folder is data: its sweep.json may name any server
            continue
        try:
            uris.append(Manifest.load(manifest.parent).tracking_uri)
        except (OSError, ValueError, TypeError):
            continue
    uris.append(f"sqlite:///{Path('ranksearch-runs/mlflow.db').resolve()}")
    return list(dict.fromkeys(uris))


def _holds_run(uri: str, run_id: str) -> bool:
    """Whether a store knows the run: sqlite files are asked directly (no MLflow import, no migration)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                return con.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is not None
        except sqlite3.Error:
            return False
    return True  # a server or other database: let MLflow answer


def _from_run(run_id: str, tracking_uri: str | None, scratch: Path) -> tuple[Path, str]:
    uri = next((u for u in _candidate_uris(tracking_uri) if _holds_run(u, run_id)), None)
    if uri is None:
        raise RanksearchError(
            f"MLflow run {run_id} not found in {tracking_uri or 'the local sweeps or $MLFLOW_TRACKING_URI'}; "
            "pass --tracking-uri"
        )
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        what = f"MLflow run {run_id}"
        if run.data.tags.get("ranksearch.kind") == "sweep":  # a sweep's parent run: its best trial's run
            best = run.data.tags.get("best.run_id")
            if not best:
                raise RanksearchError(f"sweep run {run_id} records no best trial run (tag best.run_id)")
            what = f"best trial run {best} of sweep run {run_id}"
            run_id = best
        local = Path(download_artifacts(run_id=run_id, dst_path=str(scratch), tracking_uri=uri))
    except MlflowException as e:
        raise RanksearchError(
            f"could not fetch the artifacts of run {run_id} from {uri}: {e.message}"
        ) from None
    found = sorted(p.parent for p in local.rglob("adapter.safetensors") if is_trial_folder(p.parent))
    if not found:
        raise RanksearchError(f"run {run_id} has no config.yaml + adapter.safetensors artifacts to export")
    return found[-1], what
