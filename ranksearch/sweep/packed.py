"""Packed trials in a sweep: Tune, Optuna and MLflow see K ordinary trials; one process trains them together.

With ``resources: {pack: K}`` every Tune trial is still an ordinary trial: its own Optuna suggestion, its reports
and checkpoints, its own ASHA decision and its own MLflow child run. Only its trainable does not train. It
*relays*: it joins a **pack host** (a Ray actor that holds the pack's real resources, ``resources.cpu`` and
``resources.gpu``, and trains up to K members on one shared frozen model with ``ranksearch.training.packed``)
and hands every evaluation the host sends back to ``tune.report``. When ASHA stops the trial, ``tune.report``
ends the relay and the relay tells the host to drop that member; Tune's next trial takes the free slot, at its
own step 0, while the others go on.

Pieces:

* ``PackBroker``: one per sweep run (a named actor the driver starts, ``start_broker``). It assigns a joining
  member to a host with the same ``pack_key`` and a free slot, or starts a new host; hosts left empty are ended
  when their resources are needed for another kind.
* ``PackHost``: the process that trains. Members whose configuration cannot be packed (DRA-style, continual,
  ``model.compile``) get a host of their own and run the ordinary ``run_trial`` there. The ``synthetic`` runner
  (sweep-mechanics tests) runs each member in its own thread of a shared host.
* ``relay``: the runner the trainable calls instead of ``run_trial`` (same signature, same ``TrialResult``).

A member's files are written in the host's own temporary folder and travel back with its result, so host and
trial may sit on different nodes. Tune trials reserve no CPU (``TRIAL_RESOURCES``): the hosts hold it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACK_RECORD = "pack.json"  # in every member's trial folder: which host trained it, with how many others
# What each Tune trial of a packed sweep reserves: nothing that counts (Ray needs some resource in a request).
TRIAL_RESOURCES = {"cpu": 0, "memory": 1}
# A member whose relay has not asked for events for this long is taken to be gone (a relay blocks only while
# Tune stores its checkpoint); a relay whose actor died is noticed sooner (``PackHost._watch``).
LOST_AFTER_S = 300.0
POLL_S = 1.0  # how long one event request waits: also how soon a stopped trial leaves
# how long a join waits for a leaving member's slot before it starts a host beyond ceil(concurrency / pack)
FULL_WAIT_S = 30.0
WATCH_S = 2.0  # how often a host checks that its members' trial actors are alive


@dataclass
class Event:
    """What a host sends a relay: an evaluation (with the resumable state), the result, or an error."""

    kind: str  # "eval" | "done" | "error"
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict | None = None
    status: str = ""
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    exception: BaseException | None = None


def member_key(config: Any, runner: str) -> tuple:
    """Which host a member may join: the ``pack_key`` of a real trial; a unique key when it cannot be packed."""
    if runner != "trial":
        return (runner,)
    from ranksearch.training.packed import pack_key

    key = pack_key(config)
    return key if key is not None else ("solo", uuid.uuid4().hex)


# --- the relay: what the Tune trainable runs ----------------------------------------------------------------------
def relay(broker_name: str, runner: str):
    """A runner with ``run_trial``'s signature that has a pack host train the configuration."""

    def run(
        config: Any,
        *,
        output_dir: Path,
        tracker: Any = None,
        on_eval: Any = None,
        resume: dict | None = None,
        progress: bool = False,
        **_: Any,
    ) -> Any:
        import ray

        from ranksearch.trial import EvalEvent, TrialResult

        broker = ray.get_actor(broker_name)
        data = config.model_dump(mode="json")
        host, mid = ray.get(broker.join.remote(member_key(config, runner), data, resume, _own_actor()))
        finished = False
        try:
            while True:
                event: Event | None = ray.get(host.next_event.remote(mid, POLL_S))
                if event is None:
                    if _stop_requested():  # ASHA stopped this trial: leave now (Tune waits ~2 s to reuse us)
                        sys.exit(0)  # what Tune's own report does on a stop: a graceful end of the thread
                    continue
                if event.kind == "eval" and on_eval is not None:
                    on_eval(EvalEvent(event.step, event.total_steps, event.metrics, lambda s=event.state: s))
                elif event.kind == "error":
                    finished = True
                    raise event.exception or RuntimeError(event.error)
                elif event.kind == "done":
                    finished = True
                    out = Path(output_dir)
                    for rel, blob in event.files.items():
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        (out / rel).write_bytes(blob)
                    return TrialResult(event.status, event.metrics, event.history, out, event.error)
        finally:
            if not finished:  # stopped by the scheduler (tune.report ended us) or interrupted: free the slot
                with contextlib.suppress(Exception):  # before Tune starts the next trial (it joins at once)
                    ray.get(host.leave.remote(mid), timeout=10)

    return run


