"""The sweep as a user runs it in a terminal: a real pseudo-terminal, a real CLI, a killed driver, ``--resume``.

CI has no TTY, so the live view only runs where a test gives the command a pseudo-terminal (``pty``) with a
set window size. The drivers run ``ranksearch.cli.main(["sweep", ...])`` in a subprocess with their own local
Ray; the trial runner is swapped for the cheap ``synthetic`` one (training is not the point here), everything
else (typer, the live view, Tune, Optuna, MLflow) is real. Each driver runs in a new session so what a killed
driver leaves behind can be ended by its process group, which only this test created.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.ray

DRIVER = """
import functools, sys
import ranksearch.sweep.tuner as tuner
tuner.run_sweep = functools.partial(
    tuner.run_sweep, runner="synthetic", runner_options={"seconds_per_eval": float(sys.argv[1])},
    ray_init={"num_cpus": 2, "_temp_dir": sys.argv[2]},
)
from ranksearch.cli import main
sys.exit(main(sys.argv[3:]))
"""

SPACE = {
    "base": {"model": {"pretrained": None}, "eval": {"evals": 3}},
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
        "adapter.r": [1, 4],
    },
    "objective": {"metric": "val/hm", "mode": "max"},
    "sampler": {"type": "random", "seed": 0},
    "early_stopping": {"type": "none"},
    "trials": 3,
    "concurrency": 2,
    "resources": {"cpu": 1, "gpu": 0},
}
# cursor moves and erases (the live view redrawing itself) become line breaks; other escapes vanish
MOVES = re.compile(r"\x1b\[[0-9;]*[ABEFGHJK]|\r")
LOG_LINE = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


class Terminal:
    """A command running on a pseudo-terminal of ``cols`` columns; ``output`` collects what it drew."""

    def __init__(self, args: list[str], cols: int, cwd: Path):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "CI", "TERM")}
        env.update(TERM="xterm-256color", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
        os.close(slave)
        self.master, self.raw, self.cwd = master, b"", cwd

    def pump(self, seconds: float) -> None:
        """Read what the command drew for up to ``seconds`` (a pty blocks the writer when nobody reads)."""
        end = time.time() + seconds
        while time.time() < end:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the command exited and closed its side
                    return
                if not chunk:
                    return
                self.raw += chunk
            elif self.proc.poll() is not None:
                return

    def wait(self, timeout: float) -> int:
        end = time.time() + timeout
        while self.proc.poll() is None and time.time() < end:
            self.pump(1.0)
        self.pump(0.5)
        if self.proc.poll() is None:
            self.kill()
            pytest.fail(f"timed out after {timeout} s:\n{self.output[-3000:]}")
        os.close(self.master)
        (self.cwd / "terminal.txt").write_text(self.output)  # what the user saw, for a failing test
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the driver, then whatever of its session (Ray head, workers) outlived it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def output(self) -> str:
        return ANSI.sub("", MOVES.sub("\n", self.raw.decode("utf-8", errors="replace")))


def sweep_in_terminal(tmp: Path, cols: int, *extra: str, seconds_per_eval: float = 0.1) -> Terminal:
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    args = [sys.executable, "-c", DRIVER, str(seconds_per_eval), ray_tmp, "sweep", str(tmp / "space.yaml")]
    args += ["--name", "tty", "--storage", str(tmp / "runs"), *extra]
    return Terminal(args, cols, tmp)


def finished_trials(folder: Path) -> int:
    """Trials Optuna has finished so far (0 before the study exists)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not (folder / "optuna.journal").exists():
        return 0
    try:
        storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
        study = optuna.load_study(study_name="ranksearch", storage=storage)
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.trials)


def assert_clean(term: Terminal, rc: int) -> None:
    out = term.output
    assert rc == 0, out[-4000:]
    assert "Traceback" not in out and "Error" not in out, out[-4000:]
    assert "display error" not in out, out[-4000:]


@pytest.mark.parametrize("cols", [80, pytest.param(200, marks=pytest.mark.slow)])
def test_live_sweep_in_a_terminal(tmp_path: Path, cols: int) -> None:
    term = sweep_in_terminal(tmp_path, cols)
    rc = term.wait(240)
    assert_clean(term, rc)
    out = term.output
    assert "sweep tty" in out and "best val/hm (max)" in out  # the live panel was drawn
    assert re.search(r"completed\s+3", out)  # ... and reached the end
    assert "leaderboard" in out
    # what ranksearch drew fits the terminal (Ray's and MLflow's own log lines are theirs, and wrap anyway)
    drawn = [line for line in out.splitlines() if not LOG_LINE.match(line)]
    widest = max(len(line) for line in drawn)
    assert widest <= cols, f"a line of {widest} characters on a {cols}-column terminal"


def test_resume_after_kill_in_a_terminal_decides_live_now(tmp_path: Path) -> None:
    """Killed while live; ``--resume --no-live`` prints plain lines (the pickled experiment said live)."""
    first = sweep_in_terminal(tmp_path, 100, "--trials", "6", seconds_per_eval=1.0)
    folder = tmp_path / "runs" / "tty"
    deadline = time.time() + 180
    while finished_trials(folder) < 1:
        first.pump(0.5)
        assert first.proc.poll() is None, first.output[-3000:]
        assert time.time() < deadline, "the first driver did not finish a trial in time"
    first.pump(2.0)
    first.kill()
    assert "sweep tty" in first.output  # it was live

    second = sweep_in_terminal(tmp_path, 100, "--resume", "--no-live", seconds_per_eval=0.1)
    rc = second.wait(240)
    assert_clean(second, rc)
    out = second.output
    assert "sweep tty" not in out  # no live panel: decided by this process, not by the pickled callbacks
    assert re.search(r"\[6/6\] trial \w+ completed: val/hm = [0-9.]+", out), out[-3000:]
    assert "running:" not in out


def test_progress_lines_count_finished_trials() -> None:
    """Plain progress lines (no terminal): the trial that just ended counts as finished, with its status."""
    from io import StringIO

    from rich.console import Console

    from ranksearch.space.load import validate_space
    from ranksearch.sweep.live import LiveView

    space = validate_space(json.loads(json.dumps(SPACE)))
    view = LiveView(space, "x", total=2, live=False)
    view._console = Console(file=StringIO(), width=200)

    def trial(tid: str, status: str) -> SimpleNamespace:
        last = {"is_final": True, "status": "completed", "val/hm": 50.0, "training_iteration": 3}
        return SimpleNamespace(trial_id=tid, status=status, last_result=last, config={"adapter.r": 1})

    a, b = trial("a", "RUNNING"), trial("b", "RUNNING")
    view.on_trial_complete(0, [a, b], a)  # Tune calls back before it marks the trial TERMINATED
    a.status = "TERMINATED"
    view.on_trial_complete(0, [a, b], b)
    lines = view.console.file.getvalue().splitlines()
    assert lines == ["[1/2] trial a completed: val/hm = 50", "[2/2] trial b completed: val/hm = 50"]
