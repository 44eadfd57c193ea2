"""Worker node loss: a worker of a 3-node ``ray.cluster_utils.Cluster`` is removed while its trials run.

The trials are retried (``FailureConfig``) and resume from their last checkpoint, not step 0; the sweep
completes all N trials; each has one MLflow child run whose metric history has no duplicated or missing step.
Issue 7, item 1.

The head has no CPUs, so every trial runs on one of the two workers and removing a worker always hits running
trials. The synthetic runner appends a line per evaluation to ``trials/<id>/progress.jsonl`` (node, pid,
step, the step it resumed from), which is how the test finds the node to remove and checks the resume step.
Runs in its own process-wide Ray (one at a time per process): module fixture, private RAY_TMPDIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from reliability_report import record

pytestmark = [pytest.mark.ray, pytest.mark.reliability]

N, EVALS, SECONDS_PER_EVAL = 4, 6, 1.0


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # private and short (socket paths < 107 bytes)
    os.makedirs(os.path.join(tmp, "ray"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False}
    )
    c.add_node(num_cpus=1, num_gpus=0)
    c.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=c.address)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


def _progress(folder: Path) -> dict[str, list[dict]]:
    """trial id -> its progress lines (every evaluation of every attempt)."""
    out = {}
    for f in folder.glob("trials/*/progress.jsonl"):
        lines = []
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                lines.append(json.loads(line))
        out[f.parent.name] = lines
    return out


def _kill_a_busy_worker(cluster, folder: Path, removed: dict, stop: threading.Event) -> None:
    """Wait until a worker runs a trial that has checkpointed twice but not finished, then remove that node."""
    deadline = time.time() + 120
    while not stop.is_set() and time.time() < deadline:
        for _tid, lines in _progress(folder).items():
            steps = [x["step"] for x in lines]
            if len(steps) >= 2 and max(steps) < 10 * EVALS:
                node_id = lines[-1]["node_id"]
                node = next((n for n in cluster.worker_nodes if n.node_id == node_id), None)
                if node is None:
                    continue
                busy = [t for t, ls in _progress(folder).items() if ls and ls[-1]["node_id"] == node_id]
                removed.update(node_id=node_id, time=time.time(), trials=busy)
                removed["last_step"] = {t: max(x["step"] for x in _progress(folder)[t]) for t in busy}
                cluster.remove_node(node, allow_graceful=False)
                return
        time.sleep(0.2)


def test_trials_survive_the_loss_of_a_worker_node(cluster, tmp_path):
    from ranksearch.sweep.tuner import run_sweep

    t0 = time.time()
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": EVALS}},
                "params": {"adapter.r": [1, 2, 4, 8]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "grid", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": N,
                "concurrency": 2,
                "resources": {"cpu": 1},  # one trial fills a worker
            }
        )
    )
    folder = tmp_path / "runs" / "nodes"
    removed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(cluster, folder, removed, stop), daemon=True)
    killer.start()
    try:
        result = run_sweep(
            space,
            name="nodes",
            storage=tmp_path / "runs",
            runner="synthetic",
            runner_options={"seconds_per_eval": SECONDS_PER_EVAL},
            live=False,
        )
    finally:
        stop.set()
        killer.join(timeout=30)
    assert removed.get("trials"), "no worker was removed while running a trial"

    # Tune: every trial completed, each once
    assert [r["status"] for r in result.rows] == ["completed"] * N, result.rows
    assert len({r["trial_id"] for r in result.rows}) == N

    # the trials of the lost node were retried and resumed from their last checkpoint, not from step 0
    progress = _progress(result.folder)
    for tid in removed["trials"]:
        attempts: dict[int, list[dict]] = {}
        for line in progress[tid]:
            attempts.setdefault(line["pid"], []).append(line)
        assert len(attempts) >= 2, (tid, progress[tid])
        first, *later = sorted(attempts.values(), key=lambda a: a[0]["time"])
        retry = later[0]
        assert retry[0]["node_id"] != removed["node_id"]
        resumed_from = retry[0]["resumed_from"]
        # its last checkpoint: the last evaluation it reported (one report in flight at the kill may be lost)
        assert resumed_from > 0, (tid, retry)
        assert max(x["step"] for x in first) - 10 <= resumed_from <= max(x["step"] for x in first), (
            tid,
            first,
        )
        assert retry[0]["step"] == resumed_from + 10  # continues with the next evaluation
        removed.setdefault("resumed_from", {})[tid] = resumed_from

    # MLflow: one child per trial, histories 1..EVALS with no duplicated or missing step
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    children = client.search_runs([exp.experiment_id], "tags.`ranksearch.kind` = 'trial'")
    assert sorted(c.data.tags["ranksearch.trial_id"] for c in children) == sorted(
        r["trial_id"] for r in result.rows
    )
    duplicates = lost = 0
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val/hm")]
        duplicates += len(steps) - len(set(steps))
        lost += len(set(range(1, EVALS + 1)) - set(steps))
        assert c.info.status == "FINISHED"
    assert duplicates == 0 and lost == 0
    retried = [c for c in children if c.data.tags["ranksearch.trial_id"] in removed["trials"]]
    assert all(c.data.tags.get("ranksearch.retries") == "1" for c in retried), [c.data.tags for c in retried]

    record(
        "node_loss",
        count=1,
        trials=N,
        completed=N,
        failed_recorded=0,
        duplicates=duplicates,
        lost_points=lost,
        tracebacks=0,
        seconds=round(time.time() - t0),
        retried_trials=len(removed["trials"]),
        resumed_from_steps=sorted(removed["resumed_from"].values()),
    )
