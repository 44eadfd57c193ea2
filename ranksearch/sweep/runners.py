"""What trains one configuration inside a sweep trial, by name: the real trial or the synthetic (table-lookup)
one. Below both ``sweep.trainable`` (one trial per Tune trial) and ``sweep.packed`` (K trials in one process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _real_trial(config: Any, **kwargs: Any) -> Any:
    from ranksearch.trial import run_trial

    return run_trial(config, **kwargs)


def _synthetic(config: Any, **kwargs: Any) -> Any:
    from ranksearch.sweep.synthetic import synthetic_trial

    return synthetic_trial(config, **kwargs)


RUNNERS: dict[str, Callable[..., Any]] = {"trial": _real_trial, "synthetic": _synthetic}
