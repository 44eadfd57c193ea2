"""Ctrl-C and SIGTERM stop a sweep cleanly: Tune saves its state, the driver records "interrupted", exit 130/143.

Ray's driver would die on SIGTERM with a native stack dump (exit 134) and no saved state; Tune's own SIGINT
handler stops the loop but nobody learns that a signal, not the end of the search, ended ``fit``. So during
``fit`` both signals go through one handler here: it notes the signal and asks Tune to stop the way Tune's
SIGINT handler does (Tune always listens on SIGUSR1 for that); a second signal acts at once (KeyboardInterrupt
for SIGINT, the default action for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Stop:
    """Which stop signal arrived during the block (``None``: none)."""

    signal: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (signal.SIGTERM if self.signal == "SIGTERM" else signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Route SIGINT/SIGTERM to Tune's clean stop for the duration of the block (main thread only)."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours handles SIGINT, so Tune can tell us it stopped

    def handler(signum: int, frame: Any) -> None:
        stop.signal = signal.Signals(signum).name
        for s, h in previous.items():  # a second signal is not caught again
            signal.signal(s, h if s == signal.SIGINT else signal.SIG_DFL)
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's stop handler, installed once fit runs
            os.kill(os.getpid(), signal.SIGUSR1)
        else:  # fit has not started (or is over): nothing to save, stop here
            raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env
