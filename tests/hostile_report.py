"""Counts of the property-based hostile-input tests (issue 15), rendered into ``docs/reliability.md``.

``tests/test_hostile_properties.py`` classifies every case it draws (clean error, traceback, hang, silent
acceptance) and, with ``RANKSEARCH_RELIABILITY_OUT=DIR`` set, writes ``DIR/hostile_properties.json``. Render::

    RANKSEARCH_RELIABILITY_OUT=/tmp/rel .venv/bin/pytest tests/test_hostile_properties.py
    .venv/bin/python -m tests.hostile_report /tmp/rel --write docs/reliability.md
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

try:  # run as tests.<name> (CI) or imported from tests/ (pytest puts tests/ on sys.path)
    from tests.markdown_block import block_main
except ImportError:  # pragma: no cover
    from markdown_block import block_main

BEGIN, END = "<!-- hostile:begin -->", "<!-- hostile:end -->"
FILE = "hostile_properties.json"
# category -> what its cases are; the order of the table
CATEGORIES = {
    "yaml_values": "YAML 1.1-only scalars (yes/no/on/off, 010, 1:30, 0x1F, 1_000), explicit tags, inf/nan, "
    "NUL/control/surrogate escapes, over-long strings and integers, deep lists/flow maps, at a field",
    "yaml_documents": "duplicate keys, non-text/complex/merge keys, alias bombs, recursive/undefined aliases, "
    "several documents, empty/`~` files, non-mappings, syntax errors, non-UTF-8 and NUL bytes",
    "trial_fields": "every numeric field of the trial config below/above its range or of the wrong kind; names, "
    "templates, devices, models, layers; evals vs steps, warm-up, eta_min, step budget",
    "space_fields": "sampler options by sampler type, sampler/replicate seeds, names, test-split objectives, "
    "ranges/steps/grids, numeric keys, trials/concurrency/resources/early stopping",
    "cli_arguments": "mistyped commands and options, missing arguments, bad or out-of-range integers, "
    "`--set` forms, FIFOs/devices/folders/missing/oversized files, undecodable argv",
    "valid_controls": "valid counterparts: the YAML 1.1 forms quoted (text), --help, --version, `validate` and "
    "`schema` on valid input: must be accepted",
}
OUTCOMES = ("tried", "clean", "traceback", "hang", "accepted", "unclear")

_counts: dict[str, Counter] = {name: Counter() for name in CATEGORIES}


def count(category: str, outcome: str) -> None:
    """Tally one case of ``category`` that ended in ``outcome`` (one of OUTCOMES except "tried")."""
    _counts[category]["tried"] += 1
    _counts[category][outcome] += 1


def counts() -> dict[str, dict[str, int]]:
    return {name: {o: c[o] for o in OUTCOMES} for name, c in _counts.items()}


def flush() -> None:
    """Write the tallies if ``$RANKSEARCH_RELIABILITY_OUT`` names a folder."""
    out = os.environ.get("RANKSEARCH_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / FILE).write_text(json.dumps(counts(), indent=2))


def table(folder: Path) -> str:
    data = json.loads((folder / FILE).read_text())
    lines = [
        "| category | cases | cases tried | clean errors | tracebacks | hangs | silent acceptances |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, what in CATEGORIES.items():
        c = data.get(name, {})
        if name == "valid_controls":  # acceptance is the right outcome here; an error would be the defect
            lines.append(
                f"| {name} | {what} | {c.get('tried', 0)} | {c.get('clean', 0)} wrongly refused | "
                f"{c.get('traceback', 0)} | {c.get('hang', 0)} | {c.get('accepted', 0)} accepted (correct) |"
            )
            continue
        lines.append(
            f"| {name} | {what} | {c.get('tried', 0)} | {c.get('clean', 0)} | {c.get('traceback', 0)} | "
            f"{c.get('hang', 0)} | {c.get('accepted', 0)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return block_main(argv, __doc__, table, BEGIN, END, "hostile-input figures")


if __name__ == "__main__":
    sys.exit(main())
