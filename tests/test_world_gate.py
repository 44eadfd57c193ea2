"""bench.world_gate: the quasi-random design, the resumable recorder, the replay table it writes, the gate."""

from __future__ import annotations

import json
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
