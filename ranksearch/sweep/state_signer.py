"""The Tune callback that signs Tune's state as Tune writes it (``ranksearch.sweep.signing``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from ranksearch.sweep.signing import sign_staged


class StateSigner(Callback):
    """Signs Tune's state files in its staging folder after every loop step (Tune saves them synchronously in
    the step, before ``on_step_end``; the copy into ``tune/`` follows in the background), so a driver killed
    at any moment leaves state that ``--resume`` accepts.

    Per-trial pickles are looked for only in the folders of trials that may still write one (``params.pkl``
    until it is signed, ``error.pkl`` after an error), so a step costs the same with 10 or 10,000 trials.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._seen: dict[str, tuple[int, int]] = {}
        self._open: set[str] = set()  # trial folders whose params.pkl is not signed yet
        self._erred: set[str] = set()  # trial folders that hold an error.pkl (few): always looked at

    def _scan(self, trials: list) -> None:
        staging = None
        for trial in trials:
            storage = getattr(trial, "storage", None)
            name = getattr(storage, "trial_dir_name", None)
            if name and f"tune/{name}/params.pkl" not in self._seen:
                self._open.add(name)
            staging = staging or getattr(storage, "experiment_driver_staging_path", None)
        if staging and Path(staging).is_dir():
            sign_staged(Path(self.folder), Path(staging), self._seen, sorted(self._open | self._erred))
            self._open = {d for d in self._open if f"tune/{d}/params.pkl" not in self._seen}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._scan(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = getattr(getattr(trial, "storage", None), "trial_dir_name", None)
        if name:
            self._erred.add(name)  # its error.pkl (Tune writes it before calling back): signed now and later
        self._scan(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._scan(trials)

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: the folder only
        return {"folder": self.folder, "_seen": {}, "_open": set(), "_erred": set()}
