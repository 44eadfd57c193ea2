"""Is a sweep folder's state whole and consistent? Checked before ``--resume`` touches anything.

A sweep folder holds days of GPU time. Ray Tune, asked to restore an experiment whose state file is cut short or
garbled, starts the experiment over; the driver's orphan clean-up would then see every earlier trial as an
orphan. A disk that fills mid-sweep leaves exactly such files. So ``--resume`` reads every state file first,
without running or unpickling anything, and refuses with one message that names the file, says what in it is
still readable and gives a command that recovers it:

- ``sweep.json``: JSON with the manifest's fields;
- ``optuna.journal``: one JSON record per line (Optuna's own reader silently stops at a cut line, and its next
  append would glue onto it);
- ``tune/``: ``tuner.pkl`` and the newest ``searcher-state-*.pkl`` are complete pickles (their opcodes are
  walked with ``pickletools``, nothing is loaded), the newest ``experiment_state-*.json`` is JSON with its trials;
- ``mlflow.journal.jsonl``: one JSON entry per line (a cut last line, never acknowledged, is allowed);
- ``trials.parquet``: a readable parquet file;
- and across them: no finished Optuna trial that Tune's snapshot should know but does not (a snapshot older than
  the study, e.g. restored from a backup).
"""

from __future__ import annotations

import contextlib
import glob
import json
import pickletools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ranksearch.sweep.jsonl import first_line, read_jsonl, refuse

# Optuna's journal operation codes (optuna.storages.journal._storage.JournalOperation), read without Optuna
_CREATE_TRIAL, _SET_TRIAL_STATE, _SET_TRIAL_USER_ATTR = 4, 6, 8
_FINISHED = {1, 2, 3}  # TrialState COMPLETE, PRUNED, FAIL
# a trial created this long before Tune's last snapshot must be in it (Tune snapshots every few seconds)
SNAPSHOT_SLACK_S = 30.0


def check_resumable(folder: Path) -> None:
    """Raise ``StateError`` unless every state file of the sweep ``folder`` is whole and they agree."""
    manifest = check_manifest(folder / "sweep.json")
    journal = folder / "optuna.journal"
    records = read_jsonl(journal, what="Optuna journal record")[0] if journal.exists() else []
    tune_dir = folder / "tune"
    # a one-shot search (ranksearch.oneshot) keeps its first phase in supernet/ and may have no Tune experiment
    snapshot = check_tune(tune_dir) if tune_dir.is_dir() or not (folder / "supernet").is_dir() else None
    mlflow_journal = folder / "mlflow.journal.jsonl"
    if mlflow_journal.exists():
        read_jsonl(mlflow_journal, what="MLflow journal entry", allow_cut_tail=True)
    check_parquet(folder / "trials.parquet")
    if snapshot is not None:  # trials of the Tune experiments before an --extend are in sweep.json, not tune/
        earlier = manifest.get("earlier_trials") if isinstance(manifest.get("earlier_trials"), list) else []
        check_agreement(journal, records, snapshot, {str(t) for t in earlier})


def check_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise refuse(
            path, f"not readable JSON ({first_line(e)})", "the other state files hold the sweep",
            f"restore {path.name} from a backup (or an MLflow parent run's artifact {path.name})",
        ) from None  # fmt: skip
    required = ("name", "space_file", "tracking_uri", "experiment", "parent_run_id")

    def whole(k: str) -> bool:  # parent_run_id is null while the parent run waits in mlflow.journal.jsonl
        return isinstance(data.get(k), str) or (k == "parent_run_id" and k in data and data[k] is None)

    bad = sorted(k for k in required if not isinstance(data, dict) or not whole(k))
    if bad:
        raise refuse(
            path, f"missing or not text: {', '.join(bad)}", "the other state files hold the sweep",
            f"restore {path.name} from a backup (or the MLflow parent run's artifact {path.name})",
        )  # fmt: skip
    return data


