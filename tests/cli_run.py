"""Run the ``ranksearch`` CLI in-process, as a test sees it: the exit status and everything it said."""

from __future__ import annotations

from typing import Any


def run_cli(args: list[str], capsys: Any, caplog: Any = None) -> tuple[int, str]:
    """(exit status, stdout + stderr [+ the log records when ``caplog`` is given]) of ``ranksearch ARGS``."""
    from ranksearch.cli import main

    if caplog is not None:
        caplog.clear()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err + (caplog.text if caplog is not None else "")
