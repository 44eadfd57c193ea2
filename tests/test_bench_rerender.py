"""python -m bench --rerender: the saved rows rendered again, the full run's "## Run" facts kept as measured."""

from __future__ import annotations

import dataclasses
import json

from bench.__main__ import main
from bench.report import Row


def test_rerender_keeps_the_run_section_and_renders_the_saved_rows(tmp_path):
    out = tmp_path / "benchmarks.md"
    row = dataclasses.asdict(Row("startup", "import time", "≤ 2 s", "1.5 s", True))
    saved = {"rows": [row], "quick": False, "notes": ["startup: measured by hand"], "command": "python -m bench",
             "seconds": 60.0, "date": "2026-11-22 09:18 UTC"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(saved))
    assert main(["--rerender", "--out", str(out)]) == 0  # no report yet: the run section is written fresh
    fresh = out.read_text()
    assert "## Run" in fresh and "| startup | import time | ≤ 2 s | 1.5 s |" in fresh

    measured = "## Run\n\n- code: git 7ea19ca (the full run's)\n- OS: the machine it ran on\n\n"
    start, end = fresh.index("## Run"), fresh.index("## Results")
    out.write_text(fresh[:start] + measured + fresh[end:])
    row["measured"] = "1.4 s"
    out.with_suffix(".json").write_text(json.dumps(saved))
    assert main(["--rerender", "--out", str(out)]) == 0
    text = out.read_text()
    assert text[text.index("## Run") : text.index("## Results")] == measured  # not this machine's facts
    assert "| 1.4 s |" in text and "startup: measured by hand" in text
