"""Units of issue 21 part A (default tier): the state checks, the driver lock, failed starts, relative paths, and
the MLflow journal's idempotence when the journal itself is lost. The sweeps are in ``test_sweep_state.py``."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from ranksearch.errors import ConfigError
from ranksearch.sweep.folder import IN_FOLDER_URI, Manifest, default_tracking_uri, prepare_folder
from ranksearch.sweep.jsonl import StateError, read_jsonl
from ranksearch.sweep.lock import SweepBusy, SweepLock, holder
from ranksearch.sweep.mlflow_buffer import JOURNAL_FILE, TrackingJournal
from ranksearch.sweep.relocate import relocate_store
from ranksearch.sweep.state import check_pickle, discard_unstarted, unstarted


# ------------------------------------------------------------------------------------------- JSON lines
def test_read_jsonl_names_the_bad_line_and_the_recovery(tmp_path):
    path = tmp_path / "optuna.journal"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')  # a write cut short (disk full)
    with pytest.raises(StateError) as e:
        read_jsonl(path, what="Optuna journal record")
    msg = str(e.value)
    assert "line 3" in msg and "cut short" in msg and f"truncate -s 18 {path}" in msg
    assert "\n" not in msg
    assert read_jsonl(path, what="x", allow_cut_tail=True) == ([{"a": 1}, {"b": 2}], 18)
    path.write_bytes(b'{"a": 1}\n\xff\xfe garbage\n{"b": 2}\n')  # garbled in the middle: never skipped
    with pytest.raises(StateError, match="line 2"):
        read_jsonl(path, what="x", allow_cut_tail=True)


def test_check_pickle_walks_opcodes_without_loading(tmp_path):
    path = tmp_path / "tuner.pkl"
    data = pickle.dumps({"x": list(range(100)), "s": "text" * 50})
    path.write_bytes(data)
    check_pickle(path, "recoverable")  # whole: accepted
    for broken in (data[: len(data) // 2], b"", data + b"\x00junk"):
        path.write_bytes(broken)
        with pytest.raises(StateError, match="tuner.pkl: not a whole pickle"):
            check_pickle(path, "recoverable")


# ----------------------------------------------------------------------------------------------- lock
def test_a_second_driver_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    with SweepLock(tmp_path):
        assert holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(SweepBusy) as e:
            SweepLock(tmp_path).acquire()
        assert f"PID {os.getpid()} on host" in str(e.value) and "already running" in str(e.value)
    assert holder(tmp_path) is None  # released: the record goes with it
    # a driver that died holding the lock (SIGKILL: no release) leaves its record; the OS dropped the lock
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; from pathlib import Path; from ranksearch.sweep.lock import "
         "SweepLock; lock = SweepLock(Path(sys.argv[1])).acquire(); os._exit(0)", str(tmp_path)],
        check=True,
    )  # fmt: skip
    assert proc.returncode == 0 and holder(tmp_path)["pid"] != os.getpid()
    with SweepLock(tmp_path):
        assert holder(tmp_path)["pid"] == os.getpid()


# --------------------------------------------------------------------------------------- failed starts
def test_a_failed_start_is_recognised_reused_and_discarded(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "space.yaml").write_text("trials: 1\n")
    (folder / "sweep.json").write_text("{}")
    (folder / "tune").mkdir()
    (folder / "tune" / "tuner.pkl").write_bytes(b"")
    assert unstarted(folder)
    with pytest.raises(
        ConfigError, match="failed before its first trial: run the same command without --resume"
    ):
        prepare_folder(folder, resume=True, unstarted=True)
    prepare_folder(folder, resume=False, unstarted=True)  # a fresh start with the same name accepts it
    discard_unstarted(folder)
    assert list(folder.iterdir()) == []
    # anything a trial left, or a file the sweep does not write, makes it a started (or foreign) folder
    (folder / "trials" / "abc").mkdir(parents=True)
    assert not unstarted(folder)
    shutil.rmtree(folder / "trials")
    (folder / "notes.txt").write_text("mine")
    assert not unstarted(folder)
    with pytest.raises(ConfigError, match="already exists"):
        prepare_folder(folder, resume=False, unstarted=False)


# ---------------------------------------------------------------------------------------- relative paths
def test_manifest_keeps_the_folder_store_relative(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    Manifest("a", "space.yaml", default_tracking_uri(folder), "a", "run").save(folder)
    assert json.loads((folder / "sweep.json").read_text())["tracking_uri"] == IN_FOLDER_URI
    moved = tmp_path / "b"
    shutil.copytree(folder, moved)
    assert Manifest.load(moved).tracking_uri == default_tracking_uri(moved.resolve())
    Manifest("a", "space.yaml", "http://127.0.0.1:5000", "a", "run").save(folder)  # another store: as given
    assert Manifest.load(moved.parent / "a").tracking_uri == "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep folder's own sqlite store with a parent run whose artifacts live in the folder."""
    folder = tmp_path_factory.mktemp("store") / "sweep"
    folder.mkdir()
    uri = default_tracking_uri(folder)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=(folder / "mlartifacts").as_uri())
    return folder, uri, client.create_run(exp).info.run_id


