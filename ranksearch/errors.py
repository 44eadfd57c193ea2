"""Exception hierarchy: one root, one subclass per failing stage.

The CLI turns any ``RanksearchError`` into one clear message and exit status 2 (bad input) or 1 (a failure
while running); tracebacks are shown only under ``--debug``.
"""

from __future__ import annotations


class RanksearchError(Exception):
    """Root of every error ranksearch raises on purpose."""

    exit_code = 1


class ConfigError(RanksearchError):
    """A trial config or search space is invalid. ``problems`` lists (field path, message) pairs.

    One problem reads as one line (``train.lr: must be > 0 (in my.yaml)``); several as a header and one line
    each. The path ``<file>`` means the file itself (unreadable, not YAML, ...).
    """

    exit_code = 2

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        super().__init__(self.describe())

    def describe(self, with_source: bool = True) -> str:
        """The message, naming the source file unless ``with_source`` is False (the caller names it)."""
        source = self.source if with_source else None
        if len(self.problems) == 1:
            path, msg = self.problems[0]
            if path == "<file>":
                return f"{source}: {msg}" if source else msg
            return f"{path}: {msg}" + (f" (in {source})" if source else "")
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"] + [f"  {p}: {m}" for p, m in self.problems]
        return "\n".join(lines)


class ModelLoadError(RanksearchError):
    """A model or its pretrained weights could not be built or loaded."""

    exit_code = 2


class DataError(RanksearchError):
    """A dataset is missing, malformed or not in the expected layout."""

    exit_code = 2


class AdapterError(RanksearchError):
    """An adapter cannot do what was asked (e.g. merge a non-mergeable family, a corrupt adapter file)."""


class TrialError(RanksearchError):
    """A trial failed while running (diverged, crashed); the message says why."""


class SweepError(RanksearchError):
    """A sweep ran but produced nothing usable (e.g. no trial completed); the message says why."""
