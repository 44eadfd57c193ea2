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


def test_a_merge_records_the_benchmark_switches_in_its_note(tmp_path, monkeypatch):
    """A row re-measured with RANKSEARCH_BENCH_* / RANKSEARCH_SEARCH_* set is reproduced only with them: the
    merge's note names them with the command."""
    import importlib
    import types

    out = tmp_path / "benchmarks.md"
    kept = dataclasses.asdict(Row("memory", "kept row", "report", "1 MiB"))
    saved = {"rows": [kept], "quick": False, "notes": [], "command": "python -m bench", "seconds": 1.0,
             "date": "2026-11-22 09:18 UTC"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(saved))
    stub = types.SimpleNamespace(run=lambda ctx: [Row("startup", "import time", "report", "1.4 s")])
    real = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda n, *a: stub if n == "bench.startup" else real(n, *a)
    )
    monkeypatch.setenv("RANKSEARCH_BENCH_PACKED_PARTS", "phases")
    monkeypatch.setenv("RANKSEARCH_SEARCH_CASES", "world")
    assert main(["--only", "startup", "--merge", "--out", str(out)]) == 0
    notes = json.loads(out.with_suffix(".json").read_text())["notes"]
    (note,) = [n for n in notes if n.startswith("startup: re-measured")]
    assert (
        "`RANKSEARCH_BENCH_PACKED_PARTS=phases RANKSEARCH_SEARCH_CASES=world python -m bench --only startup"
        in note
    )
    text = out.read_text()
    assert "| kept row |" in text and "| import time |" in text
