"""``ranksearch replay`` and ``run_replay``: several searchers over many sweep seeds, scored with intervals.

On the small synthetic table of ``test_replay.py`` (32 configurations × 3 seeds × 4 fidelities) a comparison of
every method over a few seeds takes a few seconds. Checked: every method runs what it says (its sampler, its
scheduler, PRUNED vs COMPLETE for a stopped trial), the summary's intervals contain their medians, the same
seeds give the same summary, the CLI prints the gate first and names every bad argument at once, and the
statistics helpers behave at the edges (never reached, both never reached).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from ranksearch.cli import main
from ranksearch.errors import ConfigError
from ranksearch.replay import analysis
from ranksearch.replay.compare import methods, parse_budget, run_method
from ranksearch.replay.run import report_lines, run_replay
from ranksearch.replay.table import from_rows, write_table
from tests.test_replay import MO, PARAMS, space, table_rows


@pytest.fixture(scope="module")
def table():
    return from_rows(table_rows(), params=PARAMS, metrics=["val/hm", "trainable_params"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, table):
    folder = tmp_path_factory.mktemp("replay")
    write_table(table, folder / "t.parquet")
    data = {
        "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}, "adapter.r": [1, 2, 4, 8],
                   "placement.towers": ["vision", "both"]},
        "objective": {"metric": "val/hm", "mode": "max"},
        "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "concurrency": 4,
    }  # fmt: skip
    (folder / "s.yaml").write_text(yaml.safe_dump(data))
    (folder / "mo.yaml").write_text(yaml.safe_dump({**data, "objective": MO}))
    return folder


def run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------------------------- methods
def test_each_method_runs_its_own_sampler_and_scheduler(table):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ranksearch.sweep.searcher import PruneAwareOptunaSearch

    ms = methods(space())
    seen = {}
    for name, m in ms.items():
        trace = run_method(table, m, 0, workers=4, budget_s=150)
        sampler = type(trace.study.sampler).__name__
        pruned = sum(r.state == "PRUNED" for r in trace.records if r.end_s < trace.wall_s)
        seen[name] = (sampler, pruned > 0, type(trace.searcher))
    assert seen["random"][:2] == ("RandomSampler", False)
    assert seen["random+asha"][:2] == ("RandomSampler", True)
    assert seen["tpe"][:2] == ("WindowedTPESampler", False)  # the sweep's TPE (ranksearch.space.tpe_window)
    assert seen["tpe+asha"][:2] == ("WindowedTPESampler", True)
    assert seen["default"][:2] == ("WindowedTPESampler", True)
    assert seen["ray-stock"][2] is OptunaSearch and seen["default"][2] is PruneAwareOptunaSearch
    assert isinstance(methods(space())["ray-stock"].scheduler(space(), 4), ASHAScheduler)
    assert "nsga2" in methods(space(objective=MO)) and "nsga2" not in methods(space())


def test_ray_stock_tells_optuna_complete_where_ranksearch_tells_pruned(table):
    """The difference the PRUNED handling makes: Ray's OptunaSearch records a stopped trial's truncated value."""
    ms = methods(space())
    stock = run_method(table, ms["ray-stock"], 0, workers=4, budget_s=400)
    ours = run_method(table, ms["tpe+asha"], 0, workers=4, budget_s=400)
    stopped = [r for r in stock.records if r.state == "PRUNED" and r.end_s < stock.wall_s]
    assert stopped
    states = {t.number: t.state.name for t in stock.searcher._ot_study.trials}
    # Ray numbers Optuna trials in suggestion order, as our trial ids are
    assert all(states[int(r.trial_id)] == "COMPLETE" for r in stopped)
    ours_stopped = [r for r in ours.records if r.state == "PRUNED" and r.end_s < ours.wall_s]
    assert ours_stopped and all(
        ours.study.trials[int(r.trial_id)].state.name == "PRUNED" for r in ours_stopped
    )
    # the same sampler and scheduler in Ray's own OptunaSearch: only the state of a stopped trial differs
    complete = run_method(table, methods(space(), ["tpe+asha-complete"])["tpe+asha-complete"], 0, workers=4,
                          budget_s=400)  # fmt: skip
    sampler = complete.searcher._ot_study.sampler
    assert type(sampler) is type(ours.study.sampler) and sampler._n_ei_candidates == 64
    stopped = [r for r in complete.records if r.state == "PRUNED" and r.end_s < complete.wall_s]
    assert stopped and all(
        complete.searcher._ot_study.trials[int(r.trial_id)].state.name == "COMPLETE" for r in stopped
    )


def test_grace_auto_is_the_first_fidelity_that_ranks_like_the_final(table):
    from ranksearch.replay.compare import compare

    noise = analysis.noise_report(table, "val/hm")
    # the synthetic curves rise by the same 8/f for every configuration: rank already at fidelity 1
    assert analysis.choose_grace_period(noise) == 1
    flat = analysis.NoiseReport("m", 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0, [0.1, 0.3, 0.6, 0.9])
    assert analysis.choose_grace_period(flat) == 3
    assert analysis.choose_grace_period(analysis.NoiseReport("m", 1, 1, 1, 1, 1, 1, 1, [0.1, math.nan])) == 2
    c = compare(table, space(), seeds=1, budget_s=200, names=["random+asha"], grace=3)
    assert c.grace_period() == 3 and c.summary()["grace_period"] == 3
    assert all(
        r.fidelity >= 3
        for r in c.traces["random+asha"][0].records
        if r.end_s < c.traces["random+asha"][0].wall_s
    )


# --------------------------------------------------------------------------------------------- summary
def test_summary_medians_lie_in_their_intervals_and_repeat_exactly(table):
    _, a = run_replay(table, space(), seeds=4, budget="300s")
    _, b = run_replay(table, space(), seeds=4, budget="300s")
    assert json.dumps(a["methods"], sort_keys=True, default=str) == json.dumps(
        b["methods"], sort_keys=True, default=str
    )
    assert set(a["methods"]) == {"random", "random+asha", "tpe", "tpe+asha", "default", "ray-stock"}
    for m in a["methods"].values():
        for key in ("final_regret", "reach_1sd_s", "reach_random_final", "reach_1sd_vs_random"):
            point, lo, hi = m[key]
            assert lo <= point <= hi or (math.isinf(point) and math.isinf(hi)), (key, m[key])
        assert m["final_regret"][0] >= 0
    assert a["methods"]["random"]["reach_1sd_vs_random"][0] in (1.0, 0.0) or math.isnan(
        a["methods"]["random"]["reach_1sd_vs_random"][0]
    )
    lines = report_lines({**a, "workers": 4})
    assert lines[0].startswith("gate") and "seed SD" in "\n".join(lines[:4])


def test_multi_objective_summary_has_hypervolume_against_random_and_nsga2(table):
    c, s = run_replay(
        table, space(objective=MO), seeds=3, budget="300s", methods=["random", "nsga2", "default"]
    )
    for name in ("random", "nsga2", "default"):
        m = s["methods"][name]
        assert 0 < m["hypervolume"][0] <= 1.0 + 1e-9
        assert "hypervolume_vs_random" in m and "hypervolume_vs_nsga2" in m
    assert s["methods"]["random"]["hypervolume_vs_random"][0] == pytest.approx(1.0)
    # before any trial ended nothing is chosen; the curve can fall later (a lucky seed of a worse
    # configuration can push a better one off the observed front), so only its ends are pinned
    hv = c.hypervolume("default")
    assert np.all(hv[:, 0] == 0) and np.all(hv[:, -1] > 0)


def test_regret_is_scored_by_the_chosen_configurations_true_value(table):
    trace = run_method(table, methods(space())["random"], 0, workers=4, budget_s=300)
    grid = np.array([0.0, math.inf])
    curve = analysis.regret_curve(trace, table, space(), grid)
    best_obs = max((r for r in trace.records if r.state == "COMPLETE"), key=lambda r: r.values[0])
    top = analysis.best_true(table, space())
    assert curve[-1] == pytest.approx(top - table.true_final("val/hm")[best_obs.config])
    assert curve[0] == pytest.approx(top - analysis.worst_true(table, space()))  # nothing chosen yet


# ---------------------------------------------------------------------------------------------- helpers
def test_bootstrap_helpers_at_the_edges():
    x = np.arange(50, dtype=float)
    point, lo, hi = analysis.bootstrap_median(x)
    assert point == 24.5 and lo < point < hi
    assert analysis.bootstrap_ratio(x + 1, x + 1)[0] == 1.0
    never = np.full(10, math.inf)
    assert analysis.bootstrap_ratio(np.ones(10), never) == (0.0, 0.0, 0.0)  # reached vs never: no cost at all
    assert analysis.bootstrap_ratio(never, np.ones(10))[0] == math.inf
    assert analysis.bootstrap_ratio(never, never)[1:] == (math.inf, math.inf)  # both never: no evidence
    curves = np.array([[3.0, 2.0, 1.0, 1.0], [3.0, 3.0, 2.0, 1.0]])
    assert analysis.reach_fraction(curves, 1.5, np.array([0.0, 1.0, 2.0, 4.0])) == 0.5


@pytest.mark.parametrize(
    "text,expected", [("3600", 3600.0), ("3600s", 3600.0), ("90m", 5400.0), ("2h", 7200.0), (" 2H ", 7200.0)]
)
def test_budget_forms(table, text, expected):
    assert parse_budget(text, table) == expected


def test_budget_in_full_runs_is_the_median_configurations_cost(table):
    assert parse_budget("10x", table) == pytest.approx(10 * float(np.median(table.full_cost())))


@pytest.mark.parametrize("text", ["", "x", "-1h", "0", "nan", "infs", "1e400", "3q", "2hh"])
def test_bad_budgets_are_config_errors(table, text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text, table)


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_prints_the_gate_then_one_line_per_method(files, capsys):
    code, out, err = run(["replay", str(files / "t.parquet"), "--space", str(files / "s.yaml"), "--seeds", "3",
                          "--budget", "300s", "--methods", "random,default", "--out", str(files / "out")], capsys)  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("gate (measured before any claim)")
    assert sum(line.strip().startswith(("random ", "default ")) for line in lines) == 2
    assert "new study created" not in out + err  # Optuna's per-study chatter is silenced
    summary = json.loads((files / "out" / "summary.json").read_text())
    assert summary["seeds"] == 3 and set(summary["methods"]) == {"random", "default"}
    assert (files / "out" / "regret.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_json_is_the_api_summary(files, capsys, table):
    code, out, _ = run(["replay", str(files / "t.parquet"), "--space", str(files / "mo.yaml"), "--seeds", "2",
                        "--budget", "300s", "--methods", "random,nsga2", "--json"], capsys)  # fmt: skip
    assert code == 0
    got = json.loads(out)
    _, want = run_replay(
        files / "t.parquet", files / "mo.yaml", seeds=2, budget="300s", methods=["random", "nsga2"]
    )
    assert got["methods"]["nsga2"]["hypervolume"] == pytest.approx(want["methods"]["nsga2"]["hypervolume"])


def test_cli_names_every_bad_argument_at_once(files, capsys, tmp_path):
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text(
        yaml.safe_dump({"params": {"train.momentum": [0.9]}, "objective": {"metric": "val/acc"}})
    )
    code, out, err = run(["replay", str(files / "t.parquet"), "--space", str(bad_space), "--seeds", "0",
                          "--budget", "3q", "--methods", "random,foo", "--grace", "9"], capsys)  # fmt: skip
    text = out + err
    assert code == 2 and "Traceback" not in text
    for expected in ("--seeds", "--budget", "--methods", "foo", "--grace", "train.momentum", "val/acc"):
        assert expected in text, text
    code, out, err = run(["replay", str(tmp_path / "none.parquet"), "--space", str(bad_space)], capsys)
    assert (
        code == 2 and "none.parquet: no such file" in out + err and len((out + err).strip().splitlines()) == 1
    )
