"""Item 7 (pending): recorded grid on the built-in world, replay backend, search efficiency over >= 10 seeds.

Needs ``ranksearch.sweep`` / ``ranksearch.space`` (being written); reports what is missing until they exist.
"""

from __future__ import annotations

import importlib.util

from bench.report import Context, Row

MISSES: dict[str, str] = {}


def run(ctx: Context) -> list[Row]:
    have = all(importlib.util.find_spec(m) is not None for m in ("ranksearch.sweep", "ranksearch.space"))
    status = (
        "not run: ranksearch.sweep / ranksearch.space are not in this checkout yet"
        if not have
        else "not run: not implemented yet"
    )
    return [
        Row("search_efficiency", "compute to reach best-1 HM: TPE+ASHA / random (≥ 10 seeds, replay)", "≤ 0.5",
            status),
        Row("search_efficiency", "compute to reach best-1 HM: TPE / random", "report", status),
        Row("search_efficiency", "Pareto hypervolume, multi-objective (replay)", "report", status),
    ]  # fmt: skip
