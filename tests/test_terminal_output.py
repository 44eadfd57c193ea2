"""What a sweep prints in a real terminal: a readable leaderboard at 80 and 200 columns, no start-up chatter
from the libraries (all of it back with ``--debug``), and the two commands to look at the results at the end.

Uses the pseudo-terminal driver of tests/test_terminal.py (real CLI, Ray, Tune, Optuna, MLflow; the cheap
``synthetic`` trial runner).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.test_terminal import DRIVER, LOG_LINE, Terminal, assert_clean

pytestmark = pytest.mark.ray

SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 2}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
        "adapter.r": [1, 4],
        "placement.matrices": [["q", "v"], ["q", "k", "v", "o"]],
        "placement.towers": ["vision", "text", "both"],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "random", "seed": 0},
    "early_stopping": {"type": "none"},
    "trials": 3,
    "concurrency": 2,
    "resources": {"cpu": 1, "gpu": 0},
}
# one pattern per library announcement a user did not ask for
CHATTER = {
    "mlflow tables": "Creating initial MLflow database tables",
    "ray token": "Token authentication is enabled",
    "ray start": "Started a local Ray instance",
    "tune box": "Configuration for experiment",
    "tensorboard": "TensorBoard",
    "optuna study": "A new study created",
}


def run(tmp: Path, cols: int, *extra: str) -> str:
    import sys
    import tempfile

    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    args = [sys.executable, "-c", DRIVER, "0.05", ray_tmp, "sweep", str(tmp / "space.yaml"), "--name", "out",
            "--storage", str(tmp / "runs"), "--no-live", *extra]  # fmt: skip
    term = Terminal(args, cols, tmp)
    assert_clean(term, term.wait(240))
    return term.output


def leaderboard_block(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("leaderboard by "))
    end = next(i for i in range(start, len(lines)) if "completed:" in lines[i])
    return lines[start : end + 1]


def params_of(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "trials.parquet").to_pylist()
    return [r for r in rows if r["status"] == "completed"]


@pytest.mark.parametrize("cols", [80, pytest.param(200, marks=pytest.mark.slow)])
def test_sweep_output_is_readable_and_quiet(tmp_path: Path, cols: int) -> None:
    """80 columns as users run it: no chatter; 200 columns with --debug: the chatter is back (and the
    leaderboard is the same)."""
    debug = cols == 200
    out = run(tmp_path, cols, *(["--debug"] if debug else []))
    board = leaderboard_block(out)
    assert max(len(line) for line in board) <= cols, "\n".join(board)
    # every parameter of every completed trial is printed whole ("matrices=q,k,v,o"), never broken mid-word
    tokens = {t for line in board for t in line.split()}
    for row in params_of(tmp_path / "runs" / "out"):
        assert f"matrices={row['param:placement.matrices']}" in tokens, board
        assert f"towers={row['param:placement.towers']}" in tokens and f"r={row['param:adapter.r']}" in tokens
        assert any(t.startswith("lr=") for t in tokens)
    first = next(line for line in board if re.match(r"\s*1\s+\w{8}", line))
    if cols == 200:  # room enough: one trial, one line
        assert "lr=" in first and "towers=" in first and "matrices=" in first
    # the last two things printed: how to look at the results
    last = [line.strip() for line in out.splitlines() if line.strip()][-2:]
    assert last == ["ranksearch report runs/out", "ranksearch ui runs/out"], last  # relative to the cwd
    if debug:
        for what in ("mlflow tables", "ray start", "tune box"):
            assert CHATTER[what] in out, f"{what} hidden under --debug\n{out[:3000]}"
        return
    for what, text in CHATTER.items():
        assert text not in out, f"{what}: {text!r} printed\n{out[-3000:]}"
    log_lines = [line for line in out.splitlines() if LOG_LINE.match(line)]
    assert not log_lines, out[-3000:]  # no library log lines


@pytest.mark.parametrize("cols", [80, 100, 200])
def test_leaderboard_of_two_families_and_objectives_fits(tmp_path: Path, cols: int) -> None:
    """The widest case the CLI prints: a family column, two objectives, three test metrics."""
    from io import StringIO

    import pyarrow.parquet as pq
    from rich.console import Console

    from ranksearch.report.fixture import write_fake_sweep
    from ranksearch.space import load_space
    from ranksearch.sweep.live import leaderboard

    folder = write_fake_sweep(tmp_path / "two", 30, seed=5, journal=False)
    rows = [
        {k: v for k, v in r.items() if v is not None}
        for r in pq.read_table(folder / "trials.parquet").to_pylist()
    ]
    console = Console(file=StringIO(), width=cols, force_terminal=False)
    console.print(leaderboard(rows, load_space(folder / "space.yaml"), width=cols))
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= cols
    tokens = {t for line in lines for t in line.split()}
    assert "family" in tokens and {"lora", "adalora"} <= tokens and "1" in tokens
    first = next(line for line in lines if re.match(r"\s*1\s+\w{8}", line))
    if cols < 120:  # a family column and two objectives leave no room: one parameter per line
        assert sum("=" in t for t in first.split()) == 1, lines
    for r in rows:
        if r["status"] == "completed" and r["trial_id"] in console.file.getvalue():
            assert f"towers={r['param:placement.towers']}" in tokens
            for key in ("param:lora:placement.matrices", "param:adalora:adapter.target_r"):
                if key in r:
                    assert f"{key.rsplit('.', 1)[-1]}={r[key]}" in tokens, lines
    assert not any(t.startswith("family=") for t in tokens)  # the family column says it once


def test_pretraining_does_not_warn_about_random_weights(caplog) -> None:
    """open_clip warns "No pretrained weights loaded" for a random init; pretraining starts from one on purpose."""
    import logging

    import open_clip

    from ranksearch.models.clip import register_tiny_configs
    from ranksearch.pretrain import _create

    register_tiny_configs()
    with caplog.at_level(logging.WARNING):
        open_clip.create_model("rs-tiny-clip", pretrained=None)
    assert "No pretrained weights loaded" in caplog.text  # open_clip does warn ...
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _create("rs-tiny-clip")
    assert "No pretrained weights loaded" not in caplog.text  # ... but not while pretraining builds its model
    with caplog.at_level(logging.WARNING):
        logging.getLogger().warning("No pretrained weights loaded for X")
    assert "for X" in caplog.text  # the filter is gone afterwards
