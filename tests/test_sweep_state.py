"""Sweep state you can trust (issue 21, part A): ``--resume`` never destroys, a copied folder is independent.

One real sweep (synthetic runner, real Ray, Optuna journal, MLflow sqlite) is interrupted by SIGKILLing its
driver; every test works on a ``cp -a`` copy of that folder:

- each state file truncated (what a full disk leaves) or garbled -> ``--resume`` refuses with one line naming
  the file, exit 2, and the folder is unchanged byte for byte (every MLflow run, every Optuna trial intact);
- the MLflow journal deleted -> the resumed sweep writes no duplicate metric point (checked against MLflow);
- a copy resumed -> it finishes on its own files; the original is unchanged byte for byte;
- a second driver on a running sweep -> refused, naming the holder's PID and host;
- a failed start -> nothing left; a start killed half-way -> the same command starts it again.

Drivers run as subprocesses with their own local Ray, in a new session (ended by session: ``driver_process``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import driver_process
import pytest
import yaml
from reliability_report import record

pytestmark = [pytest.mark.ray, pytest.mark.reliability]

N = 6
SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 3}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
        "adapter.r": [1, 2, 4, 8],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "tpe", "seed": 0},
    "early_stopping": {"type": "none"},
    "trials": N,
    "concurrency": 2,
    "resources": {"cpu": 1, "gpu": 0},
}
DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.sweep.tuner import run_sweep
space, storage, name, resume, tmp = sys.argv[1:6]
r = run_sweep(space, name=name, storage=Path(storage), resume=resume == "1", runner="synthetic",
              runner_options={"seconds_per_eval": 0.4}, live=False, ray_init={"num_cpus": 2, "_temp_dir": tmp})
print("RESULT " + json.dumps({"rows": [[x["trial_id"], x["status"]] for x in r.rows]}))
"""


