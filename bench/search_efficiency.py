"""Item 7: search efficiency, replayed against a grid of real trials recorded on the built-in world.

The grid (``bench/data/grid.json``, written by ``python -m bench.record_grid``) holds 24 LoRA configurations of
the tiny CLIP on the cluttered shape world with their validation HM after each of 4 evaluations. The replay
backend (``bench/replay.py``) runs Optuna over the grid's choices, reads the recorded curves in simulated time
on 4 workers and, for TPE+ASHA, stops trials as Ray's ASHA would (grace 1, reduction factor 2; stopped trials
are told PRUNED). Compute is counted in evaluations consumed. The grid is not re-recorded here: the benchmark
takes about a second.
"""

from __future__ import annotations

import math

from bench.report import Context, Row

SEEDS = 10
WORKERS = 4
TOLERANCE = 1.0  # HM points below the grid's best configuration
BUDGET_SWEEPS = 2  # budget per sweep: twice the cost of training every grid point in full
MO_FRACTION = 0.5  # multi-objective budget: half the grid's full cost, so the front is not trivially complete

MISSES: dict[str, str] = {
    "compute to reach best-1 HM: TPE+ASHA / random (≥ 10 seeds, replay)": (
        "on this grid the first evaluation does not predict the final HM (Spearman 0.09 between HM at eval 1 "
        "and at the end; 0.41 at eval 2, 0.84 at eval 3), and the single configuration within 1 point of the "
        "best has one of the lowest first evaluations, so ASHA with grace period 1 stops it whenever it is "
        "sampled and TPE+ASHA rarely reaches the target. With grace period 2 it reaches it in 9/10 seeds but "
        "at slightly more than random's compute (median 69.5 evals vs 62.5). What would fix it: a longer grace period or a longer trial (160 steps "
        "with 4 evaluations leaves the first at step 40, still in warm-up noise), or record a grid whose "
        "curves rank configurations early; the replay backend makes trying these a matter of seconds."
    ),
}


def _units(u: float) -> str:
    return "∞" if not math.isfinite(u) else f"{u:g}"


def run(ctx: Context) -> list[Row]:
    from bench.replay import DEFAULT_GRID, Grid, efficiency, multi_objective

    if not DEFAULT_GRID.is_file():
        status = f"not run: {DEFAULT_GRID} missing (record it with `python -m bench.record_grid`)"
        return [
            Row("search_efficiency", "compute to reach best-1 HM: TPE+ASHA / random (≥ 10 seeds, replay)", "≤ 0.5",
                status),
            Row("search_efficiency", "compute to reach best-1 HM: TPE / random", "report", status),
            Row("search_efficiency", "Pareto hypervolume, multi-objective (replay)", "report", status),
        ]  # fmt: skip
    grid = Grid.load(DEFAULT_GRID)
    seeds = range(3 if ctx.quick else SEEDS)
    full = len(grid.curves) * grid.evals  # units to train every grid point in full
    budget = BUDGET_SWEEPS * full
    eff = efficiency(grid, seeds, budget, WORKERS, TOLERANCE)
    mo_budget = int(MO_FRACTION * full)
    mo = multi_objective(grid, seeds, mo_budget, WORKERS)
    ctx.log(f"   search_efficiency: {eff}")

    med = {m: v["median"] for m, v in eff.items()}
    reached = {m: f"{v['reached']}/{len(seeds)}" for m, v in eff.items()}
    ratio_asha = med["tpe+asha"] / med["random"]
    ratio_tpe = med["tpe"] / med["random"]
    setting = (
        f"{len(grid.curves)} recorded configs × {grid.evals} evals, best HM {grid.best():.2f}; "
        f"{len(seeds)} sweep seeds, {WORKERS} workers, budget {budget} evals per sweep; "
    )
    units_note = ", ".join(f"{m} {_units(med[m])} (target reached in {reached[m]} seeds)" for m in med)
    mo_note = ", ".join(f"{m} {v['median']:.2f}" for m, v in mo.items())
    return [
        Row("search_efficiency", "compute to reach best-1 HM: TPE+ASHA / random (≥ 10 seeds, replay)", "≤ 0.5",
            _units(round(ratio_asha, 2)), ratio_asha <= 0.5,
            setting + "median evals to reach: " + units_note + "; ASHA grace 1, reduction factor 2"),
        Row("search_efficiency", "compute to reach best-1 HM: TPE / random", "report", f"{ratio_tpe:.2f}",
            None, "median evals: " + units_note),
        Row("search_efficiency", "Pareto hypervolume, multi-objective (replay)", "report",
            f"{mo['tpe']['median']:.2f}", None,
            f"(max val/hm, min trainable params), found front / grid front, median over seeds after "
            f"{mo_budget} evals (half the grid): {mo_note}; params on a log10 scale, reference point = worst "
            f"HM - 1, largest params + 0.1 decade"),
    ]  # fmt: skip
