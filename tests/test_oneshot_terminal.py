"""A one-shot sweep as a user runs it in a terminal: a real pseudo-terminal, the real CLI and training (tiny
model), the closing table of estimate vs retrained result drawn within the terminal's width."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.test_oneshot_sweep import SPACE
from tests.test_terminal import LOG_LINE, Terminal, assert_clean

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = """
import functools, sys
import ranksearch.sweep.tuner as tuner
tuner.run_sweep = functools.partial(tuner.run_sweep, ray_init={"num_cpus": 2, "_temp_dir": sys.argv[1]})
from ranksearch.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_one_shot_sweep_in_an_80_column_terminal(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))  # score: likelihood on 12 images
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    args = [sys.executable, "-c", DRIVER, ray_tmp, "sweep", str(tmp_path / "space.yaml"), "--name", "os",
            "--storage", str(tmp_path / "runs")]  # fmt: skip
    term = Terminal(args, 80, tmp_path)
    rc = term.wait(400)
    assert_clean(term, rc)
    out = term.output
    assert "one-shot rank search" in out and "completed" in out
    caption = " ".join(out[out.index("Kendall tau") :].split())  # the caption, wherever rich wrapped it
    assert caption.startswith("Kendall tau (estimate val/loglik vs retrained val/hm):")  # both metrics named
    assert "supernet: training" in out  # ranksearch's progress line, as a plain message
    assert not re.search(r"^(INFO|DEBUG):", out, re.M)  # no stdlib-default log format in the terminal
    assert re.search(r"^export one: ranksearch export \S+ --allocation N --out DIR$", out, re.M)
    drawn = [line for line in out.splitlines() if not LOG_LINE.match(line)]
    widest = max(len(line) for line in drawn)
    assert widest <= 80, f"a line of {widest} characters on an 80-column terminal"
