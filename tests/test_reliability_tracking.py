"""Tracking-server outage: the sweep's MLflow writes are journaled on disk and delivered when the server returns.

Unit tests of ``TrackingJournal`` against a sqlite store (default tier): buffering while MLflow fails, a crash
that loses nothing, an idempotent replay, de-duplication by (trial, key, step). Then the end-to-end case
(``reliability`` marker): a real ``mlflow server`` (127.0.0.1, own process group) is the tracking URI of a
sweep and is killed for >= 30 s while trials run, then restarted on the same store. Issue 7, item 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from reliability_report import record

from ranksearch.sweep.mlflow_buffer import JOURNAL_FILE, PARENT, TrackingJournal

OUTAGE_S = 32


# ------------------------------------------------------------------------------------------ journal units
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store with one parent run: (uri, parent run id)."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("journal", artifact_location=(tmp / "art").as_uri())
    return uri, client.create_run(exp).info.run_id


class Flaky:
    """An MlflowClient that refuses every call while ``down`` (a server outage), else forwards."""

    def __init__(self, uri: str):
        self.real, self.down, self.calls = MlflowClient(tracking_uri=uri), True, 0

    def __getattr__(self, name):
        method = getattr(self.real, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise ConnectionError("connection refused (simulated outage)")
            return method(*args, **kwargs)

        return call


def _child(journal: TrackingJournal, trial: str, parent: str) -> None:
    tags = {"mlflow.parentRunId": parent, "ranksearch.trial_id": trial}
    journal.append("child", trial, run_name=trial, tags=tags, params={"p": "1"})


def _points(step: int, ts: int = 0) -> list[list]:
    return [["val/hm", 50.0 + step, ts, step], ["train/loss", 1.0 / step, ts, step]]


def _history(uri: str, parent: str, trial: str, key: str) -> list[int]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(parent).info.experiment_id
    [run] = client.search_runs([exp], f"tags.`ranksearch.trial_id` = '{trial}'")
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_outage_buffers_on_disk_and_delivers_in_order(store, tmp_path):
    uri, parent = store
    flaky = Flaky(uri)
    journal = TrackingJournal(tmp_path, uri, parent, client=flaky)
    _child(journal, "t-outage", parent)
    for step in range(1, 6):
        journal.append("metrics", "t-outage", metrics=_points(step))
        assert not journal.flush()  # the server is down: nothing delivered, nothing lost
    journal.append("end", "t-outage", status="FINISHED")
    assert journal.pending == 7
    on_disk = [json.loads(x) for x in (tmp_path / JOURNAL_FILE).read_text().splitlines()]
    assert len([x for x in on_disk if "seq" in x]) == 7 and not [x for x in on_disk if "ack" in x]
    calls = flaky.calls
    assert not journal.flush()  # backing off: no new attempt yet
    assert flaky.calls == calls
    flaky.down = False
    assert journal.flush(force=True) and journal.pending == 0
    assert _history(uri, parent, "t-outage", "val/hm") == [1, 2, 3, 4, 5]
    assert journal.stats["failures"] >= 1 and journal.stats["delivered"] == 7


def test_a_crash_loses_nothing_and_a_replay_duplicates_nothing(store, tmp_path):
    uri, parent = store
    first = TrackingJournal(tmp_path, uri, parent, client=Flaky(uri))
    _child(first, "t-crash", parent)
    for step in (1, 2, 3):
        first.append("metrics", "t-crash", metrics=_points(step))
    first.flush()
    del first  # the driver dies with 4 writes accepted, none delivered

    second = TrackingJournal(tmp_path, uri, parent)
    assert second.pending == 4 and second.flush(force=True)
    assert _history(uri, parent, "t-crash", "val/hm") == [1, 2, 3]

    # a crash between delivering an entry and writing its ack: the next driver must not log it twice
    second.append("metrics", "t-crash", metrics=_points(4))
    second.flush(force=True)
    lines = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    assert json.loads(lines[-1]) == {"ack": second.seq}
    (tmp_path / JOURNAL_FILE).write_text(
        "\n".join(lines[:-1]) + "\n" + '{"seq": 99, "op": "metr'
    )  # torn line
    third = TrackingJournal(tmp_path, uri, parent)
    assert third.pending == 1 and third.flush(force=True)
    assert _history(uri, parent, "t-crash", "val/hm") == [1, 2, 3, 4]
    assert _history(uri, parent, "t-crash", "train/loss") == [1, 2, 3, 4]


def test_a_re_run_tail_is_not_logged_twice(store, tmp_path):
    """After --resume a trial reports its last steps again: (trial, key, step) already journaled -> dropped."""
    uri, parent = store
    journal = TrackingJournal(tmp_path, uri, parent)
    _child(journal, "t-tail", parent)
    for step in (1, 2, 3):
        journal.append("metrics", "t-tail", metrics=_points(step))
    journal.flush(force=True)
    journal.close()
    resumed = TrackingJournal(tmp_path, uri, parent)  # a new driver, same sweep folder
    for step in (3, 4):  # the tail re-runs from the checkpoint at step 2
        resumed.append("metrics", "t-tail", metrics=_points(step))
    assert resumed.flush(force=True)
    assert resumed.stats["skipped_duplicates"] == 2
    assert _history(uri, parent, "t-tail", "val/hm") == [1, 2, 3, 4]


def test_a_refused_write_is_dropped_not_retried_forever(store, tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    uri, parent = store

    class Refusing(Flaky):
        def __getattr__(self, name):
            if name == "log_batch":

                def refuse(*a, **k):
                    raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

                return refuse
            return getattr(self.real, name)

    journal = TrackingJournal(tmp_path, uri, parent, client=Refusing(uri))
    journal.append("tags", PARENT, tags={"x": "1"})
    journal.append("end", PARENT, status="RUNNING")
    assert journal.flush(force=True) and journal.stats["dropped"] == 1


def test_a_journalled_parent_run_is_created_once_and_its_children_point_to_it(store, tmp_path):
    """The server is down when the sweep starts: the parent run itself is a journal entry, delivered first; a
    lost ack or a later driver finds it by its key instead of creating a second one."""
    from ranksearch.sweep.mlflow_buffer import PARENT_KEY_TAG

    uri, _ = store
    flaky = Flaky(uri)
    journal = TrackingJournal(tmp_path, uri, None, client=flaky)
    spec = {"experiment": "journalled-parent", "artifact_location": (tmp_path / "art").as_uri(),
            "run_name": "sweep-x", "tags": {"ranksearch.kind": "sweep"}, "params": {"trials": "2"}, "key": "k1"}  # fmt: skip
    journal.append("parent", PARENT, **spec)
    for trial in ("t-a", "t-b"):
        journal.append("child", trial, run_name=trial, params={"p": "1"},
                       tags={"mlflow.parentRunId": {"run_of": PARENT}, "ranksearch.trial_id": trial})  # fmt: skip
        journal.append("metrics", trial, metrics=_points(1))
    journal.append("tags", PARENT, tags={"best.run_id": {"run_of": "t-a"}})
    assert not journal.flush(force=True) and journal.pending == 6  # nothing in MLflow yet
    flaky.down = False
    assert journal.flush(force=True) and journal.pending == 0
    parent = journal.parent_run_id
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("journalled-parent").experiment_id
    children = client.search_runs([exp], "tags.`ranksearch.trial_id` != ''")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent} and len(children) == 2
    run = client.get_run(parent)
    assert run.data.params == {"trials": "2"} and run.data.tags[PARENT_KEY_TAG] == "k1"
    assert run.data.tags["best.run_id"] in {c.info.run_id for c in children}
    journal.close()

    # the parent's ack lost (driver killed right after delivering it): a new driver finds it by its key
    lines = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    first_ack = next(i for i, x in enumerate(lines) if json.loads(x) == {"ack": 1})
    (tmp_path / JOURNAL_FILE).write_text("\n".join(lines[:first_ack] + lines[first_ack + 1 :]) + "\n")
    again = TrackingJournal(tmp_path, uri, None)
    assert again.pending == 1 and again.flush(force=True)
    assert again.parent_run_id == parent
    assert len(client.search_runs([exp], f"tags.`{PARENT_KEY_TAG}` = 'k1'")) == 1
    # and a driver that reads an all-delivered journal (sweep.json without the id) resolves it too
    assert TrackingJournal(tmp_path, uri, None).parent_run_id == parent


def test_only_an_http_server_that_does_not_answer_is_waited_for():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from ranksearch.sweep.mlflow_buffer import unreachable

    refused = MlflowException(
        "API request to http://127.0.0.1:9/api failed with exception ... Max retries exceeded"
    )
    assert unreachable("http://127.0.0.1:9", refused)
    assert unreachable("https://mlflow", MlflowException("gateway", error_code=TEMPORARILY_UNAVAILABLE))
    assert not unreachable(
        "http://mlflow", MlflowException("no such run", error_code=INVALID_PARAMETER_VALUE)
    )
    assert not unreachable("bogus://nowhere", ConnectionError("refused"))  # a bad URI stays an error
    assert not unreachable("sqlite:///nowhere/mlflow.db", OSError("no such folder"))


# ------------------------------------------------------------------------------------ real server outage
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1 (never a public address), artifacts under ``tmp``; waits for /health."""
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'server.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp / "server.log", "ab")  # noqa: SIM115  (the child keeps it)
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    raise AssertionError("mlflow server did not start")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait(timeout=30)


