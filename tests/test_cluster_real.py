"""A sweep on a real multi-process Ray cluster: ``ray start --head`` + two ``ray start --address`` workers.

The cluster (``real_cluster.RealCluster``) runs with token authentication on and its dashboard on 127.0.0.1;
the sweeps are started the way users start them, with the CLI: ``ranksearch sweep --address`` on the head's
machine, and ``ranksearch submit`` through the Jobs API from "a laptop" (a client that only has the dashboard
URL and the token). Real trials (the tiny CLIP, random init), real Optuna journal, real MLflow sqlite.

The node-loss test SIGKILLs the raylet of the worker that runs a trial which has checkpointed, as when that
machine dies: the trial must resume from its checkpoint on the other worker and the sweep must end with every
trial exactly once in Tune, Optuna and MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from real_cluster import RealCluster
from reliability_report import record

pytestmark = [pytest.mark.ray, pytest.mark.reliability]

ROOT = Path(__file__).resolve().parents[1]
EVALS = 6


def space_file(folder: Path, trials: int, evals: int = EVALS, iterations: int = 240) -> Path:
    """Real tiny-CLIP trials, small enough for 2 cores: one CPU each, a checkpoint per evaluation."""
    space = {
        "base": {
            "model": {"name": "rs-tiny-clip", "pretrained": None, "threads": 1},
            "data": {"task": "shapeworld", "protocol": "base2new", "shots": 4, "test_per_class": 4},
            "train": {"iterations": iterations, "batch_size": 16, "augment": False},
            "eval": {"evals": evals, "zero_shot": False},
        },
        "params": {"adapter.r": [1, 2, 4, 8]},
        "objective": {"metric": "val/hm", "mode": "max"},
        "sampler": {"type": "grid", "seed": 0},
        "early_stopping": {"type": "none"},
        "trials": trials,
        "concurrency": 2,
        "resources": {"cpu": 1, "gpu": 0},  # one trial fills a worker
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture(scope="module")
def cluster():
    # the Ray processes import this checkout (trials run ranksearch code on the workers)
    # (and the job entrypoint's `ranksearch` is this venv's, as on a cluster where ranksearch is installed)
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    c = RealCluster(extra_env={"PYTHONPATH": str(ROOT), "PATH": path, "HF_HUB_OFFLINE": "1",
                               "MLFLOW_DISABLE_TELEMETRY": "true"})  # fmt: skip
    try:
        c.start_head(num_cpus=0)  # the head runs drivers only: every trial lands on a worker
        c.add_worker("a", num_cpus=1)
        c.add_worker("b", num_cpus=1)
        yield c
    finally:
        c.stop()


def ranksearch(args: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ranksearch", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def study_trials(folder: Path) -> list:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return optuna.load_study(study_name="ranksearch", storage=storage).get_trials(deepcopy=False)


def results(trial_dir: Path) -> list[dict]:
    """Tune's result.json of one trial: every report of every attempt, in order."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def node_of(pid: int, cluster: RealCluster):
    """The node whose ``ray start`` process tree holds ``pid``."""
    try:
        parents = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.Error:
        return None
    return next((n for n in cluster.nodes.values() if n.pid in parents), None)


def kill_busy_worker(cluster: RealCluster, tune_dir: Path, killed: dict, stop: threading.Event) -> None:
    """When a trial on a worker has checkpointed twice but not finished, SIGKILL that worker's raylet."""
    deadline = time.time() + 600
    while not stop.is_set() and time.time() < deadline:
        for trial_dir in tune_dir.glob("*/"):
            reports = results(trial_dir)
            checkpoints = sorted(trial_dir.glob("checkpoint_*"))
            if len(checkpoints) < 2 or not reports or reports[-1].get("is_final"):
                continue
            node = node_of(int(reports[-1]["pid"]), cluster)
            if node is None or node is cluster.head:
                continue
            killed.update(
                trial=reports[-1]["trial_id"], node=node.name, node_id=node.node_id(), pid=reports[-1]["pid"],
                iteration=reports[-1]["training_iteration"], time=time.time(),
            )  # fmt: skip
            killed["raylet"] = cluster.kill_raylet(node)
            return
        time.sleep(0.3)


