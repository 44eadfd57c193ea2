"""bench.search_efficiency: the case of our own recorded table (its space, its table, its interim label)."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench import search_efficiency as se
from bench import world_gate as wg

ROOT = Path(__file__).resolve().parents[1]
ALL = ROOT / "search_spaces" / "all.yaml"


def test_world_space_is_the_recorded_space_with_its_first_objective():
    """bench/spaces/world.yaml may differ from search_spaces/all.yaml (what bench.world_gate records) only in its
    name and in keeping the first objective alone: the replayed space is the recorded one."""
    recorded, replayed = yaml.safe_load(ALL.read_text()), yaml.safe_load(se.WORLD_SPACE.read_text())
    first = recorded["objective"][0]
    assert replayed.pop("objective") == first == {"metric": "val/hm", "mode": "max"}
    recorded.pop("objective"), recorded.pop("name"), replayed.pop("name")
    assert replayed == recorded
    assert se.WORLD_TABLE == ROOT / "bench" / "data" / "world" / "table.parquet"


def test_world_space_replays_against_a_table_as_the_recorder_writes_it():
    from ranksearch.replay.run import load_replay_space
    from ranksearch.space.load import load_space

    configs = wg.design(load_space(ALL), 8)
    runs = [
        {"config": i, "seed": s, "params": p,
         "curve": [{"step": f + 1, "cost_s": 2.0 * (f + 1), wg.METRIC: 50.0 + i + s + f, "trainable_params": 100 + i}
                   for f in range(8)]}
        for i, p in enumerate(configs) for s in (1, 2)
    ]  # fmt: skip
    table = wg.build_table(runs, ALL.read_text(), {"command": "test", "versions": {}, "git_sha": "0"})
    space = load_replay_space(se.WORLD_SPACE, table)
    assert [o.metric for o in space.spec.objectives] == ["val/hm"]
    assert sorted(space.families) == sorted(load_replay_space(ALL, table).families)


def _summary(n_configs: int) -> dict:
    ci = [0.4, 0.2, 0.9]
    method = {"reach_1sd_s": [60.0, 30.0, 90.0], "reached_1sd": 50, "pruned": 3.0}
    return {
        "noise": {"variance_explained": 0.9, "seed_spearman": 0.9, "n_configs": n_configs, "n_runs": 3 * n_configs,
                  "seed_sd": 1.0, "top_seed_sd": 0.5, "between_sd": 5.0, "early_final_spearman": [0.8, 0.9]},
        "aa": {"reach_1sd_vs_random": ci}, "seeds": 50, "workers": 4, "budget": "100x", "budget_s": 3600.0,
        "tolerance": 0.5, "grace_period": 2,
        "methods": {"random": method, "ray-stock": method,
                    "default": {**method, "reach_1sd_vs_random": ci, "reach_1sd_vs_ray_stock": ci}},
    }  # fmt: skip


def test_world_rows_below_the_issues_table_size_say_they_are_interim():
    (case,) = [c for c in se.cases(quick=True) if c.key == "world"]
    rows = se.rows_for(case, _summary(64))
    assert len(rows) == 3
    for row in rows:
        assert "interim (64 configurations)" in row.name
        assert row.note.startswith("INTERIM: a 64-configuration table")
        assert "not the issue's part 3" in row.note
    full = se.rows_for(case, _summary(se.WORLD_MIN_CONFIGS))
    assert not any("interim" in r.name.lower() or "INTERIM" in r.note for r in full)


def test_a_ratio_over_a_searcher_that_rarely_got_there_is_shown_and_judged_as_a_bound():
    """Random search within one seed-SD in under half the sweeps: its median is past the budget, so default /
    random is 0 by arithmetic; the row shows the bound (the default's median over the budget) and judges that."""
    (case,) = [c for c in se.cases(quick=True) if c.key == "world"]
    s = _summary(se.WORLD_MIN_CONFIGS)
    s["methods"]["random"] = {
        "reach_1sd_s": [float("inf"), 900.0, float("inf")],
        "reached_1sd": 20,
        "pruned": 0,
    }
    s["methods"]["default"]["reach_1sd_vs_random"] = [0.0, 0.0, float("inf")]
    s["methods"]["default"]["reach_1sd_s"] = [2400.0, 1000.0, float("inf")]  # 2/3 of the 3600 s budget
    vs_random, vs_stock = se.rows_for(case, s)[1:]
    assert vs_random.measured == "≤ 0.67 (random got there in 20/50 sweeps)" and vs_random.met is False
    s["methods"]["default"]["reach_1sd_s"] = [1200.0, 1000.0, float("inf")]
    vs_random, vs_stock = se.rows_for(case, s)[1:]
    assert vs_random.measured.startswith("≤ 0.33 (") and vs_random.met is True
    assert (
        vs_stock.measured == "0.40 [0.20, 0.90]" and vs_stock.met is True
    )  # ray-stock got there: the plain ratio
    assert case.budget == se.WORLD_BUDGET == "300x" and f"--budget {se.WORLD_BUDGET}" in case.command