def _journal_state(folder: Path) -> tuple[int, int]:
    """(entries, acknowledged) in the sweep's journal file."""
    path = folder / JOURNAL_FILE
    if not path.exists():
        return 0, 0
    items = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            items.append(json.loads(line))
    return sum("seq" in x for x in items), sum("ack" in x for x in items)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, _temp_dir=tmp)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.reliability
def test_sweep_survives_a_tracking_server_outage(ray_session, tmp_path):
    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    port = _free_port()
    server = {"proc": _start_server(tmp_path, port)}
    uri = f"http://127.0.0.1:{port}"
    space = tmp_path / "space.yaml"
    evals, n = 10, 4
    space.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": evals}},
                "params": {"adapter.r": [1, 2, 4, 8]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "grid", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": n,
                "concurrency": 2,
                "resources": {"cpu": 0.5, "gpu": 0.5},
            }
        )
    )
    folder = tmp_path / "runs" / "outage"
    outage: dict = {}

    def outage_window() -> None:
        deadline = time.time() + 120
        while _journal_state(folder)[1] < 5 and time.time() < deadline:  # the server has taken some writes
            time.sleep(0.2)
        _kill(server["proc"])
        outage["down"] = time.time()
        outage["acked_at_down"] = _journal_state(folder)[1]
        time.sleep(OUTAGE_S)
        entries, acked = _journal_state(folder)
        outage["buffered"] = entries - acked  # written during the outage, safe on disk, not yet delivered
        outage["acked_during"] = acked - outage["acked_at_down"]
        server["proc"] = _start_server(tmp_path, port)
        outage["up"] = time.time()

    thread = threading.Thread(target=outage_window, daemon=True)
    thread.start()
    try:
        result = run_sweep(
            space,
            name="outage",
            storage=tmp_path / "runs",
            runner="synthetic",
            tracking_uri=uri,
            runner_options={"seconds_per_eval": 2.0},
            live=False,
        )
        thread.join(timeout=180)
        assert "up" in outage, outage

        down_s = outage["up"] - outage["down"]
        assert down_s >= 30
        assert outage["buffered"] > 0 and outage["acked_during"] == 0, outage
        # trials kept training while the server was away
        trained = 0
        for f in result.folder.glob("trials/*/progress.jsonl"):
            trained += sum(
                outage["down"] < json.loads(x)["time"] < outage["up"] for x in f.read_text().splitlines()
            )
        assert trained >= 4, trained

        assert [r["status"] for r in result.rows] == ["completed"] * n
        entries, acked = _journal_state(result.folder)
        assert entries == acked  # everything delivered

        held = _held_once(uri, result, n)  # one parent, n children under it, every metric point exactly once
        assert held["parent"] == result.parent_run_id
        record(
            "tracking_outage",
            count=f"1 outage, {down_s:.0f} s down",
            outage_s=round(down_s),
            trials=n,
            completed=n,
            failed_recorded=0,
            duplicates=held["duplicates"],
            lost_points=held["lost_points"],
            tracebacks=0,
            seconds=round(time.time() - t0),
            buffered_writes=outage["buffered"],
            injected=f"real `mlflow server` killed (SIGKILL) for {down_s:.0f} s "
            "mid-sweep, restarted on the same store",
        )
    finally:
        _kill(server["proc"])


