"""Plots of rank-allocation telemetry (matplotlib, Agg backend; files only, never a window).

* ``plot_allocation_heatmap``: layer × module heatmap of the final allocation, one panel per tower.
* ``plot_rank_over_time``: total rank per tower (and per module kind) against the optimizer step.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: trials run on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ranksearch.tracking.allocation import final_rows  # noqa: E402

MODULE_ORDER = ("q", "k", "v", "o", "fc", "proj", "ln_1", "ln_2")


def _modules(rows: list[dict]) -> list[str]:
    present = {r["module"] for r in rows}
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def plot_allocation_heatmap(rows: list[dict], path: str | Path, value: str = "rank") -> Path:
    """Write a heatmap PNG of the final allocation (rows: layers, columns: modules; one panel per tower).

    Args:
        rows: telemetry rows; only the last step is drawn.
        path: output PNG.
        value: column to draw (``rank`` or ``effective_rank``).
    """
    last = [r for r in final_rows(rows) if r["max_rank"] > 0]
    towers = [t for t in ("vision", "text") if any(r["tower"] == t for r in last)] or ["vision"]
    modules = _modules(last)
    vmax = max([r["max_rank"] for r in last] + [1])
    fig, axes = plt.subplots(1, len(towers), figsize=(3 + 1.2 * len(modules) * len(towers), 4), squeeze=False)
    for ax, tower in zip(axes[0], towers, strict=True):
        tr = [r for r in last if r["tower"] == tower]
        depth = max([r["layer"] for r in tr] + [-1]) + 1
        grid = np.full((max(depth, 1), max(len(modules), 1)), np.nan)
        for r in tr:
            grid[r["layer"], modules.index(r["module"])] = r[value]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{int(v)}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(len(modules)), modules)
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
        ax.set_title(f"{tower} ({value})")
        fig.colorbar(im, ax=ax)
    step = last[0]["step"] if last else 0
    fig.suptitle(f"rank allocation at step {step}")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_rank_over_time(rows: list[dict], path: str | Path, value: str = "rank") -> Path:
    """Write a line plot PNG of the summed rank per tower and per module kind against the step."""
    rows = [r for r in rows if r["max_rank"] > 0]
    steps = sorted({r["step"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    for tower in ("vision", "text"):
        for module in [None, *_modules(rows)]:
            sel = [r for r in rows if r["tower"] == tower and (module is None or r["module"] == module)]
            if not sel:
                continue
            totals = [sum(r[value] for r in sel if r["step"] == s) for s in steps]
            label = f"{tower} total" if module is None else f"{tower} {module}"
            ax.plot(steps, totals, label=label, linewidth=2.0 if module is None else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"summed {value}")
    ax.set_title("rank over time")
    if steps:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