def check_tune(tune_dir: Path) -> dict[str, Any]:
    """The newest experiment snapshot of ``tune_dir`` (parsed JSON), after checking the pickles are whole."""
    check_pickle(tune_dir / "tuner.pkl", "the Tune experiment cannot be restored without it")
    searchers = sorted(glob.glob(str(tune_dir / "searcher-state-*.pkl")))
    if searchers:
        check_pickle(Path(searchers[-1]), "the Optuna study itself is in optuna.journal")
    states = sorted(glob.glob(str(tune_dir / "experiment_state-*.json")))
    if not states:
        raise refuse(
            tune_dir, "holds no experiment_state-*.json (Tune's snapshot of the trials)",
            "the Optuna study (optuna.journal) and the MLflow runs are intact",
            _warm_restart(tune_dir.parent),
        )  # fmt: skip
    path = Path(states[-1])
    try:
        snapshot = json.loads(path.read_bytes())
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("trial_data"), list):
            raise ValueError("no trial_data list")
        snapshot["_trial_ids"] = [_trial_id(entry) for entry in snapshot["trial_data"]]
    except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
        older = states[:-1]
        command = (
            f"move it aside ( mv {path} {path}.damaged ) to resume from the older snapshot {Path(older[-1]).name}"
            if older
            else _warm_restart(tune_dir.parent)
        )
        raise refuse(
            path, f"Tune's experiment snapshot is damaged ({first_line(e)})",
            "the Optuna study (optuna.journal) and the MLflow runs are intact", command,
        ) from None  # fmt: skip
    snapshot["_mtime"] = path.stat().st_mtime
    return snapshot


def _warm_restart(folder: Path) -> str:
    """The command that continues the search in a new sweep, seeded with this one's finished trials."""
    return (
        f"continue in a new sweep seeded with its finished trials:  ranksearch sweep {folder / 'space.yaml'} "
        f"--name {folder.name}-2 --runs-dir {folder.parent} --warm-start {folder}"
    )


def _trial_id(entry: Any) -> str:
    """The trial id of one ``trial_data`` entry: ``[trial json text, runtime metadata json text]``."""
    state = json.loads(entry[0]) if isinstance(entry, list | tuple) else entry
    if isinstance(state, str):
        state = json.loads(state)
    return str(state["trial_id"])


def check_pickle(path: Path, recoverable: str) -> None:
    """``path`` is one complete pickle: its opcodes are walked (nothing is built or run)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise ValueError("the file is empty")
        for _op, _arg, _pos in pickletools.genops(data):
            pass
        if not data.endswith(b"."):  # STOP: genops stops there; bytes after it mean a garbled file
            raise ValueError("bytes after the end of the pickle")
    except (OSError, ValueError, EOFError) as e:
        raise refuse(
            path, f"not a whole pickle ({first_line(e)})", recoverable,
            _warm_restart(path.parent.parent),
        ) from None  # fmt: skip


def check_parquet(path: Path) -> None:
    if not path.exists():
        return
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged footer
        raise refuse(
            path, f"not a readable parquet table ({first_line(e)})",
            "it is rebuilt from Tune's state as trials finish",
            f"rm {path}  and --resume again",
        ) from None  # fmt: skip


def check_agreement(
    journal: Path, records: list[dict[str, Any]], snapshot: dict[str, Any], earlier: set[str] = frozenset()
) -> None:
    """Every finished Optuna trial created well before Tune's snapshot is a trial that snapshot knows (or one of
    ``earlier``: the trials of the Tune experiments before an ``--extend``)."""
    tune_ids = set(snapshot.get("_trial_ids", [])) | set(earlier)
    trials: dict[int, dict[str, Any]] = {}  # Optuna trial id -> {"start", "finished", "ray"}
    for r in records:
        op, tid = r.get("op_code"), r.get("trial_id")
        if op == _CREATE_TRIAL:
            trials[len(trials)] = {"start": r.get("datetime_start"), "finished": False, "ray": None}
        elif op == _SET_TRIAL_STATE and tid in trials and r.get("state") in _FINISHED:
            trials[tid]["finished"] = True
        elif op == _SET_TRIAL_USER_ATTR and tid in trials:
            ray_id = (r.get("user_attr") or {}).get("ray_trial_id")
            if ray_id:
                trials[tid]["ray"] = ray_id
    unknown = [
        t["ray"] for t in trials.values()
        if t["finished"] and t["ray"] and t["ray"] not in tune_ids
        and _before(t["start"], snapshot["_mtime"] - SNAPSHOT_SLACK_S)
    ]  # fmt: skip
    if unknown:
        raise refuse(
            journal, f"{len(unknown)} finished trial(s) ({', '.join(sorted(unknown)[:5])}) are not in Tune's "
            f"snapshot of {len(tune_ids)} trials, which is newer than they are (a tune/ folder from another "
            "sweep or an old backup?)",
            "the Optuna study and the MLflow runs are intact",
            "put back the tune/ folder this study belongs to, or " + _warm_restart(journal.parent),
        )  # fmt: skip


def _before(when: Any, limit: float) -> bool:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(when)).timestamp() < limit
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------- failed starts
# What a start writes before Tune's first snapshot; a folder holding only these (and no trial) never ran one.
START_FILES = {
    "sweep.json", "sweep.json.tmp", "space.yaml", "optuna.journal", "optuna.journal.lock", "mlflow.db",
    "mlflow.db-journal", "mlartifacts", "mlflow.journal.jsonl", "tune", "trials", "trials.parquet",
    "sweep.lock", "sweep.lock.json", "sweep.lock.json.tmp", "signatures.json", "signatures.json.tmp",
}  # fmt: skip


def unstarted(folder: Path) -> bool:
    """True when ``folder`` holds only what a start writes before its first trial (or nothing at all)."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    if names - START_FILES:
        return False
    if glob.glob(str(folder / "tune" / "experiment_state-*.json")):
        return False
    if (folder / "trials").is_dir() and any((folder / "trials").iterdir()):
        return False
    journal = folder / "optuna.journal"
    try:
        return not (journal.is_file() and b'"op_code":4' in journal.read_bytes())  # no trial was created
    except OSError:
        return False


