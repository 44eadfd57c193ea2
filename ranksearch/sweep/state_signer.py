"""The Tune callback that signs Tune's state as Tune writes it (``ranksearch.sweep.signing``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from ranksearch.sweep.signing import sign_staged


class StateSigner(Callback):
    """Signs Tune's state files in its staging folder after every loop step (Tune saves them synchronously in
    the step, before ``on_step_end``; the copy into ``tune/`` follows in the background), so a driver killed
    at any moment leaves state that ``--resume`` accepts. Also after a trial error (its ``error.pkl``)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._seen: dict[str, tuple[int, int]] = {}

    def _scan(self, trials: list) -> None:
        for trial in trials:
            staging = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
            if staging and Path(staging).is_dir():
                sign_staged(Path(self.folder), Path(staging), self._seen)
                return

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._scan(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._scan(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._scan(trials)

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: the folder only
        return {"folder": self.folder, "_seen": {}}
