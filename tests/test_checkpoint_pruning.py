"""Bounded checkpoint storage (``sweep.checkpoints.CheckpointPruner``): latest + best per trial, deleted only once
Tune's experiment snapshot has moved on. The driver-kill race this must not reopen is tests/test_sweep_resume.py."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ranksearch.sweep.checkpoints import CheckpointPruner, named_checkpoints
from ranksearch.sweep.trainable import load_checkpoint


def _pruner(tmp_path: Path, keep: str = "best") -> CheckpointPruner:
    return CheckpointPruner(str(tmp_path), "val/hm", "max", keep=keep)


def _report(p: CheckpointPruner, trial: str, index: int, value: float) -> None:
    t = SimpleNamespace(trial_id=trial, last_result={"val/hm": value})
    p.on_checkpoint(0, [], t, SimpleNamespace(path=f"/runs/s/tune/{trial}/checkpoint_{index:06d}"))


def _paths(p: CheckpointPruner, trial: str) -> list[int]:
    return [int(s.path[-6:]) for s in p._saved[trial]]


def test_nothing_the_snapshot_names_or_may_need_is_deleted(tmp_path):
    p = _pruner(tmp_path)
    for i, value in enumerate([1.0, 5.0, 3.0, 2.0, 4.0]):  # best is 1
        _report(p, "a", i, value)
    assert p.deletable({}) == []  # no snapshot (or not this trial): nothing
    assert p.deletable({"a": 0}) == []  # the snapshot names 0: it stays
    # the snapshot names 2: 0 can go; 1 (best), 2 (named), 3 (newer than the snapshot knows) and 4 stay
    assert [Path(x).name for x in p.deletable({"a": 2})] == ["checkpoint_000000"]
    assert p.deletable({"a": 2}) == []
    assert _paths(p, "a") == [1, 2, 3, 4]
    # once the snapshot names the latest, only latest + best are left
    assert sorted(Path(x).name for x in p.deletable({"a": 4})) == ["checkpoint_000002", "checkpoint_000003"]
    assert _paths(p, "a") == [1, 4]


def test_keep_latest_and_keep_all(tmp_path):
    latest, every = _pruner(tmp_path, "latest"), _pruner(tmp_path, "all")
    for i, value in enumerate([9.0, 1.0, 2.0]):
        _report(latest, "a", i, value)
        _report(every, "a", i, value)
    assert len(latest.deletable({"a": 2})) == 2 and _paths(latest, "a") == [2]
    assert every.deletable({"a": 2}) == [] and every._saved == {}
    assert (
        CheckpointPruner(str(tmp_path), "val/hm", "max", keep="sometimes").keep == "all"
    )  # a typo keeps all


def test_the_snapshot_is_read_not_unpickled(tmp_path):
    """Checkpoint paths inside Tune's cloudpickle blobs (hex in JSON in JSON) are found as bytes."""
    from ray.tune.utils.serialization import TuneFunctionEncoder

    class Manager:  # stands in for Tune's _CheckpointManager: not JSON-serialisable, so Tune cloudpickles it
        def __init__(self, paths):
            self.paths = paths

    meta = json.dumps({"checkpoint_manager": Manager(["/r/tune/ab12/checkpoint_000003", "ab12/checkpoint_000007"])},
                      cls=TuneFunctionEncoder)  # fmt: skip
    state = {"trial_data": [[json.dumps({"trial_id": "ab12"}), meta]], "runner_data": {}}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    assert "checkpoint_00000" not in meta  # only inside the hex blob
    assert named_checkpoints(tmp_path)["ab12"] == 7
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')  # half copied
    assert named_checkpoints(tmp_path) == {}


def _named_in_child(folder: str, queue) -> None:
    queue.put(named_checkpoints(folder))


