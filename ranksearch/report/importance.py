"""Optuna's parameter importances of a sweep's study, computed in a child process.

``import optuna.importance`` pulls in scikit-learn (~2 s on the project's 2-core machines) for its fANOVA
evaluator even though the default evaluator (PED-ANOVA in Optuna 5) does not need it. ``start`` launches the
computation in a separate Python process so it overlaps with loading the sweep and drawing the other figures;
``collect`` waits for its JSON answer. Run as ``python -m ranksearch.report.importance JOURNAL STUDY INDEX MODE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

TIMEOUT_S = 120.0


def importances(journal: Path, study_name: str, objective: int, mode: str) -> dict[str, float] | None:
    """Importances of every parameter for objective ``objective`` (None: fewer than 3 completed trials)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 3:
        return None
    # Optuna's default evaluator measures what it takes to get LOW target values: negate maximised objectives
    sign = -1.0 if mode == "max" else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from optuna.importance import get_param_importances

            return get_param_importances(study, target=lambda t: sign * t.values[objective])
        except (RuntimeError, ValueError, ZeroDivisionError):
            return None


def start(data: Any, objective: int = 0) -> subprocess.Popen | None:
    """Launch the child process for a loaded sweep (``SweepData``); None when it has no Optuna journal."""
    journal = data.folder / "optuna.journal"
    if not journal.is_file():
        return None
    study = getattr(data.manifest, "study_name", None) or "ranksearch"
    mode = data.objectives[objective].mode
    cmd = [sys.executable, "-m", "ranksearch.report.importance", str(journal), study, str(objective), mode]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen | None) -> dict[str, float] | None:
    """The child's answer (None if it failed: importances are a nicety, never a reason to fail the report)."""
    if proc is None:
        return None
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(stdout.strip().splitlines()[-1]) or None
    except (json.JSONDecodeError, IndexError):
        return None


def main(argv: list[str]) -> int:
    journal, study, objective, mode = argv
    print(json.dumps(importances(Path(journal), study, int(objective), mode)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
