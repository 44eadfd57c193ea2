"""What a one-shot search writes: every evaluation, the front's per-site allocations, heatmaps, the front plot.

* ``evaluations.parquet``: one row per scored allocation (number, metrics, trainable_params, feasible,
  repaired, front, ranks as a site -> rank JSON).
* ``allocation.parquet``: one row per (front member, site): the allocation telemetry columns of
  ``ranksearch.tracking.allocation`` (tower, layer, module, rank, max_rank, trainable_params) with ``step``
  replaced by ``allocation`` (the evaluation number) and the member's ``estimate`` and ``front_position``.
* ``front/allocation-<n>.png``: the layer × module heatmap of each front member (both towers).
* ``front.png``: every evaluation's estimate against its parameters, the front highlighted.
"""

from __future__ import annotations

import json
from pathlib import Path

from ranksearch.oneshot.allocation import PARAMS, AllocationSpace, Evaluation


def front_members(evals: list[Evaluation], metric: str, mode: str) -> list[Evaluation]:
    sign = -1.0 if mode == "max" else 1.0
    return sorted((e for e in evals if e.front), key=lambda e: (sign * e.metrics[metric], e.metrics[PARAMS]))


def allocation_rows(e: Evaluation, space: AllocationSpace, metric: str, position: int) -> list[dict]:
    rows = []
    for key, r, cost in zip(space.sites, e.ranks, space.params_per_rank, strict=True):
        tower, layer, module = key.split(".")
        rows.append(
            {
                "allocation": e.number, "front_position": position, "tower": tower, "layer": int(layer),
                "module": module, "rank": int(r), "max_rank": space.ranks[-1], "trainable_params": int(r) * cost,
                "estimate": float(e.metrics[metric]), "total_params": int(e.metrics[PARAMS]),
            }
        )  # fmt: skip
    return rows


def write_outputs(
    folder: Path, evals: list[Evaluation], space: AllocationSpace, metric: str, mode: str
) -> dict:
    """Write the files above into ``folder``; returns {name: path} of what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ranksearch.tracking.plots import plot_allocation_heatmap

    folder = Path(folder)
    (folder / "front").mkdir(parents=True, exist_ok=True)
    keys = sorted({k for e in evals for k in e.metrics})
    table = [
        {
            "number": e.number, **{k: e.metrics.get(k) for k in keys}, "feasible": e.feasible,
            "repaired": e.repaired, "front": e.front, "ranks": json.dumps(space.as_dict(e.ranks)),
        }
        for e in evals
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(table), folder / "evaluations.parquet")
    front = front_members(evals, metric, mode)
    rows = [row for i, e in enumerate(front) for row in allocation_rows(e, space, metric, i)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "allocation.parquet")
    written = {"evaluations": folder / "evaluations.parquet", "allocation": folder / "allocation.parquet"}
    for e in front:
        heat = [{**r, "step": e.number} for r in rows if r["allocation"] == e.number]
        plot_allocation_heatmap(heat, folder / "front" / f"allocation-{e.number}.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(
        [e.metrics[PARAMS] for e in evals], [e.metrics[metric] for e in evals], s=10, c="0.6", label="scored"
    )
    ax.plot(
        [e.metrics[PARAMS] for e in front], [e.metrics[metric] for e in front], "o-", c="C3", label="front"
    )
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{metric} (one-shot estimate)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "front.png", dpi=100)
    plt.close(fig)
    written["front_plot"] = folder / "front.png"
    return written
