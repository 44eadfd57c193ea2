"""The sweep folder and its ``sweep.json`` manifest.

Layout of ``./ranksearch-runs/sweeps/<name>/``::

    sweep.json       manifest: name, space file, parent MLflow run id, tracking URI, started, status, trials
                     (no absolute path into the folder: the default store is "sqlite:///mlflow.db", the
                     folder's own, so a copied or moved folder is independent of its original)
    space.yaml       a copy of the search-space file as it was when the sweep started
    optuna.journal   the Optuna study (optuna-dashboard optuna.journal), unless --storage names a database
    mlflow.db        MLflow tracking store (default; --tracking-uri / $MLFLOW_TRACKING_URI to use another)
    mlartifacts/     MLflow artifacts of the default store
    tune/            Ray Tune's experiment (what --resume restores)
    trials/<id>/     each trial's output folder (allocation.parquet, adapter.safetensors, plots)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ranksearch.errors import ConfigError

DEFAULT_ROOT = Path("ranksearch-runs") / "sweeps"
MANIFEST = "sweep.json"
# sweep.json's spelling of the folder's own store: a path relative to the folder (read back by Manifest.load)
IN_FOLDER_URI = "sqlite:///mlflow.db"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class Manifest:
    """What a sweep folder holds; enough to resume the sweep and find its results."""

    name: str
    space_file: str
    tracking_uri: str
    experiment: str
    parent_run_id: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None  # when the last driver stopped; None while one runs
    status: str = "running"  # running | interrupted | finished | failed
    resumes: int = 0
    study_name: str = "ranksearch"
    trials: int | None = None  # the sweep's trial count (a --trials override included); None in old folders
    # --extend: how often the finished sweep was extended, and the trials of the Tune experiments before the
    # current one (Tune's tune/ state holds only the current one; ``trials`` counts them too)
    extensions: int = 0
    earlier_trials: list[str] = field(default_factory=list)
    # the Optuna study's database URL (``--storage postgresql://...``), password masked; None: optuna.journal
    study_storage: str | None = None

    def save(self, folder: Path) -> None:
        data = asdict(self)
        if data["tracking_uri"] == default_tracking_uri(folder):  # relative: a copied folder uses its own
            data["tracking_uri"] = IN_FOLDER_URI
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, folder / MANIFEST)  # atomic: a killed driver never leaves half a manifest
        from ranksearch.sweep.signing import sign_manifest

        sign_manifest(folder)  # marks the folder as this user's: its tracking URI may be contacted

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        data = json.loads((folder / MANIFEST).read_text())
        if data.get("tracking_uri") == IN_FOLDER_URI:
            data["tracking_uri"] = default_tracking_uri(Path(folder).resolve())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def sweep_folder(name: str, storage: Path | None) -> Path:
    """``<storage or ./ranksearch-runs/sweeps>/<name>`` (absolute); the name must be a plain folder name."""
    if not _NAME.match(name):
        raise ConfigError([("--name", f"{name!r}: use letters, digits, '.', '_' and '-' (at most 100)")])
    return ((storage or DEFAULT_ROOT) / name).resolve()


def prepare_folder(folder: Path, resume: bool, unstarted: bool = False) -> None:
    """Check the folder fits the request: new sweep -> must not exist, be empty, or hold a start that failed
    before its first trial (``state.unstarted``); resume -> must hold a started sweep.

    ``unstarted``: ``state.unstarted``. Nothing is read here: ``state.check_resumable`` reads the state
    once the lock is held.
    """
    has_manifest = (folder / MANIFEST).is_file()
    if resume:
        # tune/: an ordinary sweep's experiment; supernet/: a one-shot search's first phase (ranksearch.oneshot)
        if not has_manifest or not ((folder / "tune").is_dir() or (folder / "supernet").is_dir()):
            hint = "; start it again without --resume (the folder is reused)" if unstarted else ""
            raise ConfigError(
                [("--resume", f"{folder} holds no sweep to resume (no {MANIFEST} or tune/ folder){hint}")]
            )
        if unstarted:
            raise ConfigError(
                [("--resume", f"{folder} holds a start that failed before its first trial: run the same "
                              "command without --resume (the folder is reused)")]
            )  # fmt: skip
        return
    if folder.exists() and any(folder.iterdir()) and not unstarted:
        raise ConfigError(
            [
                (
                    "--name",
                    f"sweep folder {folder} already exists: pass --resume to continue it, or another --name",
                )
            ]
        )
    folder.mkdir(parents=True, exist_ok=True)


def finished_manifest(folder: Path) -> Manifest:
    """The manifest of the finished sweep in ``folder`` (what ``--extend`` continues); one-line error otherwise."""
    if not (folder / MANIFEST).is_file() or not (folder / "tune").is_dir():
        raise ConfigError(
            [("--extend", f"{folder} holds no sweep to extend (no {MANIFEST} or tune/ folder)")]
        )
    manifest = Manifest.load(folder)
    if manifest.status != "finished":
        hint = "; continue it with --resume first" if manifest.status in ("interrupted", "running") else ""
        raise ConfigError(
            [("--extend", f"{folder} is not a finished sweep (status {manifest.status}){hint}")]
        )
    return manifest


def safe_name(text: str, limit: int = 100) -> str:
    """``text`` as one harmless path component / run name: letters, digits, '.', '_', '-' only.

    Everything else (``/``, ``..`` prefixes, NUL, spaces, non-ASCII) becomes ``_``, and a leading dot is dropped,
    so a name built from trial ids, families or user text can never address a file outside the sweep folder.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", str(text)).lstrip(".")[:limit]
    return cleaned or "_"


def default_tracking_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"
