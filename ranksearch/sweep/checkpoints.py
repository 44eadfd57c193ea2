"""Bounded checkpoint storage: per trial keep the latest and the best checkpoint, delete the others once Tune's
own experiment snapshot no longer needs them.

Every evaluation reports a checkpoint (so ASHA-stopped and lost trials resume), and Tune keeps them all: the sweep
runs with ``CheckpointConfig(num_to_keep=None)`` because Tune's own pruning deletes a checkpoint before its
experiment snapshot has caught up, and a driver killed in between resumes from a deleted checkpoint (see the
comment near CheckpointConfig in ``sweep.tuner``; ``tests/test_sweep_resume.py`` keeps that fixed).

``CheckpointPruner`` (a driver-side Tune callback) does the pruning instead, and only what is safe:

* it records each trial's checkpoints as Tune reports them (``on_checkpoint``: path, the first objective's
  value, when);
* a checkpoint is deleted only when it is neither the trial's latest nor its best (``keep="best"``, the default;
  ``"latest"`` keeps only the latest, ``"all"`` deletes nothing; ``$RANKSEARCH_KEEP_CHECKPOINTS``), **and** it
  is older than the checkpoint that the experiment snapshot ``--resume`` reads (the newest
  ``tune/experiment_state-*.json``) names for that trial. That snapshot is read, not timed: Tune writes it to a
  staging folder and copies it into ``tune/`` in the background, so a file's mtime says nothing about which
  checkpoints it knows. Its checkpoint paths are found in the JSON and in the bytes of its cloudpickle blobs
  (searched, never unpickled). The named checkpoint is kept too, so a driver killed at any moment resumes from
  one that exists; a trial holds latest + best + that one, two once the snapshot has caught up;
* deletion runs in a background thread every ``$RANKSEARCH_PRUNE_EVERY_S`` (5 s), never in the Tune loop's own
  time; once ``Tuner.fit`` has returned (Tune's final snapshot is written) ``finish`` prunes the rest, so a
  finished sweep holds exactly latest + best per trial.

Checkpoints written before a driver was killed are not pruned by the resumed driver (it did not see them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)

KEEP_MODES = ("best", "latest", "all")
PRUNE_EVERY_S = 5.0
# "<trial folder>/checkpoint_<6 digits>": the mark is found first and the folder name read backwards from it, so
# a scan is linear in the blob (a regex with the name first retries every start inside long hex runs: quadratic,
# minutes per snapshot at 5,000 trials)
_MARK = re.compile(rb"/checkpoint_(\d{6})")
_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass
class _Saved:
    path: str
    value: float  # the first objective, signed so that larger is better (-inf when missing)

    @property
    def key(self) -> tuple[str, int]:
        """(trial folder name, checkpoint index) as the snapshot names it."""
        p = Path(self.path)
        return p.parent.name, int(p.name.rsplit("_", 1)[-1])


class CheckpointPruner(Callback):
    """Keep the latest and best checkpoint of each trial (see module docstring)."""

    def __init__(self, tune_dir: str, metric: str, mode: str, keep: str | None = None):
        self.tune_dir, self.metric, self.sign = tune_dir, metric, 1.0 if mode == "max" else -1.0
        keep = keep or os.environ.get("RANKSEARCH_KEEP_CHECKPOINTS", "best")
        if keep not in KEEP_MODES:
            log.warning("RANKSEARCH_KEEP_CHECKPOINTS=%r: expected one of %s; keeping all", keep, KEEP_MODES)
            keep = "all"
        self.keep = keep
        self.every_s = float(os.environ.get("RANKSEARCH_PRUNE_EVERY_S", PRUNE_EVERY_S))
        self._saved: dict[str, list[_Saved]] = {}
        self._lock = threading.Lock()
        self._last = self._round_s = 0.0
        self._worker: threading.Thread | None = None
        self.deleted = 0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        state = self.__dict__.copy()
        state.update(_saved={}, _lock=None, _worker=None, _last=0.0, _round_s=0.0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ callbacks
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = getattr(checkpoint, "path", None)
        if self.keep == "all" or not path or "://" in str(path):  # a remote URI: Tune's to manage
            return
        value = (trial.last_result or {}).get(self.metric)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        with self._lock:
            self._saved.setdefault(trial.trial_id, []).append(
                _Saved(str(path), self.sign * float(value) if ok else -math.inf)
            )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        # a big sweep's snapshot takes a while to read: keep pruning below ~5 % of the time
        if self.keep == "all" or now - self._last < max(self.every_s, 20 * self._round_s):
            return
        self._last = now
        if self._worker is not None and self._worker.is_alive():
            return  # the previous round is still deleting
        # reading the snapshot (megabytes on big sweeps) and deleting happen off the Tune loop
        self._worker = threading.Thread(target=self._round, daemon=True)
        self._worker.start()

    def _round(self) -> None:
        t0 = time.monotonic()
        try:
            self._delete(self.deletable(named_checkpoints(self.tune_dir)))
        except Exception as e:  # pruning is housekeeping: never let it disturb the sweep
            log.warning("checkpoint pruning skipped: %s", e)
        self._round_s = time.monotonic() - t0

    def finish(self) -> int:
        """After ``Tuner.fit`` returned (Tune has written its final snapshot): prune what is left; how many."""
        if self._worker is not None:
            self._worker.join(timeout=120)
        doomed = self.deletable(named_checkpoints(self.tune_dir))
        self._delete(doomed)
        return len(doomed)

    # ------------------------------------------------------------------------------------------ the rule
    def deletable(self, named: dict[str, int]) -> list[str]:
        """Checkpoints safe to delete now (and forgotten): not latest, not best, older than the checkpoint the
        snapshot names for their trial (``named``: trial folder -> checkpoint index, ``named_checkpoints``)."""
        doomed: list[str] = []
        with self._lock:
            for saved in self._saved.values():
                if len(saved) < 2:
                    continue
                folder = saved[-1].key[0]
                restore = named.get(folder)
                if restore is None:
                    continue
                keep = {id(saved[-1])}
                if self.keep == "best":
                    keep.add(id(max(saved, key=lambda s: s.value)))
                gone = [s for s in saved if s.key[1] < restore and id(s) not in keep]
                doomed += [s.path for s in gone]
                saved[:] = [s for s in saved if s not in gone]
        return doomed

    def _delete(self, paths: list[str]) -> None:
        for path in paths:
            try:
                shutil.rmtree(path)
                self.deleted += 1
            except FileNotFoundError:
                pass
            except OSError as e:  # a full or flaky shared file system: keep going, the sweep matters more
                log.warning("could not delete the old checkpoint %s: %s", path, e)


def named_checkpoints(tune_dir: str | Path) -> dict[str, int]:
    """{trial folder: newest checkpoint index} named by the newest experiment snapshot in ``tune_dir``.

    Tune stores each trial's checkpoint manager as a cloudpickle blob (hex) inside JSON strings; the checkpoint
    paths are plain bytes in it, so they are searched for, never unpickled. An unreadable or half-copied
    snapshot names nothing (nothing is deleted this round).
    """
    states = sorted(Path(tune_dir).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, int] = {}

    def scan(blob: bytes) -> None:
        for m in _MARK.finditer(blob):
            start = m.start()
            while start > 0 and blob[start - 1] in _NAME_BYTES:
                start -= 1
            if start == m.start():
                continue
            name, index = blob[start : m.start()].decode(), int(m.group(1))
            # in a pickle a relative path may follow a length byte that reads as a letter: try without it
            for candidate in (name, name[1:]):
                found[candidate] = max(found.get(candidate, -1), index)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("_type") == "CLOUDPICKLE_FALLBACK" and isinstance(node.get("value"), str):
                with contextlib.suppress(ValueError):
                    scan(bytes.fromhex(node["value"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            if node[:1] in "[{":
                try:
                    walk(json.loads(node))
                    return
                except ValueError:
                    pass
            scan(node.encode())

    walk(data)
    return found
