"""The replay table: a recorded sweep (or a third-party benchmark) as one parquet file, public and documented.

One row per **configuration × seed × fidelity**:

==================  ==========  ====================================================================
column              type        meaning
==================  ==========  ====================================================================
``config_id``       int64       the configuration (same parameter values on all its rows)
*parameters*        any         one column per searched parameter, named by its trial-config field path
                                (``adapter.family``, ``train.lr``, ``placement.matrices``); list values as
                                the search space encodes them (``"q,k,v"``); null where a parameter does
                                not apply (another family's parameter)
``seed``            int64       the replicate seed of this run
``fidelity``        int64       1..E: the evaluation index (the E-th is the final result)
``step``            int64       training step (or epoch, or training-set size) at that evaluation
*metrics*           float64     one column per metric (``val/hm``, ``trainable_params``, ...); NaN where the
                                run has no value (a failed run at and after the point it failed)
``cost_s``          float64     cumulative seconds this run needed to reach this fidelity
==================  ==========  ====================================================================

The parquet schema metadata key ``ranksearch`` holds a JSON object: ``format`` (``"ranksearch-replay-table"``),
``version`` (1), ``params`` and ``metrics`` (the column names above, so parameters and metrics are never
guessed), and, for provenance, ``objectives`` (``[{"metric": ..., "mode": "max"|"min"}]``), ``command``,
``versions``, ``git_sha``, ``space`` (the search-space YAML the table was recorded with), ``source``,
``description``. Every configuration must have the same fidelities 1..E on every seed; seeds may differ in
number between configurations.

``write_table`` validates and writes (atomically); ``read_table`` reads and validates; both raise
``ConfigError`` listing every problem, with its column. ``Table`` is the in-memory form the replay uses:
dense ``[config, seed, fidelity]`` arrays.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ranksearch.errors import ConfigError

FORMAT, VERSION, META_KEY = "ranksearch-replay-table", 1, b"ranksearch"
KEYS = ("config_id", "seed", "fidelity", "step", "cost_s")


@dataclass
class Table:
    """A validated replay table as dense arrays.

    Attributes:
        params: parameter column names.
        metrics: metric column names.
        configs: per parameter, the value of each configuration (``[n_configs]`` object arrays, None = null).
        config_ids: the ``config_id`` of each configuration (``[n_configs]``).
        values: per metric, ``[n_configs, max_seeds, E]`` floats (NaN: no value / no such seed).
        cost: ``[n_configs, max_seeds, E]`` cumulative seconds (NaN: no such seed).
        steps: ``[n_configs, max_seeds, E]`` steps.
        n_seeds: seeds per configuration (``[n_configs]``); seeds of config i are ``[:n_seeds[i]]``.
        seeds: the seed numbers, ``[n_configs, max_seeds]`` (-1 past ``n_seeds``).
        meta: the metadata object (see the module docstring).
    """

    params: list[str]
    metrics: list[str]
    configs: dict[str, np.ndarray]
    config_ids: np.ndarray
    values: dict[str, np.ndarray]
    cost: np.ndarray
    steps: np.ndarray
    n_seeds: np.ndarray
    seeds: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_configs(self) -> int:
        return len(self.config_ids)

    @property
    def fidelities(self) -> int:
        """E: evaluations per run."""
        return int(self.cost.shape[2])

    @property
    def objectives(self) -> list[dict[str, str]]:
        return list(self.meta.get("objectives") or [])

    def true_final(self, metric: str) -> np.ndarray:
        """Each configuration's seed-mean final value (``[n_configs]``; NaN if no seed has one)."""
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN configs: NaN, on purpose
                return np.nanmean(self.values[metric][:, :, -1], axis=1)

    def full_cost(self) -> np.ndarray:
        """Each configuration's seed-mean cost of a full run (``[n_configs]``)."""
        return np.nanmean(self.cost[:, :, -1], axis=1)

    def config(self, i: int) -> dict[str, Any]:
        """Parameter values of configuration ``i`` (nulls left out)."""
        return {p: _py(self.configs[p][i]) for p in self.params if self.configs[p][i] is not None}

    def to_rows(self) -> list[dict[str, Any]]:
        """The table as rows (the inverse of ``from_rows``)."""
        rows = []
        for i in range(self.n_configs):
            cfg = {p: _py(self.configs[p][i]) for p in self.params}
            for s in range(int(self.n_seeds[i])):
                for f in range(self.fidelities):
                    row = {"config_id": int(self.config_ids[i]), **cfg, "seed": int(self.seeds[i, s]),
                           "fidelity": f + 1, "step": int(self.steps[i, s, f])}  # fmt: skip
                    row.update({m: float(self.values[m][i, s, f]) for m in self.metrics})
                    row["cost_s"] = float(self.cost[i, s, f])
                    rows.append(row)
        return rows


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ------------------------------------------------------------------------------------------------ building
def from_rows(
    rows: list[dict[str, Any]], *, params: list[str], metrics: list[str], meta: dict[str, Any] | None = None
) -> Table:
    """Validate rows (dicts with the columns of the module docstring) into a ``Table``.

    Raises:
        ConfigError: every problem found, each with its column (or row).
    """
    columns = {k: [r.get(k) for r in rows] for k in [*KEYS, *params, *metrics]}
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    return _build(columns, present, params, metrics, dict(meta or {}), "rows")


