"""Replay sweeps against recorded tables, in simulated time and without training.

``ranksearch.replay.table``: the public table format (parquet, one row per configuration × seed × fidelity).
``ranksearch.replay.engine``: the production searcher and Ray scheduler driven against a table.
``ranksearch.replay.compare``: several searchers over many sweep seeds, regret/hypervolume against compute.
"""

from ranksearch.replay.table import Table, read_table, write_table

__all__ = ["Table", "read_table", "write_table"]