def test_submit_runs_a_sweep_as_a_ray_job(cluster, tmp_path):
    """``ranksearch submit`` from a client that has only the dashboard URL and the token."""
    space = space_file(tmp_path, trials=2, evals=2, iterations=40)
    runs = tmp_path / "shared"
    laptop = cluster.env(PYTHONPATH=str(ROOT))
    laptop.pop("RAY_AUTH_MODE")  # submit turns token auth on for the client by itself
    args = ["submit", str(space), "--address", cluster.dashboard_url, "--name", "submitted", "--runs-dir",
            str(runs), "--follow"]  # fmt: skip
    proc = ranksearch(args, laptop)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "job ranksearch-submitted-" in out and "SUCCEEDED" in out, out[-3000:]
    assert "leaderboard by val/hm" in out  # the job's own output, streamed back
    assert cluster.token not in out
    rows = [t for t in study_trials(runs / "submitted") if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(rows) == 2

    # without the token the Jobs API refuses, and submit says so in one line (no traceback)
    no_token = {k: v for k, v in laptop.items() if not k.startswith("RAY_AUTH")}
    no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing-token")
    proc = ranksearch([*args[:-1], "--name", "refused"], no_token, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "token" in proc.stderr.lower(), proc.stderr
    assert not (runs / "refused").exists()


def test_sweep_joins_a_real_cluster_and_survives_a_raylet_kill(cluster, tmp_path):
    t0 = time.time()
    n = 4
    space = space_file(tmp_path, trials=n)
    runs = tmp_path / "runs"
    folder = runs / "real"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(
        target=kill_busy_worker, args=(cluster, folder / "tune", killed, stop), daemon=True
    )
    killer.start()
    try:
        args = ["sweep", str(space), "--address", cluster.address, "--runs-dir", str(runs), "--name", "real",
                "--no-live"]  # fmt: skip
        proc = ranksearch(args, cluster.env())
    finally:
        stop.set()
        killer.join(timeout=30)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert killed.get("raylet"), f"no worker raylet was killed while a trial ran\n{log}"
    assert killed["node_id"] not in cluster.alive_node_ids()  # the node really is gone
    # the user sees one line about the lost trial, no traceback, and no false alarm about Optuna
    assert "Traceback" not in proc.stderr and "did not accept" not in proc.stderr, proc.stderr[-4000:]

    # Tune: every trial completed once; the killed trial went on from its checkpoint on the other worker
    tune_trials = {p.name: results(p) for p in (folder / "tune").glob("*/") if (p / "result.json").exists()}
    assert len(tune_trials) == n, sorted(tune_trials)
    assert all(r[-1].get("is_final") and r[-1].get("status") == "completed" for r in tune_trials.values())
    reports = tune_trials[killed["trial"]]
    first = [r["training_iteration"] for r in reports if r["pid"] == killed["pid"]]
    retry = [r for r in reports if r["pid"] != killed["pid"]]
    assert first and retry, reports
    resumed_from = retry[0]["training_iteration"] - 1
    # from its last checkpoint (one per report; a report in flight at the kill may be lost), not from scratch
    assert resumed_from >= 1, [(r["pid"], r["training_iteration"]) for r in reports]
    assert max(first) - 1 <= resumed_from <= max(first), (first, resumed_from)
    assert node_of(retry[0]["pid"], cluster) in (None, cluster.nodes["b"])  # (ended with the sweep)
    iterations = [r["training_iteration"] for r in retry]
    assert iterations == list(range(resumed_from + 1, EVALS + 1)), iterations

    # Optuna: one COMPLETE trial per Tune trial, nothing else
    trials = study_trials(folder)
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(tune_trials)
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}

    # MLflow: one child run per trial, FINISHED, every evaluation once; the killed trial says it was retried
    manifest = json.loads((folder / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(manifest["experiment"])
    children = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
    assert sorted(c.data.tags["ranksearch.trial_id"] for c in children) == sorted(tune_trials)
    duplicates = lost = 0
    for c in children:
        assert c.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val/hm")]
        duplicates += len(steps) - len(set(steps))
        lost += len(set(range(1, EVALS + 1)) - set(steps))
        if c.data.tags["ranksearch.trial_id"] == killed["trial"]:
            assert c.data.tags.get("ranksearch.retries") == "1", c.data.tags
    assert duplicates == 0 and lost == 0

    record(
        "real_cluster_node_loss", count=1, trials=n, completed=n, failed_recorded=0, duplicates=duplicates,
        lost_points=lost, tracebacks=0, seconds=round(time.time() - t0),
        resumed_from_iteration=resumed_from,
    )  # fmt: skip
