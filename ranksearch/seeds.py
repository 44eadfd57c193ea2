"""Seed replicates: the same configuration run under several seeds, summarised as mean and std."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def sample_std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def aggregate(done: list[dict[str, float]], std_keys: Iterable[str] | None = None) -> dict[str, float]:
    """Mean of every metric present in all replicates, plus ``<key>_std`` for ``std_keys`` (None: all keys)."""
    keys = set(done[0]).intersection(*done[1:]) if done else set()
    wanted = keys if std_keys is None else set(std_keys)
    out: dict[str, float] = {}
    for k in sorted(keys):
        values = [d[k] for d in done]
        out[k] = sum(values) / len(values)
        if k in wanted:
            out[f"{k}_std"] = sample_std(values)
    return out
