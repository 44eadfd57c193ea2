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


def importances(
    journal: Path, study_name: str, objective: int, mode: str
) -> tuple[dict[str, float] | None, int]:
    """(importance of every parameter for objective ``objective``, completed trials they come from).

    The importances are None below 3 completed trials; few trials make them rough, which the report says.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None, 0
    n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n < 3:
        return None, n
    # Optuna's default evaluator measures what it takes to get LOW target values: negate maximised objectives
    sign = -1.0 if mode == "max" else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from optuna.importance import get_param_importances

            return get_param_importances(study, target=lambda t: sign * t.values[objective]), n
        except (RuntimeError, ValueError, ZeroDivisionError):
            return None, n


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
    """The child's importances (None if it failed: importances are a nicety, never a reason to fail the report)."""
    return collect_with_count(proc)[0]


def collect_with_count(proc: subprocess.Popen | None) -> tuple[dict[str, float] | None, int]:
    """(importances or None, completed trials they come from) from the child process."""
    if proc is None:
        return None, 0
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, 0
    if proc.returncode != 0:
        return None, 0
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
        return (answer["values"] or None), int(answer["trials"])
    except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError):
        return None, 0


def main(argv: list[str]) -> int:
    journal, study, objective, mode = argv
    values, n = importances(Path(journal), study, int(objective), mode)
    print(json.dumps({"values": values, "trials": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
