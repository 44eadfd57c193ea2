"""``run_replay``: the Python API behind ``ranksearch replay`` — load, gate, compare, report, plot.

    from ranksearch.replay.run import run_replay
    comparison, summary = run_replay("table.parquet", "space.yaml", seeds=50, workers=4, budget="50x")

The space is a ranksearch search-space file; its parameters are matched to the table's parameter columns by
field path, and it is validated against the table (every parameter a column, every objective and constraint a
metric) instead of against ``TrialConfig``, so a third-party table's own parameter names work.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranksearch.errors import ConfigError
from ranksearch.replay.table import Table, read_table
from ranksearch.space.space import SearchSpace


def load_replay_space(path: str | Path, table: Table) -> SearchSpace:
    """Read a search-space YAML for replaying against ``table``; every problem at once.

    Raises:
        ConfigError: structural problems of the space, and parameters/metrics the table does not have.
    """
    from ranksearch.config.load import parse_yaml, read_text_file
    from ranksearch.space.load import validate_space

    p = Path(path)
    text = read_text_file(p)
    space = validate_space(parse_yaml(text, source=str(p)), source=str(p), text=text, trial_config=False)
    problems = space_table_problems(space, table)
    if problems:
        raise ConfigError(problems, str(p))
    return space


def space_table_problems(space: SearchSpace, table: Table) -> list[tuple[str, str]]:
    """Why ``space`` cannot be replayed against ``table`` (empty if it can)."""
    problems = []
    cols = set(table.params)
    for family in space.families:
        for a in space.active_params(family):
            if a.path not in cols:
                problems.append(
                    (f"params[{a.path}]", f"not a parameter column of the table; it has {sorted(cols)}")
                )
    if space.family_param is not None and "adapter.family" not in cols:
        problems.append(("params[adapter.family]", "the table has no adapter.family column"))
    for i, o in enumerate(space.spec.objectives):
        if o.metric not in table.metrics:
            problems.append(
                (f"objective[{i}].metric", f"{o.metric!r} is not a metric of the table: {table.metrics}")
            )
    for i, c in enumerate(space.spec.constraints):
        if c.metric not in table.metrics:
            problems.append((f"constraints[{i}].metric", f"{c.metric!r} is not a metric of the table"))
    return sorted(set(problems), key=problems.index)


def run_replay(
    table: str | Path | Table,
    space: str | Path | SearchSpace,
    *,
    seeds: int = 50,
    workers: int | None = None,
    budget: str | float | None = None,
    methods: list[str] | None = None,
    grace: int | str | None = None,
    out: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Compare searchers on a table (see ``ranksearch.replay.compare``) and return (comparison, summary).

    Args:
        table: a replay table (path or ``Table``).
        space: a search-space file (or a loaded ``SearchSpace``).
        seeds: sweeps per method (sweep seeds 0..seeds-1).
        workers: trials at once; default the space's ``concurrency``.
        budget: compute per sweep: seconds (``3600``, ``3600s``), ``90m``, ``2h`` or ``50x`` (full runs of the
            median configuration); default the space's CPU/GPU-hour budget, else ``50x``.
        methods: method names (default all that apply).
        grace: ASHA's grace period for every ASHA method: evaluations, ``"auto"`` (from the table's early/final
            rank correlation) or None (the space's).
        out: a folder for ``summary.json`` and the plots (``regret.png``, ``hypervolume.png``).
        progress: ``progress(method, done, total)`` after each replayed sweep.

    Returns:
        The ``Comparison`` (every replayed sweep) and its summary (the JSON ``--json`` prints).

    Raises:
        ConfigError: every problem with the table, space, seeds, workers, budget, methods and grace at once.
    """
    from ranksearch.replay.compare import KNOWN, compare, parse_budget

    problems: list[tuple[str, str]] = []
    if seeds < 1:
        problems.append(("--seeds", f"give at least 1 sweep seed, got {seeds}"))
    if workers is not None and workers < 1:
        problems.append(("--workers", f"give at least 1 worker, got {workers}"))
    unknown = [m for m in methods or [] if m not in KNOWN]
    if unknown:
        problems.append(("--methods", f"unknown method(s) {unknown}; known: {', '.join(KNOWN)}"))
    if grace is not None and grace != "auto" and not (isinstance(grace, int) and grace >= 1):
        problems.append(("--grace", f"{grace!r}: give evaluations (>= 1) or auto"))
    t: Table | None = None
    s: SearchSpace | None = None
    budget_s: float | None = None
    try:
        t = table if isinstance(table, Table) else read_table(table)
    except ConfigError as e:
        problems += [(e.source or "table", m) if p == "<file>" else (p, m) for p, m in e.problems]
    if t is not None:
        try:
            s = space if isinstance(space, SearchSpace) else load_replay_space(space, t)
            if isinstance(space, SearchSpace):
                problems += space_table_problems(s, t)
        except ConfigError as e:
            problems += [(f"{e.source}: {p}" if e.source else p, m) for p, m in e.problems]
        try:
            budget_s = (
                float(budget)
                if isinstance(budget, float | int) and not isinstance(budget, bool)
                else parse_budget(budget, t)
            )
        except ConfigError as e:
            problems += e.problems
        if isinstance(grace, int) and grace > t.fidelities:
            problems.append(("--grace", f"{grace}: the table has {t.fidelities} fidelities"))
    if s is not None and "nsga2" in (methods or []) and len(s.spec.objectives) == 1:
        problems.append(("--methods", "nsga2 is for several objectives; the space has one"))
    if problems:
        raise ConfigError(problems)
    assert t is not None and s is not None
    w = workers if workers is not None else s.spec.concurrency
    comparison = compare(
        t, s, seeds=seeds, workers=w, budget_s=budget_s, names=methods, grace=grace, progress=progress
    )
    summary = comparison.summary()
    summary.update(table=str(table) if not isinstance(table, Table) else None, space=s.source, workers=w,
                   seconds=comparison.seconds)  # fmt: skip
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=_json))
        plot(comparison, folder)
    return comparison, summary