def driver(space: Path, runs: Path, name: str, resume: bool, log: Path) -> subprocess.Popen:
    return driver_process.start_driver(DRIVER, [str(space), str(runs), name, "1" if resume else "0"], log)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            driver_process.kill_session(proc)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def study_states(folder: Path) -> dict[int, str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return {
        t.number: t.state.name for t in optuna.load_study(study_name="ranksearch", storage=storage).trials
    }


def mlflow_runs(folder: Path) -> dict[str, dict]:
    """Every run of the folder's own store (deleted ones too): status, lifecycle, metric histories."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("base")  # copies keep the sweep's name and experiment
    out = {}
    for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000):
        histories = {
            k: sorted(m.step for m in client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics
        }
        out[r.info.run_id] = {
            "trial": r.data.tags.get("ranksearch.trial_id"), "status": r.info.status,
            "lifecycle": r.info.lifecycle_stage, "metrics": histories, "artifact_uri": r.info.artifact_uri,
            "orphaned": r.data.tags.get("ranksearch.orphaned"),
        }  # fmt: skip
    return out


def digest(folder: Path, locks: bool = True) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hash); ``locks=False``: the driver lock aside."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (locks or not p.name.startswith("sweep.lock"))
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A sweep folder whose driver was SIGKILLed after 3 of N trials finished (others running)."""
    import optuna  # noqa: F401  (imported once, before the timing matters)

    root = tmp_path_factory.mktemp("state")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    folder = root / "runs" / "base"
    proc = driver(root / "space.yaml", root / "runs", "base", False, root / "first.log")
    deadline = time.time() + 240
    try:
        while True:
            assert proc.poll() is None, (root / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first driver did not finish 3 trials in time"
            # the driver rewrites trials.parquet every few seconds: the damage cases need it on disk
            if (folder / "optuna.journal").exists() and (folder / "trials.parquet").exists():
                with contextlib.suppress(Exception):
                    if sum(s in ("COMPLETE", "PRUNED") for s in study_states(folder).values()) >= 3:
                        break
            time.sleep(0.5)
        time.sleep(1.0)  # a Tune snapshot (every 2 s) holds the finished trials
    finally:
        driver_process.kill_session(proc)
    return folder


def copy_of(folder: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "runs" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(folder), str(dest)], check=True)
    return dest


def resume_cli(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "ranksearch", "sweep", str(folder / "space.yaml"), "--name", folder.name,
         "--runs-dir", str(folder.parent), "--resume", "--no-live"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def _newest(folder: Path, pattern: str) -> Path:
    return Path(sorted(glob.glob(str(folder / pattern)))[-1])


def truncate(rel: str, keep: float = 0.6):
    def damage(folder: Path) -> None:
        path = _newest(folder, rel)
        os.truncate(path, int(path.stat().st_size * keep))

    return damage


def garble(rel: str):
    def damage(folder: Path) -> None:
        path = _newest(folder, rel)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = b"\x00\xff\xfe\x81 garbled \n\x9c\x00"
        path.write_bytes(bytes(data))

    return damage


def disk_full(folder: Path) -> None:
    """What ENOSPC mid-sweep leaves: Tune's snapshot and the Optuna journal both cut in the middle of a record."""
    truncate("tune/experiment_state-*.json", 0.5)(folder)
    truncate("optuna.journal", 0.7)(folder)


DAMAGE = {
    "sweep.json truncated": ("sweep.json", truncate("sweep.json")),
    "sweep.json garbled": ("sweep.json", garble("sweep.json")),
    "optuna.journal truncated": ("optuna.journal", truncate("optuna.journal")),
    "optuna.journal garbled": ("optuna.journal", garble("optuna.journal")),
    "Tune experiment state truncated": ("experiment_state-", truncate("tune/experiment_state-*.json")),
    "Tune experiment state garbled": ("experiment_state-", garble("tune/experiment_state-*.json")),
    "Tune experiment state deleted": ("tune", lambda f: _newest(f, "tune/experiment_state-*.json").unlink()),
    "tuner.pkl truncated": ("tuner.pkl", truncate("tune/tuner.pkl")),
    "searcher state truncated": ("searcher-state-", truncate("tune/searcher-state-*.pkl")),
    # bytes changed in place inside a pickle can leave a valid pickle: part B's signatures refuse those
    "searcher state with bytes appended": (
        "searcher-state-",
        lambda f: _newest(f, "tune/searcher-state-*.pkl").open("ab").write(b"\x00\xff garbage"),
    ),
    "mlflow journal garbled": ("mlflow.journal.jsonl", garble("mlflow.journal.jsonl")),
    "mlflow journal binary appended": (
        "mlflow.journal.jsonl",
        lambda f: (f / "mlflow.journal.jsonl").open("ab").write(b"\x00\xff\xfe\x81\n\x9c\x00\x01\n"),
    ),
    "trials.parquet truncated": ("trials.parquet", truncate("trials.parquet")),
    "disk full (Tune state + journal cut)": ("optuna.journal", disk_full),  # the first one checked
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_state_is_refused_and_nothing_changes(interrupted, tmp_path, case):
    t0 = time.time()
    folder = copy_of(interrupted, tmp_path, "damaged")
    names, damage = DAMAGE[case]
    runs_before = mlflow_runs(folder)
    damage(folder)
    before = digest(folder, locks=False)
    proc = resume_cli(folder)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out, out
    assert names in lines[0] and "Recover:" in lines[0], lines[0]
    # nothing written: not the study, not the MLflow store, not Tune's state (only the driver lock came and went)
    assert digest(folder, locks=False) == before
    runs_after = mlflow_runs(folder)
    assert runs_after == runs_before and all(r["lifecycle"] == "active" for r in runs_after.values())
    with_metrics = sum(bool(r["metrics"]) for r in runs_after.values())
    record(
        f"state_{case}", case=case, outcome="refused (exit 2, one line)", tune_trials="not restored",
        optuna_trials=_optuna_count(interrupted), mlflow_runs=f"{len(runs_before)} -> {len(runs_after)}",
        mlflow_runs_with_metrics=with_metrics, seconds=round(time.time() - t0, 1),
    )  # fmt: skip


def _optuna_count(folder: Path) -> str:
    states = study_states(folder)
    finished = sum(s != "RUNNING" for s in states.values())
    return f"{len(states)} ({finished} finished), unchanged"


def test_copy_resumes_on_its_own_and_the_original_is_untouched(interrupted, tmp_path):
    t0 = time.time()
    original = copy_of(interrupted, tmp_path / "orig", "base")  # keep the module's folder for the other tests
    before = digest(original)
    runs_before = mlflow_runs(original)
    copy = copy_of(original, tmp_path / "moved", "copy")
    assert json.loads((copy / "sweep.json").read_text())["tracking_uri"] == "sqlite:///mlflow.db"
    result = finish(
        driver(copy / "space.yaml", copy.parent, "copy", True, tmp_path / "copy.log"), tmp_path / "copy.log"
    )

    assert digest(original) == before  # the original: study, MLflow store, trial table, Tune state
    assert mlflow_runs(original) == runs_before
    rows = result["rows"]
    assert len(rows) == N and all(status == "completed" for _, status in rows), rows
    states = study_states(copy)
    assert sum(s == "COMPLETE" for s in states.values()) >= N
    runs = mlflow_runs(copy)
    children = {r["trial"]: r for r in runs.values() if r["trial"] and not r["orphaned"]}
    assert sorted(children) == sorted(tid for tid, _ in rows)
    assert all(r["status"] == "FINISHED" and r["metrics"]["val/hm"] == [1, 2, 3] for r in children.values())
    # artifacts of the copy's runs live in the copy
    assert all(r["artifact_uri"].startswith(copy.resolve().as_uri()) for r in runs.values())
    orphaned = [r for r in runs.values() if r["orphaned"]]
    assert all(r["lifecycle"] == "active" or not r["metrics"] for r in orphaned)  # nothing trained is deleted
    record(
        "state_copy", case="`cp -a` copy resumed", outcome="finished on its own files; original byte-identical",
        tune_trials=f"{len(rows)} ({sum(s == 'completed' for _, s in rows)} completed)",
        optuna_trials=f"{len(states)} ({sum(s == 'COMPLETE' for s in states.values())} COMPLETE)",
        mlflow_runs=f"{len(runs_before)} -> {len(runs)} in the copy ({len(orphaned)} orphaned, kept); original "
        f"{len(runs_before)}", mlflow_runs_with_metrics=sum(bool(r["metrics"]) for r in runs.values()),
        seconds=round(time.time() - t0, 1),
    )  # fmt: skip


def test_lost_mlflow_journal_writes_no_duplicate_point(interrupted, tmp_path):
    t0 = time.time()
    folder = copy_of(interrupted, tmp_path, "nojournal")
    (folder / "mlflow.journal.jsonl").unlink()
    before = study_states(folder)
    result = finish(
        driver(folder / "space.yaml", folder.parent, "nojournal", True, tmp_path / "r.log"),
        tmp_path / "r.log",
    )
    after = study_states(folder)
    # finished Optuna trials are never flipped
    assert all(after[n] == s for n, s in before.items() if s != "RUNNING")
    runs = mlflow_runs(folder)
    duplicates = sum(len(steps) - len(set(steps)) for r in runs.values() for steps in r["metrics"].values())
    children = [r for r in runs.values() if r["trial"] and not r["orphaned"]]
    assert len(result["rows"]) == N and len(children) == N
    assert duplicates == 0
    assert all(r["metrics"]["val/hm"] == [1, 2, 3] for r in children)
    record(
        "state_journal_lost", case="`mlflow.journal.jsonl` deleted, then `--resume`",
        outcome="resumed; no duplicate point (checked against MLflow)",
        tune_trials=f"{len(result['rows'])}", optuna_trials=f"{len(after)} (finished ones unchanged)",
        mlflow_runs=f"{len(runs)} ({duplicates} duplicate points)",
        mlflow_runs_with_metrics=sum(bool(r["metrics"]) for r in runs.values()), seconds=round(time.time() - t0, 1),
    )  # fmt: skip


def test_second_driver_is_refused_naming_the_holder(interrupted, tmp_path):
    folder = copy_of(interrupted, tmp_path, "busy")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ranksearch.sweep.lock import "
         "SweepLock; lock = SweepLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)",
         str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = digest(folder)
        proc = resume_cli(folder)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and len(out.strip().splitlines()) == 1, out
        assert f"PID {holder.pid} on host" in out and "already running" in out
        assert digest(folder) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died (its record stays, naming a dead PID): the next driver takes the lock over
    from ranksearch.sweep.lock import SweepLock
    from ranksearch.sweep.lock import holder as lock_holder

    assert lock_holder(folder)["pid"] == holder.pid
    with SweepLock(folder):
        assert lock_holder(folder)["pid"] == os.getpid()
    record(
        "state_second_driver", case="second `--resume` while a driver holds the sweep",
        outcome="refused (exit 2), names PID and host", tune_trials="not restored",
        optuna_trials="unchanged", mlflow_runs="unchanged", mlflow_runs_with_metrics="–", seconds=0,
    )  # fmt: skip


def test_a_failed_start_leaves_nothing_and_the_name_stays_free(tmp_path):
    """Bad tracking URI, resources no node holds, a runs folder under a file: exit 2 (or 1 for the disk), one error
    line, no folder left (so the same name starts afresh). A tracking server that does not answer is no failed
    start: the sweep runs, its parent run journalled (test_reliability_tracking.py)."""
    t0 = time.time()
    space = {**SPACE, "trials": 1}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "big.yaml").write_text(yaml.safe_dump({**space, "resources": {"cpu": 64, "gpu": 0}}))
    (tmp_path / "file").write_text("not a folder")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    runs = tmp_path / "runs"
    cases = {
        "bad tracking URI": (["--tracking-uri", "bogus://nowhere"], "space.yaml", runs, 2, "--tracking-uri"),
        "resources no node holds": ([], "big.yaml", runs, 2, "cpu"),
        "runs folder is a file": ([], "space.yaml", tmp_path / "file" / "runs", 1, "file"),
    }
    for case, (extra, space_file, where, code, names) in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "ranksearch", "sweep", str(tmp_path / space_file), "--name", "again",
             "--runs-dir", str(where), "--no-live", "--gpus", "0", *extra],
            capture_output=True, text=True, env=env, timeout=180,
        )  # fmt: skip
        out = (proc.stdout + proc.stderr).strip()
        errors = [
            line for line in out.splitlines() if line.startswith("error:")
        ]  # (preflight may warn first)
        assert proc.returncode == code and len(errors) == 1 and names in errors[0], (case, out)
        assert "Traceback" not in out, (case, out)
        assert not (runs / "again").exists(), (case, list((runs / "again").iterdir()))
    # nothing of the name is left, so a new start of it is a plain new sweep (see test_sweep_state_units.py)
    record(
        "state_failed_start", case="failed start: bad tracking URI, `cpu: 64`, runs folder "
        "under a file", outcome="exit 2/1, one error line, no folder left (the name is free)",
        tune_trials="0", optuna_trials="no study", mlflow_runs="none left",
        mlflow_runs_with_metrics="–", seconds=round(time.time() - t0, 1),
    )  # fmt: skip