def test_the_snapshot_scan_is_linear_in_long_runs_of_name_characters(tmp_path):
    """A 2 MB run of name characters (hex pickles in big sweeps' snapshots) with marks after it: the scan ends and
    reads each folder name back to the mark. The earlier name-first regex retried every start inside the run
    (quadratic: hours here; ~0.1 s per trial, 8 minutes per pruning round, in a 5,000-trial sweep)."""
    import multiprocessing

    run = "0123456789abcdef" * (2**21 // 16)
    state = {"trial_data": [[json.dumps({"trial_id": "cd34"}),
                             json.dumps({"blob": run + "/x-1.y_z/checkpoint_000004 " + run + "cd34/checkpoint_000002"})]],
             "runner_data": {}}  # fmt: skip
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_named_in_child, args=(str(tmp_path), queue))
    child.start()
    try:  # read before joining: the child exits only once its result (megabytes) has left the pipe
        named = queue.get(timeout=120)  # a hang guard (spawn and imports take seconds), not a speed target
    except Exception as e:
        raise AssertionError("named_checkpoints did not end within 120 s on a 4 MB snapshot") from e
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert named["x-1.y_z"] == 4
    assert named[run + "cd34"] == 2  # the whole run of name characters before the mark, as the regex read it


def _checkpoints(folder: Path) -> dict[str, list[Path]]:
    return {t.name: sorted(t.glob("checkpoint_*")) for t in (folder / "tune").iterdir() if t.is_dir()}


@pytest.mark.ray
@pytest.mark.slow  # a real sweep (~30 s)
def test_a_sweep_keeps_latest_and_best_whatever_the_number_of_evaluations(tmp_path, monkeypatch):
    import ray

    from ranksearch.sweep.tuner import run_sweep

    evals, peak = 10, 3
    monkeypatch.setenv("RANKSEARCH_PRUNE_EVERY_S", "0.5")
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": {"model": {"pretrained": None}, "eval": {"evals": evals}},
                "params": {"adapter.r": [1, 2]},
                "objective": {"metric": "val/hm"},
                "sampler": {"type": "grid", "seed": 0},
                "early_stopping": {"type": "none"},
                "trials": 2,
                "concurrency": 2,
                "resources": {"cpu": 1, "gpu": 0},
            }
        )
    )
    folder = tmp_path / "runs" / "prune"
    most = {"n": 0, "pruned_while_running": False}
    done = threading.Event()

    def watch() -> None:  # the most checkpoints any trial held at once while the sweep ran
        while not done.is_set():
            if (folder / "tune").is_dir():
                held = _checkpoints(folder).values()
                most["n"] = max([most["n"], *(len(c) for c in held)])
                # a trial's first checkpoint gone while it still reports: pruned during the run, not at the end
                running = [c for c in held if c and not c[-1].name.endswith(f"{evals - 1:06d}")]
                if any(c[0].name != "checkpoint_000000" for c in running):
                    most["pruned_while_running"] = True
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert not ray.is_initialized()
    try:
        result = run_sweep(
            space, name="prune", storage=tmp_path / "runs", runner="synthetic", live=False,
            runner_options={"seconds_per_eval": 2.0, "peak_at": peak},
            ray_init={"num_cpus": 2, "_temp_dir": tempfile.mkdtemp(prefix="rsp", dir="/tmp")},
        )  # fmt: skip
    finally:
        done.set()
        thread.join(timeout=10)
    assert [r["status"] for r in result.rows] == ["completed"] * 2
    kept = _checkpoints(folder)
    assert len(kept) == 2
    for trial, paths in kept.items():
        # evals reports = evals - 1 evaluation checkpoints + the final one; only latest + best are left
        assert len(paths) == 2, (trial, paths)
        best_meta, best_state = load_checkpoint(paths[0])
        final_meta, _ = load_checkpoint(paths[1])
        assert best_state is not None and best_state["step"] == 10 * peak, best_state
        assert final_meta["final"] is not None and final_meta["final"]["status"] == "completed"
    # while it ran: latest, best, the snapshot's restore point, and what arrived since the snapshot Tune last
    # copied into tune/ was taken and the last pruning round (every 0.5 s here, or 20x the time a round took:
    # seconds on a loaded machine), so the count during a run depends on the load; never all of them
    assert most["pruned_while_running"] and most["n"] < evals, most