def _json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return float(v) if hasattr(v, "__float__") else str(v)


def plot(comparison: Any, folder: Path) -> list[Path]:
    """Regret (and hypervolume) against compute: median over sweep seeds with a 95 % bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ranksearch.replay.analysis import bootstrap_median

    grid = comparison.grid / 3600.0
    panels = [("regret.png", "regret of the chosen configuration (true value)", comparison.regret)]
    if comparison.multi:
        panels.append(("hypervolume.png", "hypervolume ratio of the chosen front", comparison.hypervolume))
    written = []
    for name, ylabel, curves_of in panels:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for method in comparison.traces:
            curves = curves_of(method)
            stats = np.array([bootstrap_median(curves[:, k], n=300) for k in range(curves.shape[1])])
            ax.plot(grid, stats[:, 0], label=method)
            ax.fill_between(grid, stats[:, 1], stats[:, 2], alpha=0.15)
        ax.set_xlabel("compute (trial-hours)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{len(next(iter(comparison.traces.values())))} sweep seeds: median, 95 % CI")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)
    return written


def format_ci(ci: tuple[float, float, float] | list[float], fmt: str = ".3g") -> str:
    point, lo, hi = ci
    return f"{_num(point, fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _num(v: float, fmt: str) -> str:
    return "∞" if v == math.inf else "-∞" if v == -math.inf else "nan" if v != v else format(v, fmt)


def report_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as text: the gate first, then one line per method (medians with 95 % CIs)."""
    from ranksearch.replay.analysis import NoiseReport

    noise = NoiseReport(**summary["noise"])
    lines = ["gate (measured before any claim):", *("  " + line for line in noise.lines())]
    lines.append(
        f"  ASHA grace period {summary['grace_period']}; from this table's early/final correlation: "
        f"{summary['grace_period_auto']} (--grace auto)"
    )
    lines.append(
        f"{summary['seeds']} sweep seeds per method, {summary['workers']} workers, budget "
        f"{summary['budget_s'] / 3600:.3g} trial-hours; best true value {summary['best_true']:.4g}; "
        f"'within 1 seed-SD' = within {summary['tolerance']:.3g}"
    )
    for name, m in summary["methods"].items():
        parts = [f"final regret {format_ci(m['final_regret'])}"]
        if "reach_random_final" in m:
            parts.append(
                f"compute to random's final regret {format_ci(m['reach_random_final'], '.2f')} × budget"
            )
        parts.append(f"to within 1 seed-SD {format_ci([v / 3600 for v in m['reach_1sd_s']])} h"
                     f" ({m['reached_1sd']}/{summary['seeds']} seeds)")  # fmt: skip
        if "reach_1sd_vs_random" in m:
            parts.append(f"vs random {format_ci(m['reach_1sd_vs_random'], '.2f')}")
        if "hypervolume" in m:
            parts.append(f"hypervolume {format_ci(m['hypervolume'])}")
        if "hypervolume_vs_random" in m:
            parts.append(f"HV vs random {format_ci(m['hypervolume_vs_random'], '.2f')}")
        if "hypervolume_vs_nsga2" in m:
            parts.append(f"HV vs NSGA-II {format_ci(m['hypervolume_vs_nsga2'], '.2f')}")
        parts.append(f"{m['trials']:.0f} trials, {m['pruned']:.0f} pruned")
        lines.append(f"  {name:12s} " + "; ".join(parts))
    return lines