def _build(
    columns: dict[str, list[Any]], present: set[str], params: list[str], metrics: list[str],
    meta: dict[str, Any], source: str,
) -> Table:  # fmt: skip
    problems: list[tuple[str, str]] = []
    if not params:
        problems.append(("params", "name at least one parameter column"))
    if not metrics:
        problems.append(("metrics", "name at least one metric column"))
    clash = (set(params) & set(metrics)) | ((set(params) | set(metrics)) & set(KEYS))
    if clash:
        problems.append(("columns", f"{sorted(clash)} named twice (as parameter, metric or key column)"))
    for k in [*KEYS, *params, *metrics]:
        if k not in present:
            problems.append((k, "missing column"))
    n = len(columns["config_id"])
    if n == 0:
        problems.append(("<rows>", "the table is empty"))
    if problems:
        raise ConfigError(problems, source)

    def ints(name: str) -> np.ndarray | None:
        vals = columns[name]
        bad = [i for i, v in enumerate(vals) if not _is_int(v)]
        if bad:
            problems.append(
                (name, f"{len(bad)} rows are not integers (first: row {bad[0]}, {vals[bad[0]]!r})")
            )
            return None
        return np.asarray(vals, dtype=np.int64)

    def floats(name: str, finite: bool) -> np.ndarray | None:
        vals = columns[name]
        bad = [i for i, v in enumerate(vals) if not (v is None or _is_number(v))]
        if bad:
            problems.append(
                (name, f"{len(bad)} rows are not numbers (first: row {bad[0]}, {vals[bad[0]]!r})")
            )
            return None
        arr = np.asarray([math.nan if v is None else float(v) for v in vals], dtype=np.float64)
        if finite and not np.all(np.isfinite(arr)):
            i = int(np.flatnonzero(~np.isfinite(arr))[0])
            problems.append((name, f"must be finite (row {i}: {vals[i]!r})"))
            return None
        return arr

    cid, seed, fid, step = ints("config_id"), ints("seed"), ints("fidelity"), ints("step")
    cost = floats("cost_s", finite=True)
    mvals = {m: floats(m, finite=False) for m in metrics}
    if cid is None or seed is None or fid is None or step is None or cost is None:
        raise ConfigError(problems, source)
    if np.any(fid < 1):
        problems.append(("fidelity", "fidelities count from 1"))
    if np.any(cost < 0):
        problems.append(("cost_s", "cost must be >= 0 seconds"))

    order = np.lexsort((fid, seed, cid))
    uids, first = np.unique(cid[order], return_index=True)
    n_fid = int(fid.max())
    # configuration parameters: constant within a configuration, one value per configuration
    configs: dict[str, np.ndarray] = {}
    for p in params:
        vals = [_scalar(columns[p][j]) for j in order]
        per: list[Any] = []
        for k, start in enumerate(first):
            end = first[k + 1] if k + 1 < len(first) else len(order)
            distinct = {_key(v) for v in vals[start:end]}
            if len(distinct) > 1:
                problems.append(
                    (p, f"config_id {uids[k]} has several values: {sorted(map(str, distinct))[:3]}")
                )
            per.append(vals[start])
        configs[p] = np.array(per, dtype=object)
    seen: dict[tuple, int] = {}
    for k in range(len(uids)):
        key = tuple(_key(configs[p][k]) for p in params)
        if key in seen:
            problems.append(("config_id", f"configs {seen[key]} and {uids[k]} have the same parameters"))
        seen.setdefault(key, int(uids[k]))

    # runs: every (config, seed) has fidelities 1..E, once each
    runs: dict[tuple[int, int], list[int]] = {}
    for j in order:
        runs.setdefault((int(cid[j]), int(seed[j])), []).append(int(j))
    per_config_seeds: dict[int, list[int]] = {}
    for (c, s), idx in runs.items():
        fids = [int(fid[j]) for j in idx]
        if fids != list(range(1, n_fid + 1)):
            problems.append(("fidelity", f"config_id {c} seed {s} has fidelities {fids[:8]}, not 1..{n_fid}"))
            continue
        cs = cost[idx]
        if np.any(np.diff(cs) < 0):
            problems.append(("cost_s", f"config_id {c} seed {s}: cumulative cost decreases"))
        per_config_seeds.setdefault(c, []).append(s)
    if problems:
        raise ConfigError(problems[:50] + ([("...", f"{len(problems) - 50} more")] if len(problems) > 50 else []),
                          source)  # fmt: skip

    max_seeds = max(len(v) for v in per_config_seeds.values())
    shape = (len(uids), max_seeds, n_fid)
    cost_a, step_a = np.full(shape, np.nan), np.zeros(shape, dtype=np.int64)
    vals_a = {m: np.full(shape, np.nan) for m in metrics}
    seeds_a = np.full((len(uids), max_seeds), -1, dtype=np.int64)
    n_seeds = np.zeros(len(uids), dtype=np.int64)
    pos = {int(u): k for k, u in enumerate(uids)}
    for (c, s), idx in runs.items():
        k = pos[c]
        r = int(n_seeds[k])
        n_seeds[k] += 1
        seeds_a[k, r] = s
        cost_a[k, r] = cost[idx]
        step_a[k, r] = step[idx]
        for m in metrics:
            vals_a[m][k, r] = mvals[m][idx]  # type: ignore[index]
    meta = {"format": FORMAT, "version": VERSION, **meta, "params": list(params), "metrics": list(metrics)}
    _check_meta(meta, metrics, source)
    return Table(list(params), list(metrics), configs, uids, vals_a, cost_a, step_a, n_seeds, seeds_a, meta)


