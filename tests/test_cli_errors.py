"""One CLI error path (issues 11, 15, 17): usage and input errors are one line naming the argument, exit 2; a
traceback only with ``--debug``; inputs are regular files read without blocking.

Each case is one a user hits by hand; ``test_hostile_properties.py`` draws many more of the same kinds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli as run

from ranksearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "lora.yaml")


USAGE = [
    (["satus", "x"], "No such command 'satus'. Did you mean 'status'?"),
    (["status", "--bogus", "x"], "no such option --bogus for 'ranksearch status'"),
    (["status", "x", "--jsn"], "did you mean --json?"),
    (["sweep"], "Missing argument 'SPACE'"),
    (["sweep", SPACE, "--gpus", "abc"], "Invalid value for '--gpus'"),
    (["sweep", SPACE, "--gpus", "1e9"], "Invalid value for '--gpus'"),
    (["sweep", SPACE, "--gpus", "1000000000"], "Invalid value for '--gpus'"),
    (["sweep", SPACE, "--trials", "abc"], "Invalid value for '--trials'"),
    (["sweep", SPACE, "--name", "../elsewhere"], "Invalid value for '--name'"),
    (["report", "x", "--top", "0"], "Invalid value for '--top'"),
    (["ui", "--port", "abc"], "Invalid value for '--port'"),
    (["validate", SPACE, "--set", "a"], "--set a: an override must look like section.field=value"),
    (["sweep", SPACE, "--set", "a"], "--set a: an override must look like section.field=value"),
    (["validate", SPACE, "--set", "train.lr=-1"], "--set train.lr=-1: Input should be greater than 0"),
    (["validate", SPACE, "--set", "seed=010"], "--set seed=010: '010' has a leading zero"),
]


@pytest.mark.parametrize("args,expected", USAGE, ids=[" ".join(a[:2]) + f" {e[:24]}" for a, e in USAGE])
def test_usage_errors_are_one_line_exit_2(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sweep that wrongly started would write here
    code, text = run(args, capsys)
    assert code == 2, text
    assert expected in text, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert not (tmp_path / "ranksearch-runs").exists()


def test_version_and_help(capsys):
    from ranksearch import __version__

    assert run(["--version"], capsys) == (0, f"ranksearch {__version__}\n")
    code, text = run(["validate", "--help"], capsys)
    assert code == 0 and "Example" in text


def test_schema_help_shows_the_modeline_as_written(capsys, monkeypatch):
    """The help is rendered as Markdown: a bare ``# ...`` line became a heading without its ``#``."""
    monkeypatch.setenv("COLUMNS", "100")
    code, text = run(["schema", "--help"], capsys)
    assert code == 0
    assert "# yaml-language-server: $schema=./ranksearch-space.schema.json" in text, text


@pytest.mark.parametrize("command", ["validate", "trial", "sweep"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "missing", "too-big", "unreadable"])
def test_config_files_must_be_readable_regular_files(command, kind, tmp_path, monkeypatch, capsys):
    """A FIFO or /dev/zero fails at once (it used to hang); each case is named in one line."""
    path = tmp_path / "space.yaml"
    expected = {
        "fifo": "FIFO",
        "dev-zero": "character device",
        "folder": "folder",
        "missing": "does not exist",
        "too-big": "the limit is",
        "unreadable": "permission denied",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "too-big":
        with open(path, "wb") as f:
            f.truncate(4 << 30)  # sparse
    elif kind == "unreadable":
        path.write_text("seed: 1\n")
        path.chmod(0)
        real_open = os.open

        def refuse(p, *a, **k):  # root reads anything: simulate what every other user gets
            if str(p) == str(path):
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p, *a, **k)

        monkeypatch.setattr(os, "open", refuse)
    args = [command, str(path)] + (["--storage", str(tmp_path / "sweeps")] if command == "sweep" else [])
    code, text = run(args, capsys)
    assert code == 2 and expected in text and str(path) in text, text
    assert len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "sweeps").exists()


def test_unexpected_failures_are_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    """A bug is reported as an internal error in one line (exit 1); --debug shows the traceback."""
    import ranksearch.cli as cli

    good = tmp_path / "trial.yaml"
    good.write_text(yaml.safe_dump({"adapter": {"family": "lora"}}))

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "load_config_file", boom)
    code, text = run(["validate", str(good)], capsys)
    assert code == 1 and "internal error (ZeroDivisionError: boom)" in text and "Traceback" not in text
    with pytest.raises(ZeroDivisionError):
        main(["trial", str(good), "--debug"])


def test_messages_survive_undecodable_names_and_markup(capsys):
    """A file name with undecodable bytes and a field path with brackets print as they are."""
    code, text = run(["validate", "caf\udce9.yaml"], capsys)
    assert code == 2 and "caf\\udce9.yaml" in text
    code, text = run(["validate", SPACE, "--set", "params.x=1"], capsys)
    assert code == 2 and "--set params.x=1" in text


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    """The real entry point in a fresh process (as a user runs it), not only main() in-process."""
    proc = subprocess.run(
        [sys.executable, "-m", "ranksearch", "satus"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "Did you mean 'status'?" in proc.stderr and "Traceback" not in proc.stderr