def _own_actor() -> Any:
    """The Ray actor this trial runs in (the host watches it: a killed trial frees its slot), or None."""
    import ray

    try:
        return ray.get_runtime_context().current_actor
    except Exception:  # not inside an actor (a trainable run in the driver, as in unit tests)
        return None


def _stop_requested() -> bool:
    """Whether Tune has asked this trial to stop (its session's stop event; False where Ray has none)."""
    try:
        from ray.train._internal.session import get_session

        session = get_session()
    except Exception:  # pragma: no cover - a Ray without the private session module: rely on the host's watch
        return False
    event = getattr(session, "stop_event", None)
    return bool(event is not None and event.is_set())


# --- the broker ----------------------------------------------------------------------------------------------------
@dataclass
class _Host:
    key: tuple
    handle: Any
    ready: Any  # ObjectRef of a first call: done once the actor has its resources and runs
    pending: int = 0  # joins sent to it and not answered yet


class PackBroker:
    """Assigns members to hosts (Ray actor, no resources). See the module docstring."""

    def __init__(
        self, runner: str, runner_options: dict, capacity: int, group: int | None, cpu: float, gpu: float,
        concurrency: int | None = None,
    ):  # fmt: skip
        self.runner, self.options, self.capacity, self.group = runner, runner_options, capacity, group
        self.cpu, self.gpu, self.concurrency = cpu, gpu, concurrency
        self.hosts: list[_Host] = []
        self.started = 0
        self.lock = threading.Lock()

    def join(self, key: tuple, config: dict, resume: dict | None, owner: Any = None) -> tuple[Any, int]:
        """(host, member id) for a new member; starts a host when none of this kind has a free slot."""
        import ray

        key = tuple(key)
        capacity = 1 if key[0] == "solo" else self.capacity
        # Tune runs at most `concurrency` trials, so ceil(concurrency / capacity) hosts of a kind hold them all:
        # a join that finds those full arrived before a stopped member's leave (Tune starts the next trial as
        # the stopped one ends) and waits for its slot rather than starting a host (and taking resources) more
        enough = -(-self.concurrency // capacity) if self.concurrency else None
        deadline = time.monotonic() + FULL_WAIT_S
        while True:
            with self.lock:
                loads = [(load, h) for h, load in self._loads() if h.key == key]
                room = [(load, h) for load, h in loads if load < capacity]
                if room or enough is None or len(loads) < enough or time.monotonic() > deadline:
                    host = min(room, key=lambda t: t[0])[1] if room else self._start_host(key, capacity)
                    host.pending += 1
                    ref = host.handle.add.remote(config, resume, owner)
                    break
            time.sleep(0.2)
        try:
            # a new host may wait for CPUs/GPUs that empty hosts of other kinds still hold: end those meanwhile
            while not ray.wait([ref], timeout=2.0)[0]:
                with self.lock:
                    self._end_idle(keep=key)
            return host.handle, ray.get(ref)
        finally:
            with self.lock:
                host.pending -= 1

    def _loads(self) -> list[tuple[_Host, int]]:
        """(host, members + joins in flight); a host that has not started yet counts its joins in flight.

        A host that died (its node was lost, it ran out of memory) is forgotten: its members' relays see the
        error, Tune retries those trials from their checkpoints, and they join a new host.
        """
        import ray

        out = []
        for h in list(self.hosts):
            if not ray.wait([h.ready], timeout=0)[0]:
                out.append((h, h.pending))
                continue
            try:
                out.append((h, ray.get(h.handle.load.remote()) + h.pending))
            except ray.exceptions.RayError:
                self.hosts.remove(h)
        return out

    def _end_idle(self, keep: tuple) -> None:
        import ray

        for host, load in self._loads():
            if load == 0 and host.key != keep and ray.wait([host.ready], timeout=0)[0]:
                ray.kill(host.handle)
                self.hosts.remove(host)

    def _start_host(self, key: tuple, capacity: int) -> _Host:
        import ray

        actor = ray.remote(PackHost).options(
            num_cpus=self.cpu, num_gpus=self.gpu, max_concurrency=2 * capacity + 8
        )
        handle = actor.remote(self.runner, self.options, capacity, self.group)
        host = _Host(key, handle, handle.load.remote())
        self.hosts.append(host)
        self.started += 1
        return host

    def hosts_started(self) -> int:
        """How many hosts this broker has started so far (tests and the benchmark read it)."""
        return self.started


def start_broker(space: Any, runner: str, runner_options: dict | None) -> tuple[str, Any]:
    """Start the broker of one sweep run; returns its actor name (for the trainables) and its handle."""
    import ray

    res = space.spec.resources
    name = f"ranksearch-packs-{uuid.uuid4().hex[:12]}"
    broker = (
        ray.remote(PackBroker)
        .options(name=name, num_cpus=0, max_concurrency=64)
        .remote(
            runner, runner_options or {}, res.pack, res.pack_group, res.cpu, res.gpu, space.spec.concurrency
        )
    )
    ray.get(broker.hosts_started.remote())  # fail here, not in the first trial, if the actor cannot start
    return name, broker


def stop_broker(broker: Any) -> None:
    """End the broker; its hosts (actors it owns) end with it."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(broker)


class _MemberLeft(Exception):
    """Ends a member that runs alone once its Tune trial has stopped."""


# --- the host ------------------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    config: dict
    resume: dict | None
    owner: Any = None  # the member's trial actor (watched: a killed trial frees its slot)
    events: queue.Queue = field(default_factory=queue.Queue)
    folder: Path | None = None
    member: Any = None  # ranksearch.training.packed.Member (runner "trial")
    left: bool = False
    polled: float = field(default_factory=time.monotonic)
    probe: Any = None  # a pending call on ``owner``: it fails once the actor is dead


class PackHost:
    """Trains the members of one pack (Ray actor holding the pack's CPUs/GPUs; threaded: calls come in while the
    training thread runs)."""

    def __init__(self, runner: str, runner_options: dict, capacity: int, group: int | None):
        self.runner, self.options, self.capacity, self.group = runner, runner_options, capacity, group
        self.id = uuid.uuid4().hex[:12]
        self.slots: dict[int, _Slot] = {}
        self.joining: list[int] = []
        self.next_id = 0
        self.lock = threading.Condition()
        self.root = Path(tempfile.mkdtemp(prefix="rs-pack-"))
        self.pack: Any = None
        self.watched, self.watch_lock = time.monotonic(), threading.Lock()
        if runner == "trial":
            threading.Thread(target=self._train, name="pack", daemon=True).start()

    # calls from the broker and the relays
    def add(self, config: dict, resume: dict | None, owner: Any = None) -> int:
        with self.lock:
            mid = self.next_id
            self.next_id += 1
            slot = self.slots[mid] = _Slot(config, resume, owner)
            slot.folder = self.root / str(mid)
            slot.folder.mkdir(parents=True)
            record = {"host": self.id, "pid": os.getpid(), "member": mid, "joined_with": len(self.slots) - 1}
            (slot.folder / PACK_RECORD).write_text(json.dumps(record))
            if self.runner == "trial":
                self.joining.append(mid)
                self.lock.notify_all()
            else:
                threading.Thread(target=self._run_alone, args=(mid,), daemon=True).start()
        return mid

    def load(self) -> int:
        self._watch()
        with self.lock:
            return sum(1 for s in self.slots.values() if not s.left)

    def next_event(self, mid: int, timeout: float) -> Event | None:
        slot = self.slots.get(mid)
        if slot is None:
            return Event("error", error=f"member {mid} is not in this pack")
        slot.polled = time.monotonic()
        try:
            event = slot.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event.kind in ("done", "error"):
            self._forget(mid)
        return event

    def leave(self, mid: int) -> None:
        with self.lock:
            if mid in self.slots:
                self.slots[mid].left = True
                self.lock.notify_all()

    def _watch(self) -> None:
        """Mark members gone whose trial actor died (Tune killed it) or whose relay stopped asking for events."""
        import ray

        now = time.monotonic()
        with self.watch_lock:
            if now - self.watched < WATCH_S:
                return
            self.watched = now
        for _, slot in self._snapshot():
            if slot.left:
                continue
            if now - slot.polled > LOST_AFTER_S:
                slot.left = True
            elif slot.owner is not None:
                if slot.probe is None:  # answered only when the actor is idle; an error as soon as it is dead
                    slot.probe = slot.owner.__ray_ready__.remote()
                elif ray.wait([slot.probe], timeout=0)[0]:
                    try:
                        ray.get(slot.probe)
                        slot.probe = None
                    except ray.exceptions.RayError:
                        slot.left = True

    # the work
    def _forget(self, mid: int) -> None:
        with self.lock:
            slot = self.slots.pop(mid, None)
        if slot is not None and slot.folder is not None:
            shutil.rmtree(slot.folder, ignore_errors=True)

    def _put(self, mid: int, event: Event) -> None:
        with self.lock:
            slot = self.slots.get(mid)
        if slot is None:
            return
        if slot.left:  # nobody listens any more (a synthetic member that ran on after its trial stopped)
            if event.kind in ("done", "error"):
                self._forget(mid)
            return
        slot.events.put(event)

    def _send_result(self, mid: int, result: Any) -> None:
        with self.lock:
            slot = self.slots.get(mid)
        if slot is None:
            return
        folder = Path(result.output_dir or slot.folder)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self._put(
            mid,
            Event("done", status=result.status, metrics=dict(result.metrics), history=list(result.history),
                  error=result.error, files=files)
        )  # fmt: skip

    def _send_error(self, mid: int, e: BaseException) -> None:
        # Built-in exceptions always cross to the relay intact; any other class may not unpickle there (custom
        # __init__ signatures), so its type and message travel as text and the trial fails with them.
        exc: BaseException | None = e if type(e).__module__ == "builtins" else None
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        self._put(mid, Event("error", error=detail, exception=exc))

    def _on_eval(self, mid: int, stop_when_left: bool = False):
        """The member's ``on_eval``: its evaluations go to its relay. A member running alone (``stop_when_left``)
        is ended here once its trial stopped; a pack member is dropped between steps instead."""

        def on_eval(event: Any) -> None:
            with self.lock:
                slot = self.slots.get(mid)
            if stop_when_left and (slot is None or slot.left):
                raise _MemberLeft
            self._put(mid, Event("eval", event.step, event.total_steps, dict(event.metrics), event.state()))

        return on_eval

    def _run_alone(self, mid: int) -> None:
        """A member that shares nothing: the ordinary runner in a thread of its own."""
        from ranksearch.config.schema import TrialConfig
        from ranksearch.sweep.runners import RUNNERS

        with self.lock:
            slot = self.slots[mid]
        try:
            config = TrialConfig.model_validate(slot.config)
            result = RUNNERS[self.runner](
                config, output_dir=slot.folder, tracker=None, on_eval=self._on_eval(mid, stop_when_left=True),
                resume=slot.resume, progress=False, **self.options,
            )  # fmt: skip
            self._send_result(mid, result)
        except _MemberLeft:
            self._forget(mid)
        except BaseException as e:
            self._send_error(mid, e)

    def _train(self) -> None:
        """The training thread (runner "trial"): admit joiners, drop leavers, step the pack.

        Nothing may end this thread but the actor: an unexpected error fails the members it concerns.
        """
        while True:
            try:
                self._train_once()
            except BaseException as e:  # a bug, not a member's problem: fail everyone rather than hang them
                log.exception("pack host: unexpected error; failing its members")
                for mid, slot in self._snapshot():
                    if slot.member is not None and self.pack is not None:
                        self.pack.remove(slot.member)
                        slot.member = None
                    self._send_error(mid, e)

    def _snapshot(self) -> list[tuple[int, _Slot]]:
        with self.lock:  # relays add slots from other threads
            return list(self.slots.items())

    def _train_once(self) -> None:
        from ranksearch.config.schema import TrialConfig
        from ranksearch.training.packed import Pack, pack_key
        from ranksearch.trial import run_trial

        with self.lock:
            while not self.joining and not self._active_slots(locked=True):
                self.lock.wait(timeout=1.0)
            joining, self.joining = self.joining, []
        for mid in joining:
            with self.lock:
                slot = self.slots.get(mid)
            if slot is None or slot.left:
                self._forget(mid)
                continue
            try:
                config = TrialConfig.model_validate(slot.config)
                if pack_key(config) is None:  # a solo host: the ordinary trial, in this thread
                    try:
                        result = run_trial(
                            config, output_dir=slot.folder, on_eval=self._on_eval(mid, stop_when_left=True),
                            resume=slot.resume, progress=False,
                        )  # fmt: skip
                    except _MemberLeft:
                        self._forget(mid)
                        continue
                    self._send_result(mid, result)
                    continue
                if self.pack is None:
                    self.pack = Pack(config, group=self.group)
                slot.member = self.pack.add(
                    config, slot.folder, on_eval=self._on_eval(mid), resume=slot.resume
                )
                if slot.member.result is not None:  # failed while setting up (e.g. over a budget)
                    self._end(mid, slot)
            except BaseException as e:
                slot.member = None
                self._send_error(mid, e)
        self._drop_leavers()
        if not self._active_slots():
            return
        try:
            ended = self.pack.step()
        except BaseException as e:  # the shared step itself broke: every member gets the error
            for mid, slot in self._snapshot():
                if slot.member is not None:
                    self.pack.remove(slot.member)
                    slot.member = None
                    self._send_error(mid, e)
            return
        owners = {id(slot.member): (mid, slot) for mid, slot in self._snapshot() if slot.member is not None}
        for member in ended:
            self._end(*owners[id(member)])

    def _end(self, mid: int, slot: _Slot) -> None:
        self.pack.members.pop(slot.member.id, None)
        result, slot.member = slot.member.result, None
        self._send_result(mid, result)

    def _active_slots(self, locked: bool = False) -> list[int]:
        items = list(self.slots.items()) if locked else self._snapshot()
        return [mid for mid, s in items if s.member is not None and s.member.active]

    def _drop_leavers(self) -> None:
        self._watch()
        lost = [(mid, s) for mid, s in self._snapshot() if s.left]
        for mid, slot in lost:
            if slot.member is not None:
                self.pack.remove(slot.member)
                slot.member = None
            self._forget(mid)
