"""Replay sweeps against recorded tables, in simulated time and without training (docs/replay.md).

``ranksearch.replay.table``: the public table format (parquet, one row per configuration × seed × fidelity).
``ranksearch.replay.engine``: the production searcher and Ray's scheduler driven against a table.
``ranksearch.replay.compare``: several searchers over many sweep seeds, regret/hypervolume against compute.
``ranksearch.replay.run``: ``run_replay``, the Python API behind ``ranksearch replay``.

    from ranksearch.replay import run_replay, read_table, write_table, from_rows

Nothing heavy is imported here (the CLI imports this package to register its command): the names above load
their modules on first use.
"""

from __future__ import annotations

from typing import Any

_RUN = ("run_replay", "load_replay_space")
_TABLE = ("Table", "read_table", "write_table", "from_rows", "from_arrays")
__all__ = sorted((*_RUN, "replay_sweep", *_TABLE))


def __getattr__(name: str) -> Any:
    # plain imports, one per module: the names are fixed here, never taken from data (tests/test_security.py)
    if name in _RUN:
        from ranksearch.replay import run

        return getattr(run, name)
    if name == "replay_sweep":
        from ranksearch.replay.engine import replay_sweep

        return replay_sweep
    if name in _TABLE:
        from ranksearch.replay import table

        return getattr(table, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
