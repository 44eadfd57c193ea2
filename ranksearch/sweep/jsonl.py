"""JSON-lines state files (Optuna's journal, the MLflow journal) read strictly, and the refusal they raise.

Below ``sweep.state`` (which checks a whole folder) and ``sweep.mlflow_buffer`` (which replays its journal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ranksearch.errors import RanksearchError


class StateError(RanksearchError):
    """A sweep folder's state file is damaged or does not fit the others: nothing was changed."""

    exit_code = 2


def refuse(path: Path, problem: str, recoverable: str, command: str | None) -> StateError:
    """The one-line refusal: ``<file>: <problem>; <what is still readable>. Recover: <command>``."""
    text = f"cannot resume: {path}: {problem}; {recoverable}."
    if command:
        text += f" Recover: {command}"
    return StateError(text + " (nothing was changed)")


def read_jsonl(path: Path, what: str, allow_cut_tail: bool = False) -> tuple[list[dict[str, Any]], int]:
    """(every line of ``path`` as a JSON object, their bytes); ``StateError`` naming the first bad line.

    ``allow_cut_tail``: a last line without its newline (a write cut short, never acknowledged) is ignored;
    the byte count then says where the whole records end.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise refuse(path, f"not readable ({first_line(e)})", "nothing of it could be read", None) from None
    records: list[dict[str, Any]] = []
    good_bytes = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line:
            break  # the file ends with a newline
        try:
            item = json.loads(line.decode("utf-8"))
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
            if last:  # a complete record without its newline: the write was cut before the newline
                raise ValueError("no newline at the end (the write was cut short)")
        except ValueError as e:
            if last and allow_cut_tail:
                break
            cut = last or not any(lines[number:])
            problem = f"line {number} is not a whole {what} ({first_line(e)})"
            if cut:
                problem += ": the file was cut short (a full disk or a killed writer)"
            raise refuse(
                path, problem,
                f"its first {len(records)} records ({good_bytes} bytes) are whole",
                f"after making a copy of the folder, keep them with  truncate -s {good_bytes} {path}  and --resume"
                " again (what the cut records held is lost)",
            ) from None  # fmt: skip
        records.append(item)
        good_bytes += len(line) + 1
    return records, good_bytes


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:160] or type(error).__name__