def discard_unstarted(folder: Path) -> None:
    """Remove what a failed start left in ``folder`` (its parent run in an outside store too): nothing stays."""
    import shutil

    if not unstarted(folder):
        return
    _delete_parent_run(folder)
    for name in START_FILES - {"sweep.lock"}:  # the lock file stays until its holder lets go
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def _delete_parent_run(folder: Path) -> None:
    """The parent run a failed start created in a store outside the folder (it holds no metrics)."""
    from ranksearch.sweep.folder import Manifest, default_tracking_uri

    try:
        manifest = Manifest.load(folder)
    except (OSError, ValueError, TypeError):
        return
    if not manifest.parent_run_id or manifest.tracking_uri == default_tracking_uri(folder):
        return  # the folder's own store goes with the folder
    try:
        from mlflow.tracking import MlflowClient

        from ranksearch.sweep.mlflow_buffer import _fail_fast

        with _fail_fast():
            client = MlflowClient(tracking_uri=manifest.tracking_uri)
            if not client.get_run(manifest.parent_run_id).data.metrics:
                client.delete_run(manifest.parent_run_id)
    except Exception as e:  # the store that failed the start may still be away; say so, do not hide the cause
        import logging

        logging.getLogger(__name__).warning(
            "could not remove the parent run %s of the failed start: %s",
            manifest.parent_run_id,
            first_line(e),
        )


@contextlib.contextmanager
def claim(folder: Path, resume: bool) -> Iterator[None]:
    """Hold ``folder``'s driver lock; a new sweep reuses a failed start's folder and, if it fails before its
    first trial, leaves nothing behind (the folder is removed when it was created for it)."""
    from ranksearch.sweep.lock import SweepLock

    lock = SweepLock(folder).acquire()
    try:
        if not resume:
            discard_unstarted(folder)
        yield
    except BaseException:
        if not resume and unstarted(folder):
            discard_unstarted(folder)
            lock.release()
            with contextlib.suppress(OSError):
                (folder / "sweep.lock").unlink()
                folder.rmdir()  # only when empty: a folder holding anything else stays
        raise
    finally:
        lock.release()
