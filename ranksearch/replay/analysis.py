"""What a table can tell a searcher apart by, and how replayed sweeps are scored.

The gate (``noise_report``), measured before any claim:

- ``seed_sd``: the pooled within-configuration standard deviation of the final metric (the table's noise);
- ``variance_explained``: the share of the final metric's variance that the configuration explains (one-way
  ANOVA R², runs as observations);
- ``seed_spearman``: Spearman correlation of the configurations' final values between two seeds (the mean over
  seed pairs);
- ``early_final_spearman[f]``: Spearman between a run's value at fidelity f and its configuration's true
  (seed-mean) final value — how well what a scheduler sees at rung f predicts what matters.

Scoring (one objective): after each trial that ends COMPLETE and feasible, the sweep's choice is its best
observed trial (as ``ranksearch sweep`` picks "best"), scored by the chosen configuration's **true** value; regret
is the distance to the best true configuration. Several objectives: the choice is the observed feasible
Pareto front of COMPLETE trials, scored by the hypervolume of those configurations' true values (Optuna's
``compute_hypervolume``) over the hypervolume of the table's own true front, on objectives scaled to [0, 1]
(log10 first for a positive objective spanning more than two decades, such as parameter counts) with the
reference point 1.1 in every objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranksearch.replay.engine import SweepTrace
from ranksearch.replay.table import Table


# --------------------------------------------------------------------------------------------------- gate
@dataclass
class NoiseReport:
    metric: str
    n_configs: int
    n_runs: int
    seed_sd: float
    between_sd: float
    variance_explained: float
    seed_spearman: float
    early_final_spearman: list[float]

    def lines(self) -> list[str]:
        ef = ", ".join(f"{v:.2f}" for v in self.early_final_spearman)
        return [
            f"{self.metric}: {self.n_configs} configurations, {self.n_runs} runs",
            f"  seed SD {self.seed_sd:.4g}, between-configuration SD {self.between_sd:.4g}",
            f"  variance explained by the configuration {100 * self.variance_explained:.1f} %",
            f"  seed-to-seed Spearman of configurations {self.seed_spearman:.3f}",
            f"  Spearman(value at fidelity f, true final), f = 1..E: {ef}",
        ]


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation over the pairs where both are finite (NaN with fewer than 3)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def noise_report(table: Table, metric: str) -> NoiseReport:
    """The table's noise and signal for ``metric`` (see the module docstring)."""
    final = table.values[metric][:, :, -1]  # [config, seed]
    mask = np.isfinite(final)
    n_runs = int(mask.sum())
    grand = float(np.nanmean(final))
    means = table.true_final(metric)
    counts = mask.sum(axis=1)
    within_ss = float(np.nansum((final - means[:, None]) ** 2))
    total_ss = float(np.nansum((final - grand) ** 2))
    dof = n_runs - int((counts > 0).sum())
    seed_sd = math.sqrt(within_ss / dof) if dof > 0 else math.nan
    r2 = 1 - within_ss / total_ss if total_ss > 0 else math.nan
    between_sd = float(np.nanstd(means[counts > 0], ddof=1)) if (counts > 0).sum() > 1 else math.nan
    pairs = []
    max_seeds = final.shape[1]
    for i in range(max_seeds):
        for j in range(i + 1, max_seeds):
            rho = spearman(final[:, i], final[:, j])
            if math.isfinite(rho):
                pairs.append(rho)
    early = []
    for f in range(table.fidelities):
        vals = table.values[metric][:, :, f]
        early.append(spearman(vals.ravel(), np.repeat(means, max_seeds)))
    return NoiseReport(
        metric, int((counts > 0).sum()), n_runs, seed_sd, between_sd, r2,
        float(np.mean(pairs)) if pairs else math.nan, early,
    )  # fmt: skip


def choose_grace_period(report: NoiseReport, threshold: float = 0.5) -> int:
    """The first fidelity whose value ranks runs like their true final value (Spearman >= ``threshold``).

    ASHA's first rung sits at the grace period: earlier rungs would stop trials on evaluations that do not
    predict the final result. Returns E (no early stopping) when no fidelity reaches the threshold.
    """
    for f, rho in enumerate(report.early_final_spearman, start=1):
        if math.isfinite(rho) and rho >= threshold:
            return f
    return len(report.early_final_spearman)


