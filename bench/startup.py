"""Start-up time of the commands that only read configs or sweep folders (issue 17).

``ranksearch validate``, ``status``, ``best`` and ``schema`` import neither torch, open_clip, Ray nor MLflow, so
they start in about a second. Each command runs in a fresh interpreter, in interleaved rounds (rotating who goes
first), timed by wall clock and by the child's CPU time. The baseline in the same run is the same command after
``import torch, open_clip, ray.tune, mlflow`` (what the eager imports of the earlier CLI cost), and the floor is
``ranksearch --help``. Target: at most 1.5 s per command on 2 cores.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Context, Row, at_most

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.5
MISSES: dict[str, str] = {}
EAGER = "import torch, open_clip, ray.tune, mlflow\n"
RUN = "import sys\nfrom ranksearch.cli import main\nmain(sys.argv[1:])\n"


def _time(code: str, args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one fresh interpreter running ``code`` with ``args``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"ranksearch {' '.join(args)} failed: {proc.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(ctx: Context) -> list[Row]:
    from ranksearch.report.fixture import write_fake_sweep

    rounds = 1 if ctx.quick else 5
    with tempfile.TemporaryDirectory(prefix="rs-bench-startup-") as tmp:
        sweep = str(write_fake_sweep(Path(tmp) / "fake", n_trials=40))
        commands = {
            "validate": ["validate", "search_spaces/all.yaml", "search_spaces/quickstart.yaml"],
            "status": ["status", sweep],
            "best": ["best", sweep],
            "schema": ["schema"],
            "--help": ["--help"],
        }
        cases = [(name, False) for name in commands]
        if not ctx.quick:  # the eager baseline costs ~7 s a run: full suite only
            cases += [(name, True) for name in commands if name != "--help"]
        wall: dict[tuple[str, bool], list[float]] = {c: [] for c in cases}
        cpu: dict[tuple[str, bool], list[float]] = {c: [] for c in cases}
        _time(RUN, ["--help"])  # warm the file cache
        for r in range(rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for name, eager in order:
                w, c = _time((EAGER if eager else "") + RUN, commands[name])
                wall[(name, eager)].append(w)
                cpu[(name, eager)].append(c)
    med = {c: statistics.median(v) for c, v in wall.items()}
    med_cpu = {c: statistics.median(v) for c, v in cpu.items()}
    rows = []
    for name in ("validate", "status", "best", "schema"):
        shown, met = at_most(med[(name, False)], TARGET_S, "{:.2f} s")
        eager = med.get((name, True))
        baseline = (
            f"with the heavy stack imported first (the eager CLI) {eager:.2f} s, ratio "
            f"{med[(name, False)] / eager:.2f}"
            if eager
            else "eager baseline skipped (quick mode)"
        )
        rows.append(
            Row(
                "startup",
                f"start-up: ranksearch {name}",
                f"≤ {TARGET_S} s",
                shown,
                met,
                f"CPU {med_cpu[(name, False)]:.2f} s; {baseline}; floor `ranksearch --help` {med[('--help', False)]:.2f} s; median of {rounds} interleaved rounds; "
                f"command `python -m ranksearch {' '.join(commands[name]).replace(sweep, 'SWEEP')}`",
            )
        )
    return rows
