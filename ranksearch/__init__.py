"""ranksearch: search which low-rank adapter, placed where, with how much rank, works best for a CLIP model.

The Python API (the CLI's commands as functions; see ``ranksearch.api`` and docs/api.md)::

    import ranksearch

    ranksearch.trial(config)                     # one trial in this process -> TrialOutcome
    ranksearch.sweep(space, gpus=8)              # a Ray Tune sweep -> Sweep
    ranksearch.load_sweep(folder)                # a sweep folder read back -> Sweep (trials, study, best, report)
    ranksearch.export(source, out_dir)           # a trial merged into a plain open_clip model folder
    ranksearch.load_config(config)               # a validated TrialConfig from a dict, YAML path or object

Heavy dependencies (torch, open_clip, ray, mlflow) are imported only when a function runs, so ``import
ranksearch`` and ``ranksearch --help`` stay fast.
"""

__version__ = "0.1.0"

import os as _os

# ranksearch runs offline by design: no usage telemetry from the libraries it drives (users may override).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__all__ = [
    "Sweep",
    "TrialOutcome",
    "export",
    "load_config",
    "load_search_space",
    "load_sweep",
    "sweep",
    "trial",
]

import sys as _sys
import types as _types

# ``trial``, ``sweep`` and ``export`` are also the names of modules of this package (ranksearch/trial.py, ...).
# Importing a submodule binds it on the package, so ``ranksearch.trial`` would turn from the API function into
# the module once anything imported ``ranksearch.trial``. Such a module is made callable instead: calling it
# calls the API function, and ``from ranksearch.trial import run_trial`` keeps working.
_CALLABLE = ("trial", "sweep", "export")


class _ApiModule(_types.ModuleType):
    """A submodule that is also the API function of the same name (see above)."""

    def __call__(self, *args, **kwargs):
        from ranksearch import api

        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


class _Package(_types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _CALLABLE and isinstance(value, _types.ModuleType) and type(value) is _types.ModuleType:
            value.__class__ = _ApiModule
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):  # lazy: the API module is imported on first use, not by `import ranksearch`
    if name in __all__:
        from ranksearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'ranksearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
