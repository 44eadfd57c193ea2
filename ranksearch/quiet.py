"""Keep the start-up chatter of the libraries ranksearch drives out of the user's terminal.

A sweep starts MLflow (which announces its table migrations), Ray (which announces itself and its token
authentication), Tune (a configuration box and a TensorBoard hint for a TensorBoard nobody set up) and Optuna
(which announces the study it created). None of it is something the user asked for or can act on; all of it is
shown again with ``--debug``. Errors and real warnings still get through: only these named loggers are raised
to WARNING (or ERROR for Ray's token notice), and only for the duration of the ``with`` block, so a notebook that
calls ``ranksearch.sweep`` keeps its own logging settings afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# logger -> the least severe level that still gets through
CHATTER = {
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables...", "Updating ..."
    "alembic.runtime.migration": logging.WARNING,  # the migrations themselves
    "ray._private.worker": logging.WARNING,  # "Started a local Ray instance."
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "Token authentication is enabled"
    "ray.tune": logging.WARNING,  # "Wrote the latest version of all result files ..."
    "optuna.storages.journal._storage": logging.WARNING,  # "A new study created in Journal with name: ..."
}
# Loggers whose error records come with a traceback the user cannot act on (Tune's "Trial task failed" when a
# node is lost or a trial raises): shown as one line; the traceback stays in the trial's error.txt and --debug.
ONE_LINE = ("ray.tune.execution.tune_controller",)
# Tune's new console output prints its configuration box and TensorBoard hint whatever ``verbose`` says; its
# legacy output with verbose=0 prints nothing (ranksearch draws its own progress).
TUNE_OUTPUT = {"RAY_AIR_NEW_OUTPUT": "0"}


def configure_logging(verbose: bool) -> None:
    """What a CLI command shows of logging: ranksearch's own messages at INFO as plain lines (DEBUG, with level
    and logger, when verbose); third-party messages from WARNING, their chatter only when verbose. Set before
    anything else configures the root logger, so a library's later ``basicConfig`` does not pick the format."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    logging.getLogger("ranksearch").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "alembic", "filelock", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_libraries(debug: bool = False) -> Iterator[None]:
    """Silence the start-up chatter listed in ``CHATTER`` (nothing with ``debug``), restoring it afterwards."""
    if debug:
        yield
        return
    saved = {name: logging.getLogger(name).level for name in CHATTER}
    env = {k: os.environ.get(k) for k in TUNE_OUTPUT}
    for name, level in CHATTER.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(level, logger.level))
    for k, v in TUNE_OUTPUT.items():
        os.environ.setdefault(k, v)  # a user's own choice wins
    one_line = _OneLine()
    for name in ONE_LINE:
        logging.getLogger(name).addFilter(one_line)
    try:
        yield
    finally:
        for name in ONE_LINE:
            logging.getLogger(name).removeFilter(one_line)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)


class _OneLine(logging.Filter):
    """A record's traceback becomes its last line (``Type: message``, first line of the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = (str(error).strip().splitlines() or [""])[0][:300]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {detail}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def no_random_init_warning() -> Iterator[None]:
    """open_clip warns "No pretrained weights loaded ... initialized randomly" on the root logger; building the
    model that pretraining is about to train from scratch is exactly that, so the warning is dropped there."""
    drop = _Drop("No pretrained weights loaded")
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
