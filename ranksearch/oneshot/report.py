"""The one-shot table the CLI prints: per retrained allocation, its one-shot estimate and its retrained result."""

from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def oneshot_table(summary: dict[str, Any]) -> Any:
    """A rich Table of ``oneshot.json`` (``ranksearch.oneshot.pipeline``), Kendall τ and compute in its caption."""
    from rich.table import Table

    metric = summary["metric"]
    c = summary["compute"]
    tau = summary["kendall_tau"]
    table = Table(
        title=f"one-shot rank search: {c['evaluations']} allocations scored, front of {summary['front_size']}",
        caption=f"Kendall tau (estimate vs retrained {metric}): {_fmt(tau)}   supernet: {c['supernet_steps']} steps, "
        f"{int(c['supernet_passes'])} passes; retrains: {c['retrain_steps']} steps; one evaluation "
        f"{c['eval_seconds_mean']:.2f} s",
    )
    for col in (
        "allocation",
        "params",
        f"estimate {metric}",
        f"retrained {metric}",
        "retrained test",
        "status",
    ):
        table.add_column(col, justify="right" if col not in ("status",) else "left")
    for r in summary["rows"]:
        table.add_row(
            str(r["allocation"]), f"{r['trainable_params']:,}", _fmt(r["estimate"]), _fmt(r["retrained"]),
            _fmt(r["retrained_test"]), r["status"],
        )  # fmt: skip
    return table
