"""The one-shot table the CLI prints: per retrained allocation, its one-shot estimate and its retrained result."""

from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _estimate(summary: dict[str, Any]) -> str:
    """The metric the allocations were ranked by on the supernet (``search.score``): the objective or
    ``val/loglik``; summaries from before the option hold the objective only."""
    return summary.get("estimate_metric", summary["metric"])


def _versus(summary: dict[str, Any]) -> str:
    """ "estimate vs retrained val/hm", naming the estimate's metric where it is another one."""
    estimate = _estimate(summary)
    by = "" if estimate == summary["metric"] else f" {estimate}"
    return f"estimate{by} vs retrained {summary['metric']}"


def oneshot_table(summary: dict[str, Any]) -> Any:
    """A rich Table of ``oneshot.json`` (``ranksearch.oneshot.pipeline``), Kendall τ and compute in its caption."""
    from rich.table import Table

    metric, estimate = summary["metric"], _estimate(summary)
    c = summary["compute"]
    tau = summary["kendall_tau"]
    table = Table(
        title=f"one-shot rank search: {c['evaluations']} allocations scored, front of {summary['front_size']}",
        caption=f"Kendall tau ({_versus(summary)}): {_fmt(tau)}   supernet: {c['supernet_steps']} steps, "
        f"{int(c['supernet_passes'])} passes; retrains: {c['retrain_steps']} steps; one evaluation "
        f"{c['eval_seconds_mean']:.2f} s",
    )
    for col in (
        "allocation",
        "params",
        f"estimate {estimate}",
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


# ------------------------------------------------------------------------------------------- HTML report
def oneshot_html_table(summary: dict[str, Any]) -> str:
    """The sortable HTML table of the report's one-shot section: per retrained allocation, its one-shot estimate
    beside its retrained validation and test result (``oneshot.json``'s rows, best estimate first)."""
    import html

    metric, estimate = summary["metric"], _estimate(summary)
    test = metric.replace("val/", "test/", 1)
    head = ["allocation", "trial", "trainable params", f"estimate {estimate}", f"retrained {metric}",
            f"retrained {test}", "retrained − estimate", "status"]  # fmt: skip
    text_cols = {1, 7}
    out = ["<div class='tablewrap'><table class='sortable' id='oneshot-table'><thead><tr>"]
    out += [
        f"<th class='{'text' if i in text_cols else ''}'>{html.escape(h)}</th>" for i, h in enumerate(head)
    ]
    out.append("</tr></thead><tbody>")
    for r in summary["rows"]:
        est, ret = r["estimate"], r["retrained"]
        same_scale = estimate == metric and isinstance(ret, int | float) and isinstance(est, int | float)
        diff = ret - est if same_scale else None  # a log-likelihood estimate is not on the objective's scale
        trial = str(r["trial"]).rsplit("/", 1)[-1]
        cells = [(str(r["allocation"]), r["allocation"]), (trial, trial),
                 (f"{r['trainable_params']:,}", r["trainable_params"]), (_fmt(est), est), (_fmt(ret), ret),
                 (_fmt(r.get("retrained_test")), r.get("retrained_test")),
                 ("-" if diff is None else f"{diff:+.2f}", diff), (str(r["status"]), r["status"])]  # fmt: skip
        row = "".join(
            f"<td class='{'text' if j in text_cols else ''}' data-v='{html.escape('' if k is None else str(k))}'>"
            f"{html.escape(shown)}</td>"
            for j, (shown, k) in enumerate(cells)
        )
        out.append(f"<tr data-allocation='{int(r['allocation'])}'>{row}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def oneshot_note(summary: dict[str, Any]) -> str:
    """The section's one-line reading: Kendall τ of estimate vs retrained over the retrained allocations, and
    what the search cost."""
    c = summary["compute"]
    n = sum(1 for r in summary["rows"] if r["retrained"] is not None)
    return (
        f"Kendall τ (one-shot {_versus(summary)}, {n} retrained allocations): "
        f"{_fmt(summary['kendall_tau'])}. {c['evaluations']} allocations scored on the supernet "
        f"({c['supernet_steps']} steps, {int(c['supernet_passes'])} forward/backward passes; one evaluation "
        f"{c['eval_seconds_mean']:.2f} s), a front of {summary['front_size']}, the best {len(summary['rows'])} "
        f"retrained from scratch ({c['retrain_steps']} steps)."
    )


def oneshot_figures(summary: dict[str, Any], evaluations: list[dict] | None) -> list[tuple[str, Any]]:
    """Plotly figures of the section: estimate vs retrained per allocation (with the y = x line), and every
    scored allocation's estimate against its parameters with the front (from ``search/evaluations.parquet``)."""
    import plotly.graph_objects as go

    metric, estimate = summary["metric"], _estimate(summary)
    figs: list[tuple[str, Any]] = []
    done = [r for r in summary["rows"] if r["retrained"] is not None]
    if done:
        fig = go.Figure()
        if estimate == metric:  # the y = x line only where both axes are the same metric
            lo = min(min(r["estimate"], r["retrained"]) for r in done)
            hi = max(max(r["estimate"], r["retrained"]) for r in done)
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="retrained = estimate",
                                     line={"color": "#bbb", "dash": "dot"}))  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[r["estimate"] for r in done], y=[r["retrained"] for r in done], mode="markers+text",
                text=[str(r["allocation"]) for r in done], textposition="top center", name="retrained allocation",
                marker={"size": 9, "color": "#c0392b"},
                hovertext=[f"allocation {r['allocation']}: {r['trainable_params']:,} params" for r in done],
            )
        )  # fmt: skip
        fig.update_layout(title=f"one-shot estimate vs retrained {metric} (τ {_fmt(summary['kendall_tau'])})",
                          xaxis_title=f"estimate {estimate} (masked supernet)", yaxis_title=f"retrained {metric}",
                          height=380, margin={"t": 40, "b": 40})  # fmt: skip
        figs.append(("fig-oneshot-retrained", fig))
    if evaluations:
        fig = go.Figure()
        pts = [e for e in evaluations if e.get(estimate) is not None]
        front = sorted((e for e in pts if e.get("front")), key=lambda e: e["trainable_params"])
        fig.add_trace(go.Scatter(x=[e["trainable_params"] for e in pts], y=[e[estimate] for e in pts],
                                 mode="markers", name="scored", marker={"size": 5, "color": "#999"},
                                 text=[f"allocation {e['number']}" for e in pts]))  # fmt: skip
        fig.add_trace(go.Scatter(x=[e["trainable_params"] for e in front], y=[e[estimate] for e in front],
                                 mode="lines+markers", name=f"front ({len(front)})", line={"shape": "hv"},
                                 text=[f"allocation {e['number']}" for e in front]))  # fmt: skip
        fig.update_layout(title=f"every scored allocation: estimate {estimate} vs trainable parameters",
                          xaxis_title="trainable parameters", yaxis_title=f"estimate {estimate}", height=380,
                          margin={"t": 40, "b": 40})  # fmt: skip
        figs.append(("fig-oneshot-front", fig))
    return figs
