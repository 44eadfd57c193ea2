"""Named phases of a training step, so a profiler can time the product's own step instead of a copy of it.

``Trainer.train_step`` and ``Pack`` wrap each phase in ``self.phase(name)``; the default does nothing. A benchmark
sets ``trainer.phase`` (or ``pack.phase``) to a context-manager factory that times each name
(``bench/packed.py``'s per-phase row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

PhaseHook = Callable[[str], AbstractContextManager[None]]
PHASES = ("augment", "image forward", "text forward + loss", "backward", "optimizer + after-step")


def no_phase(name: str) -> AbstractContextManager[None]:
    """The default hook: no timing, ~1 µs per phase."""
    return contextlib.nullcontext()