# ------------------------------------------------------------------------------------------------ scoring
def sign(mode: str) -> float:
    return 1.0 if mode == "max" else -1.0


def true_feasible(table: Table, space: Any) -> np.ndarray:
    """Configurations whose true (seed-mean) final values meet the space's constraints."""
    ok = np.ones(table.n_configs, dtype=bool)
    for c in space.spec.constraints:
        v = table.true_final(c.metric)
        ok &= np.isfinite(v) & np.array([c.violation(x) <= 0 if math.isfinite(x) else False for x in v])
    return ok


def best_true(table: Table, space: Any) -> float:
    """The best true value of the first objective among feasible configurations."""
    o = space.spec.objectives[0]
    v = table.true_final(o.metric)
    v = np.where(true_feasible(table, space) & np.isfinite(v), v, np.nan)
    return float(np.nanmax(v) if o.mode == "max" else np.nanmin(v))


def worst_true(table: Table, space: Any) -> float:
    o = space.spec.objectives[0]
    v = table.true_final(o.metric)
    return float(np.nanmin(v) if o.mode == "max" else np.nanmax(v))


def incumbents(trace: SweepTrace, space: Any) -> list[tuple[float, int]]:
    """(compute, chosen configuration) after each COMPLETE feasible trial that changed the choice."""
    o = space.spec.objectives[0]
    s = sign(o.mode)
    out: list[tuple[float, int]] = []
    best = -math.inf
    for r in trace.records:
        if r.state != "COMPLETE" or not r.feasible or not math.isfinite(r.values[0]):
            continue
        if s * r.values[0] > best:
            best = s * r.values[0]
            out.append((r.compute, r.config))
    return out


def regret_curve(trace: SweepTrace, table: Table, space: Any, grid: np.ndarray) -> np.ndarray:
    """Regret of the sweep's choice at each compute in ``grid`` (before any choice: the worst regret)."""
    o = space.spec.objectives[0]
    true = table.true_final(o.metric)
    top, worst = best_true(table, space), worst_true(table, space)
    out = np.full(len(grid), abs(top - worst))
    for c, config in incumbents(trace, space):
        out[grid >= c] = abs(top - true[config]) if math.isfinite(true[config]) else abs(top - worst)
    return out


def cost_to_reach(trace: SweepTrace, table: Table, space: Any, tolerance: float) -> float:
    """Compute at which the sweep's choice was first within ``tolerance`` of the best true value (inf: never)."""
    o = space.spec.objectives[0]
    true = table.true_final(o.metric)
    top = best_true(table, space)
    for c, config in incumbents(trace, space):
        if math.isfinite(true[config]) and abs(top - true[config]) <= tolerance:
            return c
    return math.inf


# ----------------------------------------------------------------------------------------- hypervolume
class ParetoScale:
    """Objectives -> minimisation losses in [0, 1] over the table's true values (see the module docstring)."""

    def __init__(self, table: Table, space: Any):
        self.objectives = space.spec.objectives
        self.true = np.stack([table.true_final(o.metric) for o in self.objectives], axis=1)
        self.feasible = true_feasible(table, space) & np.all(np.isfinite(self.true), axis=1)
        self.log = []
        cols = []
        for k in range(len(self.objectives)):
            col = self.true[self.feasible, k]
            use_log = bool(col.size and col.min() > 0 and col.max() / col.min() > 100)
            self.log.append(use_log)
            cols.append(np.log10(col) if use_log else col)
        self.lo = np.array([c.min() if c.size else 0.0 for c in cols])
        self.hi = np.array([c.max() if c.size else 1.0 for c in cols])

    def losses(self, configs: np.ndarray) -> np.ndarray:
        v = self.true[configs].astype(float)
        for k, use_log in enumerate(self.log):
            if use_log:
                v[:, k] = np.log10(v[:, k])
        width = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        z = (v - self.lo) / width
        signs = np.array([sign(o.mode) for o in self.objectives])
        # a maximised objective: loss 0 at the table's best
        return np.where(signs > 0, 1.0 - z, z)

    def hypervolume(self, configs: list[int]) -> float:
        from optuna._hypervolume import compute_hypervolume  # Optuna's WFG; no public alias in 5.0

        configs = [c for c in configs if self.feasible[c]]
        if not configs:
            return 0.0
        losses = self.losses(np.array(sorted(set(configs))))
        ref = np.full(losses.shape[1], 1.1)
        return float(compute_hypervolume(losses, ref))

    def table_hypervolume(self) -> float:
        return self.hypervolume(list(np.flatnonzero(self.feasible)))


