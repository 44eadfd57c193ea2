"""The sweep comparison dashboard and the commands that read a sweep folder: report, ui, status, best.

``ranksearch.report.data`` loads a sweep folder (parquet tables, trial folders, the Optuna journal) without
touching MLflow run by run; ``figures`` turns it into plotly figures; ``html`` renders the self-contained page.
Nothing here imports torch or ranksearch's training code.
"""

from __future__ import annotations

__all__ = ["build_report", "load_sweep"]


def __getattr__(name: str):  # lazy: importing the package must stay cheap for the CLI
    if name == "build_report":
        from ranksearch.report.html import build_report

        return build_report
    if name == "load_sweep":
        from ranksearch.report.data import load_sweep

        return load_sweep
    raise AttributeError(name)
