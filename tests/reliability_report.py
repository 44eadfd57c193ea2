"""Figures of the reliability tests (issue 7), written by the tests and rendered into ``docs/reliability.md``.

Each reliability test calls ``record(scenario, ...)`` with what it injected and what survived. With
``RANKSEARCH_RELIABILITY_OUT=DIR`` set, every call writes ``DIR/<scenario>.json``; without it nothing is written,
so ordinary test runs leave no files. Render the table with::

    RANKSEARCH_RELIABILITY_OUT=/tmp/rel .venv/bin/pytest -m "reliability or not reliability" \\
        tests/test_reliability_nodes.py tests/test_sweep_resume.py tests/test_reliability_tracking.py tests/test_postgres_backend.py \\
        tests/test_reliability_failures.py tests/test_hostile_input.py tests/test_security.py
    .venv/bin/python -m tests.reliability_report /tmp/rel --write docs/reliability.md
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

try:  # run as tests.<name> (CI) or imported from tests/ (pytest puts tests/ on sys.path)
    from tests.markdown_block import block_main
except ImportError:  # pragma: no cover
    from markdown_block import block_main
from typing import Any

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
# (scenario, what was injected); the order of the table
SCENARIOS = {
    "node_loss": "worker node removed while its trials ran (2-worker `ray.cluster_utils.Cluster`)",
    "real_cluster_node_loss": "worker raylet SIGKILLed mid-trial (`ray start` head + 2 workers, token auth, "
    "`ranksearch sweep --address`)",
    "driver_loss": "sweep driver SIGKILLed mid-sweep, then `--resume`",
    "tracking_outage": "real `mlflow server` stopped mid-sweep, restarted on the same store",
    "tracking_down_at_start": "no `mlflow server` when the sweep starts (parent run journalled); it starts "
    "seconds later",
    "tracking_never_up": "no `mlflow server` during the whole sweep; started afterwards, then `ranksearch sync`",
    "postgres_restart": "PostgreSQL (MLflow server's store + Optuna study) crashed and restarted mid-sweep",
    "failing_trials": "NaN/inf loss, exception, time budget, memory budget (synthetic runner)",
    "real_divergence": "real tiny-CLIP trial with `train.logit_scale: 1e39` (loss non-finite at step 1)",
    "crafted_state": "a shared sweep folder with crafted pickles (`tune/tuner.pkl` etc.), trial ids and tracking "
    "URIs, then `--resume`, `report`, `status`, `best`, `ui`",
    "stop_signal": "SIGTERM or Ctrl-C to the sweep driver mid-sweep, then `--resume`",
    "hostile_input": "malformed configs/spaces (hypothesis) + non-UTF-8, oversized, alias-bomb files",
    "corrupt_files": "truncated/corrupt checkpoints and adapter files",
    "security_defaults": "bind addresses, Ray auth in recipes, safe loaders, hostile names",
}
COLUMNS = [
    ("injected", "injected"),
    ("count", "how often"),
    ("trials", "trials"),
    ("completed", "completed"),
    ("failed_recorded", "failed, recorded with reason"),
    ("duplicates", "duplicates"),
    ("lost_points", "lost metric points"),
    ("tracebacks", "tracebacks shown"),
    ("seconds", "test wall s"),
]


def record(scenario: str, **figures: Any) -> None:
    """Write ``figures`` for ``scenario`` if ``$RANKSEARCH_RELIABILITY_OUT`` names a folder (merging repeats)."""
    out = os.environ.get("RANKSEARCH_RELIABILITY_OUT")
    if not out:
        return
    path = Path(out) / f"{scenario}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **figures}, indent=2, sort_keys=True))


def table(folder: Path) -> str:
    """The figures of every scenario found in ``folder``, as a markdown table."""
    head = "| scenario | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, injected in SCENARIOS.items():
        path = folder / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | {injected} |" + " not run |" * (len(COLUMNS) - 1))
            continue
        data = {"injected": injected, **json.loads(path.read_text())}
        cells = [_cell(data.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0f}"
    return str(v).replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    return block_main(argv, __doc__, table, BEGIN, END, "figures")


if __name__ == "__main__":
    sys.exit(main())
