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

_LAZY = {
    "run_replay": "ranksearch.replay.run",
    "load_replay_space": "ranksearch.replay.run",
    "replay_sweep": "ranksearch.replay.engine",
    "Table": "ranksearch.replay.table",
    "read_table": "ranksearch.replay.table",
    "write_table": "ranksearch.replay.table",
    "from_rows": "ranksearch.replay.table",
    "from_arrays": "ranksearch.replay.table",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
