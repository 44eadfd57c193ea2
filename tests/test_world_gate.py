"""bench.world_gate: the quasi-random design, the resumable recorder, the replay table it writes, the gate."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest

from bench import world_gate as wg
from ranksearch.space.load import load_space


def test_design_is_a_deterministic_spread_over_the_space():
    space = load_space("search_spaces/all.yaml")
    a, b = wg.design(space, 40, seed=0), wg.design(space, 40, seed=0)
    assert a == b and a != wg.design(space, 40, seed=1)
    families = [p["adapter.family"] for p in a]
    assert set(families) == set(wg.FAMILIES)  # every family, roughly equally often (Sobol)
    assert max(families.count(f) for f in wg.FAMILIES) <= 12
    lrs = np.log10([p["train.lr"] for p in a])
    assert lrs.min() < -3.0 and lrs.max() > -2.0  # the log range 3e-4..3e-2 is covered end to end
    for p in a[:5]:  # every point is a valid trial config of the space
        assert space.trial_config(p).adapter.family == p["adapter.family"]
    assert wg.probes(space)[0] == space.default_params()  # probe 0 is the space's default trial


SPACE = """
name: gate-test
base:
  model: {name: rs-tiny-clip, pretrained: null}
  data: {task: world, domain: mixed, protocol: base2new, shots: 1, val_shots: 2, test_per_class: 1}
  train: {iterations: 16, augment: false}
  eval: {evals: 8, schedule: geometric, zero_shot: false}
  tracking: {enabled: false}
params:
  train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  placement.towers: [vision, text, both]
