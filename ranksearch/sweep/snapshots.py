"""Tune's experiment snapshot at a bounded share of the driver's time.

Tune rewrites its whole experiment state (``experiment_state-*.json``, every trial, plus the searcher) at a fixed
period. ranksearch wants it often (2 s: a killed driver loses only the trials started since), but the file grows
with the trials (18.8 MB at 800 trials, issue 16): at thousands of trials a 2 s period means the Tune loop does
little else. Tune's own ``TUNE_GLOBAL_CHECKPOINT_S=auto`` bounds the share (the next save after ``19 x`` the
last one's time, 5 %) but never saves more often than every 10 s. ``bounded_snapshots`` keeps Tune's rule with
ranksearch's 2 s floor: period = max(``MIN_S``, last save's time x (1 - ``SHARE``) / ``SHARE``). A user's own
``TUNE_GLOBAL_CHECKPOINT_S`` (a number) is left alone. Ray offers no public hook: the private class is checked,
so a Ray upgrade fails loudly.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from ranksearch.errors import RanksearchError

MIN_S = 2.0
SHARE = 0.05
STATS: dict[str, float] = {}  # of the last sweep in this process: saves, seconds, longest, last period


@contextlib.contextmanager
def bounded_snapshots(min_s: float = MIN_S, share: float = SHARE) -> Iterator[dict[str, float]]:
    """Within the block, Tune snapshots at most every ``min_s`` and spends at most ``share`` of its time on it."""
    if os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto") != "auto":  # the user chose a period
        yield STATS
        return
    from ray.tune.execution import experiment_state

    cls = getattr(experiment_state, "_ExperimentCheckpointManager", None)
    if cls is None or not all(hasattr(cls, a) for a in ("__init__", "sync_up_experiment_state")):
        raise RanksearchError(
            "Ray Tune's experiment checkpoint manager moved; update ranksearch.sweep.snapshots"
        )
    STATS.clear()
    STATS.update(saves=0, seconds=0.0, longest_s=0.0, period_s=min_s)
    original_init, original_sync = cls.__init__, cls.sync_up_experiment_state

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._auto_checkpoint_enabled = False  # Tune's own 10 s-floor update is replaced below
        self._checkpoint_period = min_s

    def sync(self: Any, save_fn: Any, force: bool = False, wait: bool = False) -> None:
        timed = {}

        def timed_save() -> None:
            t0 = time.monotonic()
            save_fn()
            timed["s"] = time.monotonic() - t0

        original_sync(self, timed_save, force=force, wait=wait)
        if "s" in timed:  # a save happened (not throttled)
            took = timed["s"]
            self._checkpoint_period = max(min_s, took * (1 - share) / share)
            STATS["saves"] += 1
            STATS["seconds"] += took
            STATS["longest_s"] = max(STATS["longest_s"], took)
            STATS["period_s"] = self._checkpoint_period

    saved_env = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "auto"
    cls.__init__, cls.sync_up_experiment_state = init, sync
    try:
        yield STATS
    finally:
        cls.__init__, cls.sync_up_experiment_state = original_init, original_sync
        if saved_env is None:
            os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
        else:
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = saved_env