def observed_front(trace: SweepTrace, space: Any, compute: float) -> list[int]:
    """Configurations of the observed feasible Pareto front of COMPLETE trials ended by ``compute``."""
    from ranksearch.sweep.mo_asha import non_domination_rank

    recs = [
        r for r in trace.records
        if r.state == "COMPLETE" and r.feasible and r.compute <= compute and all(map(math.isfinite, r.values))
    ]  # fmt: skip
    if not recs:
        return []
    signs = np.array([sign(o.mode) for o in space.spec.objectives])
    losses = -signs * np.array([r.values for r in recs])
    ranks = non_domination_rank(losses)
    return [r.config for r, k in zip(recs, ranks, strict=True) if k == 0]


def hypervolume_curve(trace: SweepTrace, scale: ParetoScale, space: Any, grid: np.ndarray) -> np.ndarray:
    """Hypervolume ratio (chosen front's true values / table's true front) at each compute in ``grid``."""
    full = scale.table_hypervolume() or 1.0
    return np.array([scale.hypervolume(observed_front(trace, space, c)) / full for c in grid])


# ------------------------------------------------------------------------------------------- statistics
def bootstrap_median(
    x: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(median, lower, upper): the median over sweep seeds and its percentile-bootstrap interval."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.median(x[rng.integers(len(x), size=(n, len(x)))], axis=1)
    a = (1 - level) / 2
    return (
        float(np.median(x)),
        float(np.quantile(boots, a, method="inverted_cdf")),
        float(np.quantile(boots, 1 - a, method="inverted_cdf")),
    )


def bootstrap_ratio(
    a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """median(a) / median(b) with a percentile-bootstrap interval (seeds of a and b resampled independently)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(len(a), size=(n, len(a)))], axis=1)
    mb = np.median(b[rng.integers(len(b), size=(n, len(b)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    q = (1 - level) / 2
    point = _div(float(np.median(a)), float(np.median(b)))
    return (
        point,
        float(np.quantile(ratios, q, method="inverted_cdf")),
        float(np.quantile(ratios, 1 - q, method="inverted_cdf")),
    )


def _div(a: float, b: float) -> float:
    if b == 0 or not math.isfinite(b):
        return math.inf if a > 0 else math.nan
    return a / b


def reach_fraction(curves: np.ndarray, target: float, grid: np.ndarray) -> float:
    """First compute (as a fraction of grid[-1]) where the median curve over seeds is <= target (inf: never)."""
    med = np.median(curves, axis=0)
    hit = np.flatnonzero(med <= target + 1e-12)
    return float(grid[hit[0]] / grid[-1]) if hit.size else math.inf


def bootstrap_reach_fraction(
    curves: np.ndarray, reference: np.ndarray, grid: np.ndarray, n: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Compute fraction at which ``curves`` reach the reference's final median regret, with a bootstrap CI.

    ``curves`` and ``reference``: ``[seeds, grid]`` regret curves of a method and of random search.
    """
    point = reach_fraction(curves, float(np.median(reference[:, -1])), grid)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n):
        c = curves[rng.integers(len(curves), size=len(curves))]
        r = reference[rng.integers(len(reference), size=len(reference))]
        boots.append(reach_fraction(c, float(np.median(r[:, -1])), grid))
    return (
        point,
        float(np.quantile(boots, 0.025, method="inverted_cdf")),
        float(np.quantile(boots, 0.975, method="inverted_cdf")),
    )
