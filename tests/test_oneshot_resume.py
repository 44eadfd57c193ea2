"""A one-shot sweep SIGKILLed in its retrain phase and resumed: finished retrains are kept, not trained again, and
the retrain cut mid-way continues from its checkpoint to the result an uninterrupted retrain gets.

The drivers run as subprocesses with their own one-CPU local Ray (this process starts none), so the two retrains
run one after the other and the kill can land after the first ended and inside the second; each driver runs in a
new session so the Ray processes the killed one leaves behind are ended by their session, which only this test
created (``driver_process``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import driver_process
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # two real drivers, ~2 min on 2 busy cores

SPACE = {
    "name": "osr",
    "base": {
        "model": {"name": "rs-tiny-clip", "pretrained": "shapeworld", "device": "cpu"},
        "data": {"task": "shapeworld", "shots": 4, "test_per_class": 2},
        "adapter": {"family": "lora", "dropout": 0.0},
        "placement": {"towers": "both", "matrices": ["q", "v"]},
        "train": {"iterations": 120, "batch_size": 16, "augment": False, "lr": 1.5e-2},
        "eval": {"evals": 3, "zero_shot": False},  # checkpoints at steps 40, 80, 120
    },
    "search": {"mode": "one-shot", "ranks": [0, 1, 2, 4], "sandwich_random": 1, "evaluations": 24, "top_k": 2,
               "budget": {"total_params": 3000}},
    "objective": {"metric": "val/hm", "mode": "max"},
    "concurrency": 1,
    "resources": {"cpu": 1, "gpu": 0},
}  # fmt: skip

DRIVER = """
import json, sys
from pathlib import Path
from ranksearch.sweep.tuner import run_sweep
space, storage, resume, tmp = sys.argv[1:5]
r = run_sweep(space, name="osr", storage=Path(storage), resume=resume == "1", live=False,
              ray_init={"num_cpus": 1, "_temp_dir": tmp})
print("RESULT " + json.dumps(r.oneshot))
"""


def start_driver(tmp: Path, resume: bool) -> subprocess.Popen:
    args = [str(tmp / "space.yaml"), str(tmp / "runs"), str(int(resume))]
    return driver_process.start_driver(DRIVER, args, tmp / f"driver-{int(resume)}.log")


def cut_step(folder: Path) -> int | None:
    """The step of a retrain's checkpoint (None: none, or it ended). The file is replaced atomically."""
    import torch

    if (folder / "retrain.json").exists():
        return None
    try:
        return int(torch.load(folder / "checkpoint.pt", weights_only=True)["step"])
    except FileNotFoundError:
        return None


def test_resume_in_the_retrain_phase_keeps_finished_retrains_and_continues_the_cut_one(tmp_path):
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from ranksearch.config import load_trial_config
    from ranksearch.pretrain import ensure_checkpoint
    from ranksearch.sweep.folder import Manifest
    from ranksearch.trial import run_trial

    ensure_checkpoint("rs-tiny-clip", progress=False)  # before the drivers: neither pretrains it
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    trials = tmp_path / "runs" / "osr" / "trials"

    first = start_driver(tmp_path, resume=False)
    deadline = time.time() + 400
    try:
        # kill once one retrain has ended and the other is past its first checkpoint but not at its last (at
        # step 120 it ends within milliseconds): the session is frozen, checked again, then killed at once
        while True:
            done = sorted(trials.glob("*/retrain.json"))
            cut = [p.parent for p in trials.glob("*/checkpoint.pt") if cut_step(p.parent) in (40, 80)]
            if done and cut:
                driver_process.freeze_session(first)
                if cut_step(cut[0]) in (40, 80):
                    break
                driver_process.signal_session(first, signal.SIGCONT)
            assert first.poll() is None, (tmp_path / "driver-0.log").read_text()[-3000:]
            assert len(done) < 2, "both retrains ended before the kill (the second ran too fast to catch)"
            assert time.time() < deadline, "the first driver did not reach its second retrain in time"
            time.sleep(0.05)
    finally:
        driver_process.kill_session(first, driver_first=False)
    finished, cut_dir = done[0].parent, cut[0]
    finished_stamp = (
        (finished / "retrain.json").stat().st_mtime_ns,
        (finished / "adapter.safetensors").read_bytes(),
    )
    step = cut_step(cut_dir)
    assert step in (40, 80)  # past its first checkpoint, not ended
    supernet_stamp = (tmp_path / "runs" / "osr" / "supernet" / "adapter.safetensors").stat().st_mtime_ns

    second = start_driver(tmp_path, resume=True)
    try:
        second.wait(timeout=400)
    finally:
        if second.poll() is None:
            driver_process.kill_session(second, driver_first=False)
    out = (tmp_path / "driver-1.log").read_text()
    assert second.returncode == 0, out[-4000:]
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    folder = tmp_path / "runs" / "osr"

    # nothing finished is trained again: the supernet and the ended retrain are the files the first driver wrote
    assert (folder / "supernet" / "adapter.safetensors").stat().st_mtime_ns == supernet_stamp
    assert (
        (finished / "retrain.json").stat().st_mtime_ns,
        (finished / "adapter.safetensors").read_bytes(),
    ) == (finished_stamp)
    # the cut retrain continued from its checkpoint, and ends where an uninterrupted retrain ends
    cont = json.loads((cut_dir / "retrain.json").read_text())
    assert cont["status"] == "completed" and cont["resumed_from_step"] == step
    assert not (cut_dir / "checkpoint.pt").exists()
    assert [h["step"] for h in cont["history"]] == [40.0, 80.0, 120.0]
    ref = run_trial(load_trial_config(cut_dir / "config.yaml"), output_dir=tmp_path / "ref", progress=False)
    assert ref.metrics["val/hm"] == pytest.approx(cont["metrics"]["val/hm"], abs=1e-9)
    a, b = load_file(cut_dir / "adapter.safetensors"), load_file(tmp_path / "ref" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # the summary, trials.parquet and MLflow hold both retrains once, completed
    rows = summary["rows"]
    assert sorted(r["trial"] for r in rows) == sorted(f"trials/{d.name}" for d in (finished, cut_dir))
    assert all(r["status"] == "completed" and r["retrained"] is not None for r in rows)
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "trials.parquet").to_pylist()
    assert sorted(t["trial_id"] for t in table) == sorted([finished.name, cut_dir.name])
    assert all(t["status"] == "completed" for t in table)
    manifest = Manifest.load(folder)
    client = MlflowClient(tracking_uri=manifest.tracking_uri)
    exp = client.get_experiment_by_name(manifest.experiment)
    runs = client.search_runs([exp.experiment_id])
    retrains = [r for r in runs if r.data.tags.get("ranksearch.kind") == "retrain"]
    assert sorted(r.data.tags["ranksearch.trial_id"] for r in retrains) == sorted(
        [finished.name, cut_dir.name]
    )
    assert len(runs) == 1 + 2 + 2  # parent, supernet, evaluations, two retrains: no duplicate children
    for r in retrains:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/hm")] == [40, 80, 120]
        assert len(client.get_metric_history(r.info.run_id, "oneshot/estimate")) == 1
