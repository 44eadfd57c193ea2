"""A copied or moved sweep folder: point its own MLflow store at its own artifacts.

``sweep.json`` keeps the folder's store as a relative URI and Ray re-derives its trial paths from the restore
path, but MLflow's sqlite store records each experiment's and run's artifact location as an absolute
``file://`` URI. Resuming a ``cp -a`` copy would log the copy's artifacts into the original's ``mlartifacts/``.
MLflow has no API to move an experiment's artifact root, so the store's three location columns are rewritten
from the old folder's ``mlartifacts`` to this folder's (only for the folder's own ``mlflow.db``, only rows
under the old root).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

# MLflow 3's tables and columns that hold an artifact location (experiments, runs, logged models)
_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def relocate_store(folder: Path, parent_run_id: str) -> int:
    """Rewrite artifact locations under another folder's ``mlartifacts`` to ``folder``'s; returns rows changed.

    A no-op unless ``folder/mlflow.db`` exists and its parent run's experiment stores artifacts in an
    ``mlartifacts`` folder that is not ``folder``'s (the folder was copied or moved).
    """
    db = Path(folder) / "mlflow.db"
    if not db.is_file():
        return 0
    new_root = (Path(folder).resolve() / "mlartifacts").as_uri()
    conn = sqlite3.connect(db)
    with contextlib.closing(conn), conn:  # one transaction, committed on success
        row = conn.execute(
            "SELECT e.artifact_location FROM experiments e JOIN runs r ON r.experiment_id = e.experiment_id "
            "WHERE r.run_uuid = ?",
            (parent_run_id,),
        ).fetchone()
        old_root = row[0] if row else None
        if not old_root or old_root == new_root or not old_root.rstrip("/").endswith("/mlartifacts"):
            return 0
        changed = 0
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in _COLUMNS:
            if table not in tables:
                continue
            rows = conn.execute(f"SELECT rowid, {column} FROM {table}").fetchall()  # noqa: S608 (fixed names)
            for rowid, value in rows:
                if isinstance(value, str) and (value == old_root or value.startswith(old_root + "/")):
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?",  # noqa: S608 (fixed names)
                        (new_root + value[len(old_root) :], rowid),
                    )
                    changed += 1
    log.info("sweep folder moved or copied: %d MLflow artifact locations now point into %s", changed, folder)
    return changed