def from_arrays(
    configs: dict[str, list[Any]],
    values: dict[str, np.ndarray],
    cost: np.ndarray,
    *,
    steps: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
    n_seeds: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> Table:
    """A ``Table`` from dense arrays (large third-party tables; ``from_rows`` is for rows).

    Args:
        configs: parameter -> value per configuration (None where it does not apply).
        values: metric -> ``[n_configs, n_seeds, E]`` (NaN: no value).
        cost: ``[n_configs, n_seeds, E]`` cumulative seconds.
        steps: ``[n_configs, n_seeds, E]`` (default: the fidelity index).
        seeds: ``[n_configs, n_seeds]`` seed numbers (default 0..n_seeds-1).
        n_seeds: seeds per configuration (default: all).

    Raises:
        ConfigError: inconsistent shapes, non-finite or negative or decreasing cost, duplicate configurations.
    """
    cost = np.asarray(cost, dtype=float)
    problems: list[tuple[str, str]] = []
    if cost.ndim != 3:
        raise ConfigError(
            [("cost_s", f"expected [configs, seeds, fidelities], got shape {cost.shape}")], "arrays"
        )
    n, k, e = cost.shape
    n_seeds = np.full(n, k, dtype=np.int64) if n_seeds is None else np.asarray(n_seeds, dtype=np.int64)
    valid = np.arange(k)[None, :] < n_seeds[:, None]
    for name, col in configs.items():
        if len(col) != n:
            problems.append((name, f"{len(col)} values for {n} configurations"))
    for m, v in values.items():
        if np.shape(v) != cost.shape:
            problems.append((m, f"shape {np.shape(v)} is not the cost's {cost.shape}"))
    c = cost[valid]
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        problems.append(("cost_s", "cost must be finite and >= 0 seconds"))
    elif np.any(np.diff(c, axis=-1) < 0):
        problems.append(("cost_s", "cumulative cost decreases along the fidelities"))
    cfg = {p: np.array([_scalar(x) for x in col], dtype=object) for p, col in configs.items()}
    keys = list(zip(*(map(_key, cfg[p]) for p in cfg), strict=True)) if cfg else []
    if len(set(keys)) != len(keys):
        problems.append(("config_id", "two configurations have the same parameters"))
    if problems:
        raise ConfigError(problems, "arrays")
    steps_a = np.broadcast_to(np.arange(1, e + 1), cost.shape).copy() if steps is None else np.asarray(steps)
    seeds_a = np.broadcast_to(np.arange(k), (n, k)).copy() if seeds is None else np.asarray(seeds)
    seeds_a = np.where(valid, seeds_a, -1)
    cost = np.where(valid[:, :, None], cost, np.nan)
    vals = {m: np.where(valid[:, :, None], np.asarray(v, dtype=float), np.nan) for m, v in values.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **(meta or {}),
        "params": list(cfg),
        "metrics": list(values),
    }
    _check_meta(meta, list(values), "arrays")
    return Table(list(cfg), list(values), cfg, np.arange(n, dtype=np.int64), vals, cost, steps_a.astype(np.int64),
                 n_seeds, seeds_a.astype(np.int64), meta)  # fmt: skip


def _check_meta(meta: dict[str, Any], metrics: list[str], source: str) -> None:
    problems = []
    for i, o in enumerate(meta.get("objectives") or []):
        if not isinstance(o, dict) or o.get("metric") not in metrics or o.get("mode") not in ("max", "min"):
            problems.append((f"meta.objectives[{i}]", f"needs a metric column and mode max|min, got {o!r}"))
    if problems:
        raise ConfigError(problems, source)


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | np.integer):
        return True
    return isinstance(v, float | np.floating) and math.isfinite(v) and float(v).is_integer()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _scalar(v: Any) -> Any:
    """A parameter cell: None for null/NaN, plain Python scalars, lists as the space encodes them ("q,k,v")."""
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
        return None
    if isinstance(v, list | tuple | np.ndarray):
        return ",".join(str(x) for x in v)
    return _py(v)