def test_relocate_store_points_a_copy_at_its_own_artifacts(store, tmp_path):
    folder, uri, parent = store
    client = MlflowClient(tracking_uri=uri)
    child = client.create_run(client.get_run(parent).info.experiment_id).info.run_id
    before = (folder / "mlflow.db").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert relocate_store(copy, parent) == 3  # the experiment and both runs
    assert (folder / "mlflow.db").read_bytes() == before  # the original store is not touched
    moved = MlflowClient(tracking_uri=default_tracking_uri(copy))
    for run_id in (parent, child):
        assert moved.get_run(run_id).info.artifact_uri.startswith(
            (copy.resolve() / "mlartifacts").as_uri() + "/"
        )
        assert client.get_run(run_id).info.artifact_uri.startswith((folder / "mlartifacts").as_uri() + "/")
    assert relocate_store(copy, parent) == 0  # already its own


# ------------------------------------------------------------------------------- MLflow journal idempotence
def _points(step: int) -> list[list]:
    return [["val/hm", 50.0 + step, 0, step], ["train/loss", 1.0 / step, 0, step]]


def _child(journal: TrackingJournal, trial: str, parent: str) -> None:
    tags = {"mlflow.parentRunId": parent, "ranksearch.trial_id": trial}
    journal.append("child", trial, run_name=trial, tags=tags, params={"p": "1"})


def _steps(uri: str, parent: str, trial: str, key: str) -> list[int]:
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`ranksearch.trial_id` = '{trial}'"
    )
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_the_journal_lost_writes_no_duplicate_point(store, tmp_path):
    """mlflow.journal.jsonl deleted between drivers: the re-run tail is checked against what MLflow holds."""
    folder, uri, parent = store
    first = TrackingJournal(tmp_path, uri, parent)
    _child(first, "t-lost", parent)
    for step in (1, 2, 3):
        first.append("metrics", "t-lost", metrics=_points(step))
    assert first.flush(force=True)
    first.close()
    (tmp_path / JOURNAL_FILE).unlink()
    second = TrackingJournal(tmp_path, uri, parent)  # knows nothing of the first driver's keys
    _child(second, "t-lost", parent)  # the resumed trial finds its run
    for step in (2, 3, 4):  # its tail re-runs from the checkpoint at step 1
        second.append("metrics", "t-lost", metrics=_points(step))
    assert second.flush(force=True)
    assert _steps(uri, parent, "t-lost", "val/hm") == [1, 2, 3, 4]
    assert _steps(uri, parent, "t-lost", "train/loss") == [1, 2, 3, 4]
    assert second.stats["skipped_duplicates"] == 4


def test_a_garbled_journal_refuses_and_a_cut_tail_is_dropped(store, tmp_path):
    folder, uri, parent = store
    journal = TrackingJournal(tmp_path, uri, parent)
    _child(journal, "t-cut", parent)
    journal.append("metrics", "t-cut", metrics=_points(1))
    journal.close()
    path = tmp_path / JOURNAL_FILE
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq": 3, "op": "metr')  # a write cut short by a crash: never acknowledged
    reopened = TrackingJournal(tmp_path, uri, parent)
    assert path.read_bytes() == whole and reopened.pending == 2
    reopened.append("metrics", "t-cut", metrics=_points(2))  # starts on a line of its own
    reopened.close()
    assert len(read_jsonl(path, what="x")[0]) == 3
    path.write_bytes(whole + b"\x00\xff\xfe\x81 binary\n" + whole)  # binary bytes in the middle
    with pytest.raises(StateError, match=f"{JOURNAL_FILE}: line 3 is not a whole MLflow journal entry"):
        TrackingJournal(tmp_path, uri, parent)
    path.write_bytes(whole + b'{"what": "json, but not an entry"}\n')
    with pytest.raises(StateError, match="line 3 is JSON but not a journal entry"):
        TrackingJournal(tmp_path, uri, parent)