def _space(tmp: Path, n: int, evals: int) -> Path:
    space = tmp / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": evals}},
                "params": {"adapter.r": [1, 2, 4, 8][:n]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "grid", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": n,
                "concurrency": 2,
                "resources": {"cpu": 0.5, "gpu": 0.5},
            }
        )
    )
    return space


def _held_once(uri: str, result, n: int) -> dict:
    """What MLflow holds of the sweep: one parent, ``n`` children under it, every metric point exactly once."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(result.experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'sweep'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == str(n)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"space.yaml", "trials.parquet"}
    children = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
    assert len(children) == n
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    rows = {r["trial_id"]: r for r in result.rows}
    produced = delivered = duplicates = 0
    for c in children:
        reports = rows[c.data.tags["ranksearch.trial_id"]]["reports"]
        for key in ("val/hm", "train/loss", "trainable_params"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            produced += reports
            delivered += len(set(steps))
            duplicates += len(steps) - len(set(steps))
            assert sorted(steps) == list(range(1, reports + 1)), (key, steps)
        assert c.info.status == "FINISHED"
    assert parent.data.tags["best.run_id"] in {c.info.run_id for c in children}
    return {"parent": parent.info.run_id, "duplicates": duplicates, "lost_points": produced - delivered}


@pytest.mark.ray
@pytest.mark.reliability
def test_sweep_starts_while_the_tracking_server_is_down(ray_session, tmp_path):
    """No server when the sweep starts (its parent run is journalled); the server comes up a few seconds later:
    the sweep runs throughout, and MLflow ends up with the parent and every child, each point once."""
    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    port, n, evals = _free_port(), 4, 8
    uri = f"http://127.0.0.1:{port}"
    folder = tmp_path / "runs" / "late"
    server: dict = {}

    def late_server() -> None:
        deadline = time.time() + 120
        while _journal_state(folder)[0] < 3 and time.time() < deadline:  # the sweep started, writes buffered
            time.sleep(0.2)
        server["buffered_at_start"] = _journal_state(folder)
        journal = folder / JOURNAL_FILE
        while b'"op":"metrics"' not in journal.read_bytes() and time.time() < deadline:  # trials report
            time.sleep(0.2)
        time.sleep(3)
        server["starting"] = time.time()
        server["proc"] = _start_server(tmp_path, port)
        server["up"] = time.time()

    thread = threading.Thread(target=late_server, daemon=True)
    thread.start()
    try:
        result = run_sweep(
            _space(tmp_path, n, evals), name="late", storage=tmp_path / "runs", runner="synthetic",
            tracking_uri=uri, runner_options={"seconds_per_eval": 1.0}, live=False,
        )  # fmt: skip
        thread.join(timeout=180)
        assert "up" in server, server
        entries, acked = server["buffered_at_start"]
        assert acked == 0 and entries >= 3  # parent, its artifacts: journalled, not delivered
        assert [r["status"] for r in result.rows] == ["completed"] * n
        trained = sum(  # trials trained before the server was there
            json.loads(x)["time"] < server["starting"]
            for f in result.folder.glob("trials/*/progress.jsonl")
            for x in f.read_text().splitlines()
        )
        assert trained >= 2, trained
        assert (
            result.tracking_pending == 0
            and _journal_state(result.folder)[0] == _journal_state(result.folder)[1]
        )
        held = _held_once(uri, result, n)
        manifest = json.loads((result.folder / "sweep.json").read_text())
        assert held["parent"] == result.parent_run_id == manifest["parent_run_id"]
        assert held["duplicates"] == 0 and held["lost_points"] == 0
        record(
            "tracking_down_at_start", count=f"server up {server['up'] - t0:.0f} s after the start", trials=n,
            completed=n, failed_recorded=0, duplicates=held["duplicates"], lost_points=held["lost_points"],
            tracebacks=0, seconds=round(time.time() - t0),
        )  # fmt: skip
    finally:
        if "proc" in server:
            _kill(server["proc"])


@pytest.mark.ray
@pytest.mark.reliability
def test_a_server_that_never_comes_up_then_ranksearch_sync(ray_session, tmp_path, monkeypatch, capsys):
    """No server during the whole sweep: it finishes anyway, the journal keeps everything (sweep.json has no
    parent run id yet), and ``ranksearch sync`` delivers it all, once, when the server is there."""
    from cli_run import run_cli

    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    monkeypatch.setenv("RANKSEARCH_MLFLOW_DRAIN_S", "2")  # the end's wait for the server (default 300 s)
    port, n, evals = _free_port(), 3, 4
    uri = f"http://127.0.0.1:{port}"
    result = run_sweep(
        _space(tmp_path, n, evals), name="never", storage=tmp_path / "runs", runner="synthetic",
        tracking_uri=uri, runner_options={"seconds_per_eval": 0.3}, live=False,
    )  # fmt: skip
    assert [r["status"] for r in result.rows] == ["completed"] * n
    assert result.parent_run_id is None and result.tracking_pending > 0
    entries, acked = _journal_state(result.folder)
    assert acked == 0 and entries == result.tracking_pending
    assert json.loads((result.folder / "sweep.json").read_text())["parent_run_id"] is None

    code, out = run_cli(["sync", str(result.folder), "--wait", "1"], capsys)  # still no server
    assert code == 1 and f"{entries} MLflow writes still pending" in out, out
    proc = _start_server(tmp_path, port)
    try:
        code, out = run_cli(["sync", str(result.folder), "--wait", "60"], capsys)
        assert code == 0 and f"all {entries} buffered writes delivered" in out, out
        held = _held_once(uri, result, n)
        assert json.loads((result.folder / "sweep.json").read_text())["parent_run_id"] == held["parent"]
        code, out = run_cli(["sync", str(result.folder)], capsys)  # again: nothing left, nothing logged twice
        assert code == 0 and "all 0 buffered writes delivered" in out, out
        again = _held_once(uri, result, n)
        assert again == held and held["duplicates"] == 0 and held["lost_points"] == 0
        record(
            "tracking_never_up", count="no server during the sweep; `ranksearch sync` after", trials=n,
            completed=n, failed_recorded=0, duplicates=held["duplicates"], lost_points=held["lost_points"],
            tracebacks=0, seconds=round(time.time() - t0), buffered_writes=entries,
        )  # fmt: skip
    finally:
        _kill(proc)