def _key(v: Any) -> Any:
    return ("num", float(v)) if _is_number(v) else ("str", str(v)) if v is not None else ("null",)


# ------------------------------------------------------------------------------------------------ parquet
def write_table(
    rows: list[dict[str, Any]] | Table,
    path: str | Path,
    *,
    params: list[str] | None = None,
    metrics: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Table:
    """Validate and write a replay table (rows, or a ``Table``) to ``path`` (parquet, written atomically).

    Raises:
        ConfigError: the rows do not form a valid table (every problem listed).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows, Table):
        table = rows
        if meta:
            table.meta.update(meta)
    else:
        if params is None or metrics is None:
            raise ConfigError([("params/metrics", "name the parameter and metric columns")], str(path))
        table = from_rows(rows, params=params, metrics=metrics, meta=meta)
    valid = np.arange(table.cost.shape[1])[None, :] < table.n_seeds[:, None]
    ci, si, fi = np.nonzero(
        np.broadcast_to(valid[:, :, None], table.cost.shape)
    )  # rows in (config, seed, fid)
    cols: dict[str, Any] = {"config_id": pa.array(table.config_ids[ci], pa.int64())}
    for p in table.params:
        cols[p] = _param_array(list(table.configs[p][ci]))
    cols["seed"] = pa.array(table.seeds[ci, si], pa.int64())
    cols["fidelity"] = pa.array(fi + 1, pa.int64())
    cols["step"] = pa.array(table.steps[ci, si, fi], pa.int64())
    for m in table.metrics:
        cols[m] = pa.array(table.values[m][ci, si, fi], pa.float64())
    cols["cost_s"] = pa.array(table.cost[ci, si, fi], pa.float64())
    schema_meta = {META_KEY: json.dumps(table.meta, default=str).encode()}
    arrow = pa.table(cols).replace_schema_metadata(schema_meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(arrow, tmp, compression="zstd")
    tmp.replace(path)
    return table


def _param_array(values: list[Any]) -> Any:
    """One parameter column: numbers stay numbers (int64 or float64), bools bools, anything mixed strings."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(_is_int(v) and not isinstance(v, float) for v in present):
        return pa.array(values, pa.int64())
    if present and all(_is_number(v) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def read_meta(path: str | Path) -> dict[str, Any]:
    """The table's metadata object, without reading its rows.

    Raises:
        ConfigError: not a parquet file, or no ranksearch metadata.
    """
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError([("table", f"cannot read {path} as parquet: {e}")], str(path)) from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ConfigError([("table", "no 'ranksearch' schema metadata: not a replay table")], str(path))
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ConfigError([("table", f"unreadable metadata: {e}")], str(path)) from None
    if meta.get("format") != FORMAT:
        raise ConfigError([("table", f"format {meta.get('format')!r} is not {FORMAT!r}")], str(path))
    if int(meta.get("version", 0)) > VERSION:
        raise ConfigError([("table", f"version {meta.get('version')} is newer than this ranksearch reads")],
                          str(path))  # fmt: skip
    return meta


def read_table(path: str | Path) -> Table:
    """Read and validate a replay table.

    Raises:
        ConfigError: a missing file, a file that is not a replay table, or invalid contents (all listed).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ConfigError([("<file>", "no such file (a replay table: docs/replay.md)")], str(path))
    meta = read_meta(path)
    params, metrics = list(meta.get("params") or []), list(meta.get("metrics") or [])
    arrow = pq.read_table(str(path))
    columns = {name: arrow.column(name).to_pylist() for name in arrow.column_names}
    for k in [*KEYS, *params, *metrics]:
        columns.setdefault(k, [None] * arrow.num_rows)
    extra = {k: v for k, v in meta.items() if k not in ("params", "metrics")}
    return _build(columns, set(arrow.column_names), params, metrics, extra, str(path))
