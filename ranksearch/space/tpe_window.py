"""TPE with a bounded cost per trial: it models the best trials and the most recent ones, not all of them.

Optuna's ``TPESampler`` reads every trial of the study for every new one (the search space's decomposition, the
split into good and bad trials, both density models): a sweep's driver spent 12 ms per trial at 100 trials and
56 ms at 2,000 (issue 16), and it grows without end. ``WindowedTPESampler`` gives TPE a study view that holds at
most ``window`` finished trials: the ``keep_best`` best COMPLETE ones (Optuna's "good" set holds at most 25 for
one objective, so with ``keep_best`` >= 25 the good model is exactly TPE's own) and the most recent others, in
trial order, plus the running ones (``constant_liar``). The "bad" model then sees the recent ``window`` trials
instead of all (Optuna's default weights already give old trials less weight). Below ``window`` trials nothing
changes. Multi-objective studies and studies with constraints are modelled whole (what "best" means there is
Optuna's own split), so their cost is not bounded.

The view is kept up to date incrementally (``_Kept``): each read looks only at trials that are new or were
unfinished at the previous read, so its cost is O(window + running), not O(trials). For the same reason the
grouped search space (``group=True``) is refined with newly finished trials only; since refining by a trial
twice changes nothing, it is the decomposition Optuna's TPE computes over all trials, in the same order.
"""

from __future__ import annotations

import bisect
import copy
import heapq
from typing import Any

from optuna.samplers import TPESampler
from optuna.search_space.group_decomposed import _SearchSpaceGroup
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

DEFAULT_WINDOW = 500
KEEP_BEST = 25


class WindowedTPESampler(TPESampler):
    """``TPESampler`` over at most ``window`` finished trials (see module docstring); ``window=0``: all."""

    def __init__(self, *args: Any, window: int = DEFAULT_WINDOW, keep_best: int = KEEP_BEST, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.window, self.keep_best = int(window), min(int(keep_best), max(int(window), 0))
        self._kept: _Kept | None = None
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _IncrementalGroups(self)

    def _tracker(self, study: Any) -> _Kept:
        key = (id(study._storage), study._study_id)
        if self._kept is None or self._kept.key != key:
            if study._is_multi_objective():  # modelled whole; only the grouped search space is tracked
                self._kept = _Kept(key, self.window, 0, False)
            else:
                maximize = study.direction == StudyDirection.MAXIMIZE
                self._kept = _Kept(key, self.window, self.keep_best, maximize)
        return self._kept

    def _view(self, study: Any) -> Any:
        if not self.window or study._is_multi_objective():
            return study
        return _Window(study, self._tracker(study))

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return super().infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(self._view(study), trial, param_name, param_distribution)


class _Kept:
    """Which finished trials a study's window keeps, updated from the trials that changed since the last read.

    ``trials`` given to ``update`` are all of the study's, in number order (``trials[n].number == n``)."""

    def __init__(self, key: tuple[int, int], window: int, keep_best: int, maximize: bool):
        self.key, self.window, self.keep_best, self.maximize = key, window, keep_best, maximize
        self.seen = 0  # trials[:seen] were looked at
        self.unfinished: set[int] = set()  # looked at, not finished then (running, waiting)
        self.finished: list[int] = []  # sorted numbers
        self.best: list[tuple[float, int]] = []  # min-heap of (score, number), score higher = better
        self.constrained = False
        self.groups = _SearchSpaceGroup()  # refined by COMPLETE and PRUNED trials (TPE's include_pruned)
        self._kept: list[int] | None = None  # sorted kept numbers, None: changed since computed

    def update(self, trials: list[FrozenTrial]) -> None:
        # a cached list (``use_cache``) may be older than the last one read: what it lacks waits
        candidates = [n for n in sorted(self.unfinished) if n < len(trials)] + list(
            range(self.seen, len(trials))
        )
        self.seen = max(self.seen, len(trials))
        newly = []
        for n in candidates:
            if trials[n].state.is_finished():
                self.unfinished.discard(n)
                newly.append(trials[n])
            else:
                self.unfinished.add(n)
        for t in newly:  # in trial order (as Optuna refines the groups): unfinished ones are all below `seen`
            bisect.insort(self.finished, t.number)
            self.constrained = self.constrained or bool(t.constraints)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                self.groups.add_distributions(t.distributions)
            if self.keep_best and t.state == TrialState.COMPLETE and t.value is not None:
                entry = (t.value if self.maximize else -t.value, -t.number)  # ties: the earlier trial
                if len(self.best) < self.keep_best:
                    heapq.heappush(self.best, entry)
                elif entry > self.best[0]:
                    heapq.heapreplace(self.best, entry)
        if newly:
            self._kept = None

    def kept(self) -> list[int] | None:
        """Sorted numbers of the finished trials in the window; None: all of them (below the window,
        or a constrained study)."""
        if len(self.finished) <= self.window or self.constrained:
            return None
        if self._kept is None:
            kept = {-n for _, n in self.best}
            for n in reversed(self.finished):  # the most recent others, up to the window
                if len(kept) >= self.window:
                    break
                kept.add(n)
            self._kept = sorted(kept)
        return self._kept


class _Window:
    """A study as TPE reads it, with ``_get_trials`` bounded; everything else is the study's own."""

    def __init__(self, study: Any, kept: _Kept):
        self._study, self._tracked = study, kept

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = False, states: Any = None, use_cache: bool = False) -> list[Any]:
        trials = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        # the incremental state indexes trials by number; a study where that does not hold is read whole
        if trials and (trials[0].number != 0 or trials[-1].number != len(trials) - 1):
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        self._tracked.update(trials)
        numbers = self._tracked.kept()
        if numbers is None:
            view = trials
        else:  # the window, and the unfinished trials (constant_liar's running ones), in trial order
            view = [trials[n] for n in sorted(numbers + list(self._tracked.unfinished)) if n < len(trials)]
        if states is not None:
            view = [t for t in view if t.state in states]
        return copy.deepcopy(view) if deepcopy else view


class _IncrementalGroups:
    """Optuna's ``_GroupDecomposedSearchSpace`` for this sampler, from the window's incremental state."""

    def __init__(self, sampler: WindowedTPESampler):
        self._sampler = sampler

    def calculate(self, study: Any, use_cache: bool = False) -> _SearchSpaceGroup:
        study = study._study if isinstance(study, _Window) else study  # the decomposition covers all trials
        kept = self._sampler._tracker(study)
        kept.update(study._get_trials(deepcopy=False, states=None, use_cache=use_cache))
        return copy.deepcopy(kept.groups)
