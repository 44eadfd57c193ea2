"""Figures of the sweep-state tests (issue 21 part A), rendered into ``docs/reliability.md``'s state block.

``tests/test_sweep_state.py`` calls ``reliability_report.record("state_<case>", ...)`` for each case; render::

    RANKSEARCH_RELIABILITY_OUT=/tmp/rel .venv/bin/pytest -m reliability tests/test_sweep_state.py
    .venv/bin/python -m tests.state_report /tmp/rel --write docs/reliability.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:  # run as tests.<name> (CI) or imported from tests/ (pytest puts tests/ on sys.path)
    from tests.markdown_block import block_main
except ImportError:  # pragma: no cover
    from markdown_block import block_main

BEGIN, END = "<!-- state:begin -->", "<!-- state:end -->"
COLUMNS = [
    ("case", "case"),
    ("outcome", "outcome"),
    ("tune_trials", "Tune trials"),
    ("optuna_trials", "Optuna trials"),
    ("mlflow_runs", "MLflow runs (before -> after)"),
    ("mlflow_runs_with_metrics", "MLflow runs with metrics"),
    ("seconds", "test s"),
]


def table(folder: Path) -> str:
    """One row per recorded ``state_*`` case, damaged files first (in the order the test defines them)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    paths = sorted(folder.glob("state_*.json"), key=lambda p: p.stat().st_mtime)
    for path in paths:
        data = json.loads(path.read_text())
        cells = [str(data.get(key, "–")).replace("|", "\\|") for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return block_main(argv, __doc__, table, BEGIN, END, "state figures")


if __name__ == "__main__":
    sys.exit(main())
