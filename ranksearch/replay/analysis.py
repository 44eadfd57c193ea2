"""What a table can tell a searcher apart by, and how replayed sweeps are scored.

The gate (``noise_report``), measured before any claim:

- ``seed_sd``: the pooled within-configuration standard deviation of the final metric (the table's noise);
- ``top_seed_sd``: the same over the best 10 % of configurations by true value (at least 3): the noise where a
  search ends up, and the tolerance of "within one seed-SD of the best" (a long-tailed metric such as a
  regression loss whose diverged runs reach 1e5 has a pooled SD that says nothing about the top);
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
from the ideal to the nadir of that true front (log10 first for a positive objective spanning more than two
decades, such as parameter counts) with the reference point 1.1 in every objective (``ParetoScale``).
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
    top_seed_sd: float
    between_sd: float
    variance_explained: float
    seed_spearman: float
    early_final_spearman: list[float]

    def lines(self) -> list[str]:
        ef = ", ".join(f"{v:.2f}" for v in self.early_final_spearman)
        return [
            f"{self.metric}: {self.n_configs} configurations, {self.n_runs} runs",
            f"  seed SD {self.seed_sd:.4g} (best 10 % of configurations: {self.top_seed_sd:.4g}), "
            f"between-configuration SD {self.between_sd:.4g}",
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


def noise_report(table: Table, metric: str, mode: str = "max") -> NoiseReport:
    """The table's noise and signal for ``metric`` (see the module docstring); ``mode`` says which end is best."""
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
    top_seed_sd = _top_seed_sd(final, means, counts, mode)
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
        metric, int((counts > 0).sum()), n_runs, seed_sd, top_seed_sd, between_sd, r2,
        float(np.mean(pairs)) if pairs else math.nan, early,
    )  # fmt: skip


def _top_seed_sd(final: np.ndarray, means: np.ndarray, counts: np.ndarray, mode: str) -> float:
    """Pooled within-configuration SD over the best 10 % of configurations with >= 2 seeds (at least 3)."""
    ok = np.flatnonzero((counts > 1) & np.isfinite(means))
    if ok.size == 0:
        return math.nan
    order = ok[np.argsort(-sign(mode) * means[ok], kind="stable")]
    top = order[: max(3, math.ceil(0.1 * ok.size))]
    ss = float(np.nansum((final[top] - means[top, None]) ** 2))
    dof = int(counts[top].sum() - top.size)
    return math.sqrt(ss / dof) if dof > 0 else math.nan


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
    """Objectives -> minimisation losses, 0 at the ideal and 1 at the nadir of the table's true Pareto front.

    The table's true front (feasible configurations, seed-mean final values) sets the scale, so the reference
    point (1.1 in every loss) sits just beyond the front's worst corner and the hypervolume measures how much of
    the front a sweep found: configurations worse than the nadir add nothing, and a front scaled over the whole
    table's range instead (down to a 10 % accuracy) would give every method about the same hypervolume.
    """

    def __init__(self, table: Table, space: Any):
        from ranksearch.pareto import non_domination_rank

        self.objectives = space.spec.objectives
        self.signs = np.array([sign(o.mode) for o in self.objectives])
        self.true = np.stack([table.true_final(o.metric) for o in self.objectives], axis=1)
        self.feasible = true_feasible(table, space) & np.all(np.isfinite(self.true), axis=1)
        self.log = []
        for k in range(len(self.objectives)):
            col = self.true[self.feasible, k]
            self.log.append(bool(col.size and col.min() > 0 and col.max() / col.min() > 100))
        self.lo = np.zeros(len(self.objectives))
        self.hi = np.ones(len(self.objectives))
        ok = np.flatnonzero(self.feasible)
        if ok.size:
            raw = self._raw(ok)
            front = raw[non_domination_rank(raw) == 0]
            self.lo, self.hi = front.min(axis=0), front.max(axis=0)

    def _raw(self, configs: np.ndarray) -> np.ndarray:
        """Minimisation values (log10 where chosen), before scaling."""
        v = self.true[configs].astype(float)
        for k, use_log in enumerate(self.log):
            if use_log:
                v[:, k] = np.log10(v[:, k])
        return -self.signs * v

    def losses(self, configs: np.ndarray) -> np.ndarray:
        width = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        return (self._raw(configs) - self.lo) / width

    def hypervolume(self, configs: list[int]) -> float:
        from optuna._hypervolume import compute_hypervolume  # Optuna's WFG; no public alias in 5.0

        configs = [c for c in configs if self.feasible[c]]
        if not configs:
            return 0.0
        ref = np.full(len(self.objectives), 1.1)
        losses = np.minimum(self.losses(np.array(sorted(set(configs)))), ref)  # past the reference: adds 0
        return float(compute_hypervolume(losses, ref))

    def table_hypervolume(self) -> float:
        return self.hypervolume(list(np.flatnonzero(self.feasible)))


def observed_front(trace: SweepTrace, space: Any, compute: float) -> list[int]:
    """Configurations of the observed feasible Pareto front of COMPLETE trials ended by ``compute``."""
    from ranksearch.pareto import non_domination_rank

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
    ratios = np.array([_div(x, y) for x, y in zip(ma, mb, strict=True)])
    ratios = np.where(np.isnan(ratios), np.inf, ratios)  # both never reached: no evidence of a gain
    q = (1 - level) / 2
    point = _div(float(np.median(a)), float(np.median(b)))
    return (
        point,
        float(np.quantile(ratios, q, method="inverted_cdf")),
        float(np.quantile(ratios, 1 - q, method="inverted_cdf")),
    )


def _div(a: float, b: float) -> float:
    """a / b where either may be inf (a sweep that never reached its target): finite/inf = 0, inf/inf = nan."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(b):
        return 0.0
    if b == 0:
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