objective: {metric: val/hm, mode: max}
"""


@pytest.mark.slow
def test_recorder_resumes_and_writes_a_replay_table_and_the_gate(tmp_path, capsys):
    from ranksearch.replay.table import read_table

    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(SPACE))
    out = tmp_path / "rec"
    args = ["--out", str(out), "--space", str(space), "--configs", "3", "--seeds", "1,2", "--phase", "main"]
    assert wg.main([*args, "--max-minutes", "0"]) == 1  # stopped before the first run: nothing to gate yet
    assert wg.main([*args, "--jobs", "2"]) == 0  # two worker processes; each run appended as it ends
    lines = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["git_sha"] and "torch" in lines[0]["versions"]
    assert len(lines) == 1 + 1 + 3 * 2  # header, zero-shot, 3 configurations x 2 seeds
    table = read_table(out / "table.parquet")
    assert table.n_configs == 3 and list(table.n_seeds) == [2, 2, 2] and table.fidelities == 8
    assert list(table.steps[0, 0]) == [1, 2, 3, 4, 6, 8, 11, 16]  # geometric; 4 = 25 % of the steps
    assert (
        table.meta["command"].startswith("python -m bench.world_gate")
        and table.meta["space"] == space.read_text()
    )
    gate = json.loads((out / "gate.json").read_text())
    assert gate["runs"] == 6 and set(gate["checks"]) == {*wg.GATE, "differs_between_tasks"}
    assert gate["quarter_fidelity"] == 4
    # the recorded numbers, not made-up ones: the gate's figures follow from the runs
    finals = np.array([[r["curve"][-1]["val/hm"] for r in lines[1:] if r["kind"] == "main" and r["config"] == c]
                       for c in range(3)])  # fmt: skip
    assert gate["best_val_hm"] == pytest.approx(finals.mean(axis=1).max())
    assert gate["zero_shot_val_hm"] == pytest.approx(lines[1]["final"]["zs/val/hm"])
    # a second call runs nothing new
    capsys.readouterr()
    assert wg.main(args) == 0
    assert "7 of 7 runs already recorded" in capsys.readouterr().err
    assert len((out / "runs.jsonl").read_text().splitlines()) == 8
    # another space into the same folder is refused in one line (a table never mixes two designs)
    space.write_text(textwrap.dedent(SPACE).replace("1.0e-2", "2.0e-2"))
    assert wg.main(args) == 2
    assert "another space" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert wg.main(["--out", str(tmp_path), "--space", str(tmp_path / "nope.yaml")]) == 2
    assert wg.main(["--out", str(tmp_path), "--seeds", "1,x"]) == 2
    assert wg.main(["--out", str(tmp_path), "--configs", "0"]) == 2
    assert wg.main(["--out", str(tmp_path), "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error:") for line in err)


def _probe_run(
    kind: str, task: str, config: int, seed: int, towers: str, hm: float, family: str = "lora"
) -> dict:
    params = {"adapter.family": family, "placement.towers": towers, "placement.layers": "all"}
    return {"kind": kind, "task": task, "config": config, "seed": seed, "params": params,
            "curve": [{"val/hm": hm}], "final": {"trainable_params": 46080}}  # fmt: skip


def test_placement_is_compared_at_equal_parameters_once_recorded():
    """Both towers win every task unconstrained (one tower is a subset), so the check counts one choice; with the
    equal-parameter probes of every world task it compares seed means at equal cost, and there the best tower
    differs between tasks. The real-image task never counts for the world."""
    world = [t for t in wg.PROBE_TASKS if t not in wg.REAL_IMAGE_TASKS]
    runs = []
    for task in wg.PROBE_TASKS:
        for i, (towers, _) in enumerate(wg.PROBE_PLACEMENTS[:3]):
            runs.append(
                _probe_run("probe", task, i, 1, towers, {"both": 60, "vision": 50, "text": 40}[towers])
            )
    unconstrained = wg.task_choices(runs, {})
    assert not unconstrained["at_equal"] and len(unconstrained["choices"]) == 1
    # equal parameters: "text" best on the first world task (by its seed mean), "vision" on the others
    for task in wg.PROBE_TASKS:
        for i, (towers, _, _) in enumerate(wg.EQUAL_PARAMS):
            for seed, noise in ((1, 0.0), (2, 1.0)):
                best = "text" if task == world[0] else "vision"
                hm = (
                    55 + noise if towers == best else 50 + 2 * noise
                )  # seed 2 alone would rank them otherwise
                runs.append(_probe_run("equal", task, i, seed, towers, hm))
    c = wg.task_choices(runs, {})
    assert c["at_equal"] and c["choices"] == {("lora", "text/all"), ("lora", "vision/all")}
    assert len(c["unconstrained"]) == 1 and c["world_tasks"] == len(world)
    t = c["per_task"][world[0]]
    assert t["by_equal_params_placement"] == {"both/all": 51.0, "vision/all": 51.0, "text/all": 55.5}
    assert t["equal_params_seeds"] == 2 and t["equal_params_trainable"] == [46080]
    # beyond noise: pooled seed SD of the equal-parameter groups sqrt((0.5 + 2 + 2) / 3) per task, margin 2 x SD
    assert c["margin"] == pytest.approx(2 * math.sqrt(4.5 / 3) * math.sqrt(2 / 2))
    assert t["tied_with_best"] == ["text/all"] and c["widest_choice"] == ("lora", "vision/all")
    assert (
        c["beaten_beyond_noise"] == 1
    )  # vision/all is beaten beyond the margin on the first world task only
    # the same "best" per task, but by less than the noise: every placement ties, no task tells them apart
    close = [
        {**r, "curve": [{"val/hm": 50 + (0.2 if r["params"]["placement.towers"] == ("text" if r["task"] == world[0]
                                                                                       else "vision") else 0)
                          + 3 * (r["seed"] == 2)}]} if r["kind"] == "equal" else r
        for r in runs
    ]  # fmt: skip
    tied = wg.task_choices(close, {})
    assert tied["choices"] == c["choices"] and tied["beaten_beyond_noise"] == 0
    # one world task without its equal-parameter runs: the check falls back to the unconstrained placement
    partial = [r for r in runs if not (r["kind"] == "equal" and r["task"] == world[1])]
    assert not wg.task_choices(partial, {})["at_equal"]


def test_equal_parameter_probes_run_every_seed_with_their_rank_and_no_budget():
    space = load_space("search_spaces/all.yaml")
    jobs = wg._jobs(space, [], wg.probes(space), [1, 2, 3], "equal")
    assert len(jobs) == len(wg.PROBE_TASKS) * 3 * len(wg.EQUAL_PARAMS)
    for job in jobs[:3]:
        towers, layers, r = wg.EQUAL_PARAMS[job["config"]]
        config = space.trial_config(job["params"], overrides=wg._overrides(job), seed=job["seed"])
        assert (config.placement.towers, config.adapter.r, config.adapter.budget) == (towers, r, None)
    # equal cost: rank x adapted matrices is the same for every placement (both towers have width 128)
    blocks = {"both": 10, "vision": 6, "text": 4}
    assert len({r * blocks[towers] * 3 for towers, _, r in wg.EQUAL_PARAMS}) == 1
