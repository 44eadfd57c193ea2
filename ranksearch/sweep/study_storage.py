"""The Optuna study of a sweep on a database server (``ranksearch sweep --storage postgresql://...``).

The default study is ``optuna.journal`` in the sweep folder (one driver writes it; NFS-safe). Several sweeps
sharing one study server, or a site that keeps everything in PostgreSQL, pass a database URL instead; the study
is then an Optuna ``RDBStorage`` with what a days-long sweep needs:

* ``pool_pre_ping``: a pooled connection that the server closed (idle timeout, restart) is replaced before use
  instead of failing the next call;
* retries: a call that loses its connection (the server restarts, fails over) is retried with backoff for up to
  ``RANKSEARCH_STUDY_RETRY_S`` (default 300 s) before the error reaches the sweep; the Tune loop waits, because
  the searcher's record must stay consistent;
* heartbeats: Optuna's own stale-trial detection (``heartbeat_interval``/``grace_period``) only beats inside
  ``study.optimize``; Ray drives the study by ask/tell, so a driver thread beats for every running trial
  (``Heartbeat``); a driver that dies stops beating, and its running trials are failed by
  ``optuna.storages.fail_stale_trials`` once the grace period passes (``--resume`` does this at once);
* no password on disk: Tune pickles the searcher (and so this storage) into the sweep folder; the pickled URL has
  its password masked, and the password is put back from the URL this process was given (``remember``), or
  libpq's ``PGPASSWORD`` / ``~/.pgpass`` when it was never in the URL.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from ranksearch.tracking.credentials import MASK, is_database_url, redact  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

HEARTBEAT_S, GRACE_S = 60, 600
_FULL_URLS: dict[str, str] = {}  # redacted URL -> URL with its password (this process only)

# Ray's OptunaSearch uses ask/tell; with heartbeats on, Optuna warns on every ask that they are meant for
# study.optimize. The Heartbeat thread below is what makes them work here.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def remember(url: str) -> str:
    """Keep ``url``'s password for this process (storages unpickled later get it back); its redacted form."""
    shown = redact(url)
    if shown != url:
        _FULL_URLS[shown] = url
    return shown


def connectable(url: str) -> str:
    """A URL to connect with: the remembered full URL, else without the masked password (libpq then reads
    ``PGPASSWORD`` or ``~/.pgpass``)."""
    if url in _FULL_URLS:
        return _FULL_URLS[url]
    return url.replace(f":{MASK}@", "@")


def with_driver(url: str) -> str:
    """``url`` with an installed PostgreSQL driver: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3,
    while ranksearch's ``[postgres]`` extra installs psycopg2; name psycopg2 when only it is there."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in ("postgresql", "postgres") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url  # open_storage says which extra to install
    return f"postgresql+psycopg2{sep}{rest}"


def _lost_connection(error: BaseException | None) -> bool:
    """True when ``error`` (or what it wraps: Optuna re-raises SQLAlchemy's errors as StorageInternalError)
    is a dropped or refused connection."""
    import sqlalchemy.exc

    while error is not None:
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _retrying(name: str) -> Any:
    base = getattr(RDBStorage, name)

    @functools.wraps(base)
    def method(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + float(os.environ.get("RANKSEARCH_STUDY_RETRY_S", "300"))
        delay, warned = 0.5, False
        while True:
            try:
                return base(self, *args, **kwargs)
            except Exception as e:
                if not _lost_connection(e) or time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    log.warning(
                        "Optuna study at %s is not answering (%s); retrying",
                        self.shown_url,
                        str(e).splitlines()[0][:200],
                    )
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return method


class ResilientRDBStorage(RDBStorage):
    """``RDBStorage`` with pre-ping, retries on a lost connection, heartbeats, no password in its pickle."""

    def __init__(self, url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S):
        self.shown_url = remember(url)
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(
                with_driver(url),
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
            )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["url"] = self.shown_url  # never the password (Tune writes this pickle into the sweep folder)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["url"] = with_driver(connectable(state["url"]))
        super().__setstate__(state)


for _name, _member in vars(BaseStorage).items():
    if callable(_member) and not _name.startswith("_") and _name != "remove_session":
        setattr(ResilientRDBStorage, _name, _retrying(_name))
# ... and what Optuna's cache and heartbeat call on the backend directly
for _name in (
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_get_trials",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
):
    setattr(ResilientRDBStorage, _name, _retrying(_name))


def open_storage(url: str) -> ResilientRDBStorage:
    """The study storage at ``url`` (tables created on first use).

    Raises:
        ConfigError: the server cannot be reached or refuses the login (one line, password masked).
    """
    from ranksearch.errors import ConfigError
    from ranksearch.tracking.credentials import redact_text

    try:
        return ResilientRDBStorage(url)
    except ImportError:
        raise ConfigError(
            [("--storage", f"{redact(url)}: needs the database driver: pip install 'ranksearch[postgres]'")]
        ) from None
    except Exception as e:
        first = redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ConfigError(
            [("--storage", f"{redact(url)}: cannot open the Optuna study there: {first}")]
        ) from None


class Heartbeat:
    """A daemon thread that records an Optuna heartbeat for every running trial of ``searcher`` every interval.

    ``searcher`` is a Ray ``OptunaSearch``: its live trials are ``_ot_trials`` minus ``_completed_trials``. The
    thread holds no state that Tune pickles (it is not an attribute of the searcher).
    """

    def __init__(self, searcher: Any, interval_s: float | None = None):
        self.searcher = searcher
        storage = _rdb(searcher)
        self.storage = storage
        self.interval_s = interval_s or (storage.get_heartbeat_interval() if storage else None) or HEARTBEAT_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ranksearch-study-heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> Heartbeat:
        if self.storage is not None:
            self._thread.start()
        return self

    def beat(self) -> int:
        """Record one heartbeat for each running trial; how many."""
        done = set(getattr(self.searcher, "_completed_trials", ()))
        live = [t for tid, t in list(getattr(self.searcher, "_ot_trials", {}).items()) if tid not in done]
        for t in live:
            try:
                self.storage.record_heartbeat(t._trial_id)
            except Exception as e:  # a heartbeat is advisory; the next one may get through
                log.debug("heartbeat of Optuna trial %s failed: %s", t.number, e)
        self.beats += len(live)
        return len(live)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


_BEATING: dict[int, Heartbeat] = {}


def ensure_heartbeat(searcher: Any) -> None:
    """Start the heartbeat thread of ``searcher`` once per process (new or restored by Tune); no-op without
    a database study."""
    if id(searcher) not in _BEATING and _rdb(searcher) is not None:
        _BEATING[id(searcher)] = Heartbeat(searcher).start()


def stop_heartbeats() -> None:
    """Stop every heartbeat thread of this process (the sweep ended)."""
    while _BEATING:
        _BEATING.popitem()[1].stop()


def _rdb(searcher: Any) -> ResilientRDBStorage | None:
    """The searcher study's storage when it is a database with heartbeats (Optuna may wrap it in a cache)."""
    storage = getattr(getattr(searcher, "_ot_study", None), "_storage", None)
    storage = getattr(storage, "_backend", storage)  # optuna's _CachedStorage
    return storage if isinstance(storage, ResilientRDBStorage) else None


def fail_stale(searcher: Any) -> int:
    """Fail the study's trials whose heartbeat stopped (a dead driver's); how many (0 without heartbeats)."""
    study = getattr(searcher, "_ot_study", None)
    if study is None or _rdb(searcher) is None:
        return 0
    before = sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    return sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False)) - before
