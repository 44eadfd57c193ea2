"""A durable, idempotent buffer for the sweep's MLflow writes: an append-only journal in the sweep folder.

Why: sweeps run for days and the tracking server restarts. The driver callback never talks to MLflow directly;
it appends each write (create a child run, a metrics batch, tags, artifacts, end a run) to
``<sweep folder>/mlflow.journal.jsonl`` (one JSON object per line, written to the OS at once, so a killed driver
loses nothing it had accepted; fsync'd in groups by the delivery thread every ``FSYNC_S``, so a machine crash
loses at most that much). That is all the Tune loop does: a background thread (``start``) delivers what is
pending, in order, in batches (consecutive metric writes become one ``log_batch`` per run, up to 1000 points).
When the server does not answer, delivery stops at the first failed entry and is retried with exponential
backoff (1 s, 2 s, ... 30 s) while the sweep goes on; neither trials nor the Tune loop wait for MLflow. A
delivered entry is acknowledged by an ``{"ack": seq}`` line in the same file.

Idempotence, so nothing is logged twice:

* metrics are keyed by (trial, key, step): a point whose key is already in the journal is not appended again
  (a trial's tail re-run after ``--resume`` or a node loss reports the same steps again);
* the entries that may have been delivered without their ack (the driver died in between, or the server
  stored a batch but the reply was lost: the first pending entry and the metric writes batched with it) are
  checked against the run's metric history before they are sent;
* child runs are looked up by the tag ``ranksearch.trial_id`` before one is created; tags, run status and
  artifacts overwrite.

Entries address runs by trial id (or ``"parent"``), never by MLflow run id, so a run can be created while the
server is down: its id is resolved when the entry is delivered. That holds for the sweep's parent run too: a
sweep whose tracking server does not answer at its start journals a ``parent`` entry (experiment, run name,
tags, params and a random ``ranksearch.parent_key`` tag) ahead of everything else; it is delivered first, found
again by its key when its ack was lost (or a later driver reads the journal with sweep.json not yet holding the
id), and every tag value ``{"run_of": "parent"}`` (a child's ``mlflow.parentRunId``) resolves to its id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOURNAL_FILE = "mlflow.journal.jsonl"
PARENT = "parent"
TRIAL_TAG = "ranksearch.trial_id"
PARENT_KEY_TAG = "ranksearch.parent_key"  # a journalled parent run's own random key (found again by it)
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
FSYNC_S = 0.05  # the delivery thread fsyncs the journal at least this often while writes arrive
BATCH_POINTS = (
    1000  # journal entries are grouped into deliveries of at most this many points (MLflow's request limit)
)
# Errors the server sends when it has understood the request: retrying cannot help, so the entry is dropped.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}


class TrackingJournal:
    """The sweep's pending MLflow writes (see module docstring).

    ``append`` (the Tune loop) and delivery (``flush``, from the thread ``start`` runs, or called directly) may
    run in different threads: the file and the pending entries are guarded by a lock that is never held during
    a call to MLflow, and only one delivery runs at a time.

    Args:
        folder: the sweep folder (the journal file lives there).
        uri: MLflow tracking URI.
        parent_run_id: the sweep's parent run; its experiment holds the child runs. None while the parent run is
            itself a journal entry not yet delivered (``parent_entry``; its id is then resolved at delivery).
        client: an ``MlflowClient``-like object (tests pass fakes); default one for ``uri``.
    """

    def __init__(self, folder: str | Path, uri: str, parent_run_id: str | None, client: Any = None):
        self.path = Path(folder) / JOURNAL_FILE
        self.uri = uri
        self._client = client
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {PARENT: parent_run_id} if parent_run_id else {}  # trial id -> run id
        self._parent_spec: dict[str, Any] | None = None  # a journalled parent run's entry (delivered or not)
        self._entries: dict[int, dict[str, Any]] = {}  # pending, by seq
        self._seen: set[tuple[str, str, int]] = set()  # (target, key, step) of every journaled metric
        self._uncertain: set[int] = set()  # entries that may have reached MLflow without an ack
        self._held: dict[str, dict[str, set[int]]] = {}  # run id -> key -> steps MLflow holds
        self._created: set[str] = set()  # runs this journal created (nothing in them it did not deliver)
        self.acked = 0
        self.seq = 0
        self.stats = {"appended": 0, "delivered": 0, "dropped": 0, "skipped_duplicates": 0, "failures": 0}
        self._failing_since: float | None = None
        self._next_try = 0.0
        self._attempt = 0
        self._lock = threading.Lock()  # the file, _entries, _seen, seq
        self._delivering = threading.Lock()  # one delivery at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False  # written since the last fsync
        self.periodic: list[tuple[float, Any]] = []  # (every s, fn) run by the delivery thread
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open: one append per write)

    # ------------------------------------------------------------------------------------------ the file
    def _load(self) -> None:
        from ranksearch.sweep.jsonl import read_jsonl, refuse

        if not self.path.exists():
            return
        # a garbled line refuses (StateError naming the file and line); a last line cut short by a crash was
        # never acknowledged to the caller: it is dropped, so the next append starts on a line of its own
        items, whole = read_jsonl(self.path, what="MLflow journal entry", allow_cut_tail=True)
        if whole < self.path.stat().st_size:
            log.warning(
                "MLflow journal: dropped a last entry cut short (%d bytes)", self.path.stat().st_size - whole
            )
            os.truncate(self.path, whole)
        acks: set[int] = set()
        for number, item in enumerate(items, start=1):
            if not _well_formed(item):
                raise refuse(
                    self.path, f"line {number} is JSON but not a journal entry",
                    f"its other {len(items) - 1} entries are whole",
                    f"after making a copy of the folder, delete line {number} ( sed -i {number}d {self.path} ) and "
                    "--resume again (the runs' metrics are checked against MLflow, so nothing is logged twice)",
                )  # fmt: skip
            if "ack" in item:
                acks.add(int(item["ack"]))
                continue
            seq = int(item["seq"])
            self.seq = max(self.seq, seq)
            self._entries[seq] = item
            if item["op"] == "parent":
                self._parent_spec = item
            if item["op"] == "metrics":
                self._seen |= {(item["target"], m[0], int(m[3])) for m in item["metrics"]}
        for seq in acks:
            self._entries.pop(seq, None)
        self.acked = max(acks, default=0)
        if self._entries:
            # the first pending entry, and the metric writes delivered in one batch with it, may have reached
            # MLflow just before the driver died, their acks unwritten
            for seq in sorted(self._entries):
                if seq != min(self._entries) and self._entries[seq]["op"] != "metrics":
                    break
                self._uncertain.add(seq)
            log.info(
                "MLflow journal: %d buffered writes from an earlier driver to deliver", len(self._entries)
            )

    def _write(self, item: dict[str, Any]) -> None:
        """One line, handed to the OS at once (a killed driver loses nothing); fsync'd by ``sync``. Hold _lock."""
        self._fh.write(json.dumps(item, separators=(",", ":")) + "\n")
        self._fh.flush()
        self._dirty = True
        if self._thread is None:  # no delivery thread to sync in groups: sync each write
            os.fsync(self._fh.fileno())
            self._dirty = False

    def sync(self) -> None:
        """fsync what was written since the last call (a machine crash then loses nothing before it)."""
        with self._lock:
            dirty, self._dirty = self._dirty, False
            fd = self._fh.fileno() if dirty and not self._fh.closed else None
        if fd is not None:
            os.fsync(fd)  # outside the lock: appends go on meanwhile

    def append(self, op: str, target: str, **fields: Any) -> int | None:
        """Record one write; returns its sequence number (None when nothing was left to write)."""
        with self._lock:
            if op == "metrics":
                fresh = []
                for m in fields["metrics"]:
                    key = (target, m[0], int(m[3]))
                    if key in self._seen:
                        self.stats["skipped_duplicates"] += 1
                        continue
                    self._seen.add(key)
                    fresh.append(list(m))
                if not fresh:
                    return None
                fields["metrics"] = fresh
            self.seq += 1
            item = {"seq": self.seq, "op": op, "target": target, **fields}
            self._write(item)
            self._entries[self.seq] = item
            if op == "parent":
                self._parent_spec = item
            self.stats["appended"] += 1
            seq = self.seq
        self._wake.set()
        return seq

    @property
    def pending(self) -> int:
        """Writes accepted but not yet delivered to MLflow."""
        return len(self._entries)

    def close(self) -> None:
        self.stop()
        with self._lock, contextlib.suppress(Exception):
            self._fh.close()

    # ------------------------------------------------------------------------------------ the thread
    def start(self) -> TrackingJournal:
        """Deliver from a daemon thread from now on (the caller only appends); idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ranksearch-mlflow-delivery", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the delivery thread (after its current batch); what is pending stays pending."""
        thread = self._thread
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=timeout_s)
            self._thread = None
        with contextlib.suppress(Exception):
            self.sync()

    def _run(self) -> None:
        last = dict.fromkeys(range(len(self.periodic)), time.monotonic())
        while not self._stop.is_set():
            self._wake.wait(timeout=FSYNC_S if self._dirty else 0.5)
            self._wake.clear()
            try:
                self.sync()
                self.flush()
                for i, (every, fn) in enumerate(list(self.periodic)):
                    if time.monotonic() - last.get(i, 0.0) >= every:
                        last[i] = time.monotonic()
                        fn()
            except Exception as e:  # never let the thread die: the next round retries
                log.warning("MLflow delivery thread: %s", str(e).splitlines()[0][:200] if str(e) else e)
                time.sleep(0.5)
            if self._entries and not self._stop.is_set():
                # backing off after a failure: sleep until the next try, woken early only to stop
                wait = max(0.0, self._next_try - time.monotonic())
                if wait:
                    self._stop.wait(min(wait, 1.0))

    # ------------------------------------------------------------------------------------------ delivery
    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def flush(self, force: bool = False) -> bool:
        """Deliver pending writes in order, in batches; stop at the first failure. True when nothing is left.

        Without ``force`` an attempt is made only once the backoff after the last failure has passed, so it can
        be called often at no cost while the server is away.
        """
        with self._delivering:
            if not self._entries:
                return True
            if not force and time.monotonic() < self._next_try:
                return False
            with self._lock:
                pending = [self._entries[seq] for seq in sorted(self._entries)]
            delivered = 0
            with _fail_fast():
                for group in _batches(pending):
                    try:
                        self._deliver_group(group)
                    except Exception as e:
                        if _permanent(e):
                            log.warning(
                                "MLflow rejected a buffered %s write (dropped): %s", group[0]["op"], e
                            )
                            self.stats["dropped"] += len(group)
                        else:
                            # the server may have stored some before the reply was lost
                            self._uncertain.update(item["seq"] for item in group)
                            self._failed(e)
                            break
                    with self._lock:
                        for item in group:
                            self._entries.pop(item["seq"], None)
                            self._uncertain.discard(item["seq"])
                            self._write({"ack": item["seq"]})
                            self.acked = max(self.acked, item["seq"])
                    delivered += len(group)
            self.stats["delivered"] += delivered
            if not self._entries and self._failing_since is not None:
                log.warning(
                    "MLflow is back after %.0f s: delivered the buffered writes",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since, self._attempt, self._next_try = None, 0, 0.0
            elif delivered and self._failing_since is None:
                self._attempt, self._next_try = 0, 0.0
            return not self._entries

    def _deliver_group(self, group: list[dict[str, Any]]) -> None:
        """One entry, or consecutive metric writes of one run as one ``log_batch`` (verified if uncertain)."""
        if len(group) == 1 and group[0]["op"] != "metrics":
            self._deliver(group[0], verify=group[0]["seq"] in self._uncertain)
            return
        merged = {
            "op": "metrics",
            "target": group[0]["target"],
            "metrics": [m for g in group for m in g["metrics"]],
        }
        self._deliver(merged, verify=any(g["seq"] in self._uncertain for g in group))

    def drain(self, timeout_s: float) -> bool:
        """Flush until nothing is pending or ``timeout_s`` passed; True when everything was delivered."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                log.warning(
                    "MLflow: %d writes still undelivered; they stay in %s and are sent by the next run or "
                    "--resume of this sweep",
                    self.pending,
                    self.path,
                )
                return False
            time.sleep(
                min(max(0.0, self._next_try - time.monotonic()), max(0.0, deadline - time.monotonic()))
            )
        return True

    def _failed(self, error: Exception) -> None:
        self.stats["failures"] += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            from ranksearch.tracking.credentials import redact, redact_text

            log.warning(
                "MLflow at %s is not answering (%s); buffering writes in %s and retrying",
                redact(self.uri),
                redact_text(str(error).splitlines()[0][:200] if str(error) else type(error).__name__),
                self.path,
            )
        self._next_try = time.monotonic() + BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
        self._attempt += 1

    @property
    def parent_run_id(self) -> str | None:
        """The parent run's MLflow id: given, or found once its journalled creation reached MLflow."""
        return self.run_id(PARENT)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            parent = self.parent_run_id
            if parent is None:
                raise ConnectionError("the sweep's parent run is not in MLflow yet")  # retried, never dropped
            self._experiment_id = self.client.get_run(parent).info.experiment_id
        return self._experiment_id

    def _find_parent(self) -> str | None:
        """The journalled parent run, found by its key (created before a lost ack or by an earlier driver)."""
        spec = self._parent_spec
        if spec is None:
            return None
        exp = self.client.get_experiment_by_name(spec["experiment"])
        if exp is None:
            return None
        found = self.client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{PARENT_KEY_TAG}` = '{spec['key']}'"
        )
        if not found:
            return None
        self._experiment_id = exp.experiment_id
        return found[0].info.run_id

    def find_run(self, trial_id: str) -> Any | None:
        """The child run of ``trial_id`` (searched by tag), or None."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
            ),
        )
        return found[0] if found else None

    def run_id(self, target: str) -> str | None:
        """MLflow run id of ``target`` (a trial id or ``"parent"``), resolved and cached; None if no run."""
        if target not in self._runs:
            if target == PARENT:
                parent = self._find_parent()
                if parent is None:
                    return None
                self._runs[PARENT] = parent
                return parent
            run = self.find_run(target)
            if run is None:
                return None
            self._runs[target] = run.info.run_id
        return self._runs[target]

    def _deliver(self, item: dict[str, Any], verify: bool) -> None:
        op, target = item["op"], item["target"]
        if op == "child":
            self._deliver_child(item)
            return
        if op == "orphans":
            self._deliver_orphans(set(item["known"]))
            return
        if op == "parent":
            self._deliver_parent(item)
            return
        run_id = self.run_id(target)
        if run_id is None:
            log.warning("MLflow: no run for trial %s; %s write skipped", target, op)
            return
        client = self.client
        if op == "metrics":
            from mlflow.entities import Metric

            metrics = self._new_points(run_id, item["metrics"], verify)
            batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics]
            client.log_batch(run_id, metrics=batch)  # log_batch splits into MLflow's per-request limits
            for k, _v, _ts, step in metrics:
                self._held[run_id][k].add(int(step))
        elif op == "tags":
            from mlflow.entities import RunTag

            tags = [RunTag(k, self._value(v)) for k, v in item["tags"].items()]
            client.log_batch(run_id, tags=tags)
        elif op == "artifact":
            path = Path(item["path"])
            path = (
                path if path.is_absolute() else self.path.parent / path
            )  # relative: inside the sweep folder
            if not path.exists():
                log.warning("MLflow: artifact %s is gone; not logged", path)
            elif path.is_dir():
                client.log_artifacts(run_id, str(path))
            else:
                client.log_artifact(run_id, str(path))
        elif op == "end":
            client.set_terminated(run_id, status=item["status"])
        elif op == "running":
            client.update_run(run_id, status="RUNNING")
        else:
            log.warning("MLflow journal: unknown op %r skipped", op)

    def _new_points(self, run_id: str, metrics: list[list[Any]], verify: bool) -> list[list[Any]]:
        """The points of ``metrics`` MLflow does not hold yet (by key and step).

        What a run holds is read from MLflow once per key for every run this journal did not create (a run of
        an earlier driver, or the parent), so the keys survive the journal's loss: a resumed trial's re-run
        tail is never logged twice even when ``mlflow.journal.jsonl`` was deleted. ``verify``: read it again
        (the entry may have been stored without its acknowledgement).
        """
        held = self._held.setdefault(run_id, {})
        for key in {m[0] for m in metrics}:
            if verify or key not in held:
                fresh = run_id in self._created and not verify
                held[key] = set() if fresh else {p.step for p in self.client.get_metric_history(run_id, key)}
        out, batch = [], set()
        for m in metrics:
            point = (m[0], int(m[3]))
            if point[1] in held[m[0]] or point in batch:
                self.stats["skipped_duplicates"] += 1
                continue
            batch.add(point)
            out.append(m)
        return out

    def _value(self, v: Any) -> str:
        """A tag value; ``{"run_of": trial_id}`` is the MLflow run id of that trial (resolved at delivery)."""
        if isinstance(v, dict) and "run_of" in v:
            return self.run_id(v["run_of"]) or ""
        return str(v)[:5000]

    def _deliver_child(self, item: dict[str, Any]) -> None:
        from mlflow.entities import Param

        trial_id = item["target"]
        run = self.find_run(trial_id)
        if run is not None:  # retried, resumed, or created before a lost ack: reuse it
            self._runs[trial_id] = run.info.run_id
            self.client.update_run(run.info.run_id, status="RUNNING")
            return
        # mlflow.parentRunId is {"run_of": "parent"}: the parent's id, known by now
        tags = {k: self._value(v) for k, v in item["tags"].items()}
        run = self.client.create_run(self.experiment_id, run_name=item["run_name"], tags=tags)
        self._runs[trial_id] = run.info.run_id
        self._created.add(run.info.run_id)  # MLflow holds only what this journal delivers to it
        params = [Param(k, str(v)[:6000]) for k, v in item["params"].items()]
        self.client.log_batch(run.info.run_id, params=params)

    def _deliver_parent(self, item: dict[str, Any]) -> None:
        """Create the sweep's parent run from its journal entry, unless it exists already (found by its key)."""
        from mlflow.entities import Param

        from ranksearch.tracking.mlflow_log import experiment_id

        self._parent_spec = item
        self._runs.pop(PARENT, None)
        found = self._find_parent()
        if found is not None:  # created before a lost ack, or by an earlier driver of this folder
            self._runs[PARENT] = found
            return
        exp = experiment_id(self.client, item["experiment"], item.get("artifact_location"))
        tags = {**item["tags"], PARENT_KEY_TAG: item["key"]}
        run = self.client.create_run(exp, run_name=item["run_name"], tags=tags)
        self._experiment_id = exp
        self._runs[PARENT] = run.info.run_id
        self._created.add(run.info.run_id)
        params = [Param(k, str(v)[:6000]) for k, v in item["params"].items()]
        self.client.log_batch(run.info.run_id, params=params)
        log.info("MLflow: created the sweep's parent run %s (it was buffered)", run.info.run_id)

    def _deliver_orphans(self, known: set[str]) -> None:
        """Mark child runs of trials the restored Tune experiment does not know (see MlflowSweepCallback).

        Nothing a trial logged is deleted: a run with metrics is kept, ended KILLED and tagged
        ``ranksearch.orphaned`` (its point may be trained again under a new trial id). Only a run that holds no
        metric at all (created just before the driver died) is removed.
        """
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=50_000,
        )
        orphans = [
            r for r in runs
            if r.data.tags.get(TRIAL_TAG) and r.data.tags[TRIAL_TAG] not in known
            and r.data.tags.get("ranksearch.orphaned") != "true"
        ]  # fmt: skip
        kept = 0
        for run in orphans:
            self.client.set_tag(run.info.run_id, "ranksearch.orphaned", "true")
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
            if run.data.metrics:
                kept += 1
            else:
                self.client.delete_run(run.info.run_id)
            self._runs.pop(run.data.tags[TRIAL_TAG], None)
        if orphans:
            log.info(
                "%d MLflow runs belong to trials the restored Tune state does not know: %d with metrics kept "
                "(tag ranksearch.orphaned), %d empty ones removed", len(orphans), kept, len(orphans) - kept,
            )  # fmt: skip


def _well_formed(item: dict[str, Any]) -> bool:
    """An ``{"ack": seq}`` line or an entry with its seq, op, target (and a metrics list for metrics)."""
    if "ack" in item:
        return isinstance(item["ack"], int)
    if not (isinstance(item.get("seq"), int) and isinstance(item.get("op"), str)):
        return False
    if not isinstance(item.get("target"), str):
        return False
    metrics = item.get("metrics", [])
    return item["op"] != "metrics" or (
        isinstance(metrics, list) and all(isinstance(m, list) and len(m) == 4 for m in metrics)
    )


def _batches(pending: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``pending`` (in order) cut into delivery groups: each non-metrics entry alone; a run of consecutive metric
    writes grouped by target (order between runs does not matter for metrics; within one run it is kept), each
    group up to ``BATCH_POINTS`` points."""
    groups: list[list[dict[str, Any]]] = []
    window: dict[str, list[list[dict[str, Any]]]] = {}

    def close_window() -> None:
        for chunks in window.values():
            groups.extend(chunks)
        window.clear()

    for item in pending:
        if item["op"] != "metrics":
            close_window()
            groups.append([item])
            continue
        chunks = window.setdefault(item["target"], [[]])
        if chunks[-1] and sum(len(g["metrics"]) for g in chunks[-1]) + len(item["metrics"]) > BATCH_POINTS:
            chunks.append([])
        chunks[-1].append(item)
    close_window()
    return groups


def unreachable(uri: str, error: BaseException) -> bool:
    """True when ``error`` says an HTTP tracking server did not answer (connection refused or reset, a timeout,
    a proxy's 502/503/504): worth waiting for. A bad URI, a refusal or a local store's failure is not."""
    if not str(uri).lower().startswith(("http://", "https://")):
        return False
    status = getattr(error, "get_http_status_code", lambda: None)()
    if status in (502, 503, 504):
        return True
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {
            c.__name__ for c in type(e).__mro__
        }  # requests' and urllib3's classes, without importing them
        if isinstance(e, ConnectionError | TimeoutError) or names & {"ConnectionError", "Timeout"}:
            return True
        e = e.__cause__ or e.__context__
    text = str(error)
    return "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text


def _permanent(error: Exception) -> bool:
    """True when MLflow answered with a definite refusal (a retry would be refused again)."""
    code = getattr(error, "error_code", None)
    return isinstance(code, str) and code in PERMANENT


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow's REST client retries a refused connection for minutes by default; the journal retries itself.

    The settings are read at call time, so they are changed only around delivery, and a user's own values win.
    """
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    saved = {k: os.environ.get(k) for k in wanted}
    for k, v in wanted.items():
        if saved[k] is None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
