"""Batch acquisition on any ``concurrent.futures.Executor``: limits, worker events, the batch record.

The examiner's process (the driver) admits members to the executor only while the limits allow
(overall, per hypervisor host, per datastore: :func:`limit_keys` decides the keys, :class:`Admission`
takes the slots), so no worker thread ever sits holding a task while it waits for a host to free up,
and the same logic holds on a local thread pool and on Dask (``Client.get_executor()``). Host and
datastore slots are shared by every batch at once: process-wide (:class:`ProcessSlots`), or on a
Dask cluster as named semaphores (:class:`DaskSlots`). Each member runs :func:`run_member` on a
worker: the acquirer is built there from its picklable plan, secrets are resolved there, and events
(started on which worker, progress) come back through Dask's structured events (``log_event`` /
``subscribe_topic``, on the Client :class:`DaskConnection` finds with public API) or, in-process,
directly. The driver writes the batch ledger and, at the end, the signed batch record
(:mod:`vmforensics.custody.batch_record`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from vmforensics.acquire.base import Acquirer, AcquisitionResult
from vmforensics.acquire.batch_plan import AcquisitionPlan, KeyRef, SignerRef, TokenKeyRef
from vmforensics.acquire.batch_progress import BatchCallback, BatchView
from vmforensics.custody.batch_record import (
    BATCH_LEDGER,
    RECORD_NAME,
    RESERVED_NAMES,
    SCHEMA,
    read_record,
    retire_record,
    sha256_file,
    write_record,
)
from vmforensics.custody.ledger import Ledger
from vmforensics.custody.models import CaseInfo, ExaminerHost, new_acquisition_id, to_plain, utc_now
from vmforensics.custody.seal import MANIFEST_NAME
from vmforensics.custody.signing import Signer, SigningKey
from vmforensics.errors import UsageError
from vmforensics.progress import ProgressUpdate

log = logging.getLogger(__name__)

EVENT_TOPIC = "vmforensics-batch"
PROGRESS_INTERVAL = 0.25  # seconds between progress events a worker sends per member
ADMISSION_POLL = 0.25  # seconds between looks at slots that other batches hold


@attrs.frozen
class Limits:
    """At most ``total`` acquisitions at once, ``per_host`` on one hypervisor host, ``per_datastore``
    on one datastore (None: no limit of that kind)."""

    total: int | None = None
    per_host: int | None = None
    per_datastore: int | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("total", "per_host", "per_datastore"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"limit {name} must be a whole number of at least 1, not {value!r}")

    def of(self, key: str) -> int | None:
        kind = key.partition(":")[0]
        return {"total": self.total, "host": self.per_host, "datastore": self.per_datastore}[kind]


def limit_keys(plan: AcquisitionPlan) -> tuple[str, ...]:
    """The slots a member holds while it runs: overall, its host, each datastore it reads."""
    return ("total", f"host:{plan.limit_host}", *sorted({f"datastore:{d}" for d in plan.datastores}))


class Admission:
    """Whether a member may start: this batch's overall count, kept here, and its host's and
    datastores' slots in ``shared``, which every batch sees (:class:`ProcessSlots`, :class:`DaskSlots`)."""

    def __init__(self, limits: Limits, shared: ProcessSlots | DaskSlots):
        self.limits = limits
        self.shared = shared
        self.running = 0

    def slots(self, keys: Sequence[str]) -> dict[str, int]:
        """Slot name -> its limit. The name holds the limit: batches giving the same number for a
        host share one count; a batch giving another number counts on its own."""
        return {
            f"vmforensics/{key}/{limit}": limit
            for key in keys
            if key != "total" and (limit := self.limits.of(key)) is not None
        }

    def take(self, keys: Sequence[str], busy: set[str]) -> bool:
        """Take every slot of ``keys`` or none; a slot found full is added to ``busy`` (and slots
        already in ``busy`` are not asked again in this pass)."""
        if self.limits.total is not None and self.running >= self.limits.total:
            return False
        slots = self.slots(keys)
        if busy & set(slots):
            return False
        full = self.shared.take(slots)
        if full is not None:
            busy.add(full)
            return False
        self.running += 1
        return True

    def release(self, keys: Sequence[str]) -> None:
        self.running -= 1
        self.shared.release(self.slots(keys))


class ProcessSlots:
    """Slots shared by every batch running in this process (thread pools, other executors)."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _held: ClassVar[dict[str, int]] = {}

    def take(self, slots: dict[str, int]) -> str | None:
        """Take all of ``slots``, or return the name of one that is full (taking none)."""
        with self._lock:
            for name, limit in slots.items():
                if self._held.get(name, 0) >= limit:
                    return name
            for name in slots:
                self._held[name] = self._held.get(name, 0) + 1
        return None

    def release(self, slots: dict[str, int]) -> None:
        with self._lock:
            for name in slots:
                self._held[name] -= 1
                if not self._held[name]:
                    del self._held[name]


class DaskSlots:
    """Slots shared by every batch on one Dask cluster: a named ``distributed.Semaphore`` per slot,
    leased by the examiner's process (a lease of a process that dies expires with Dask's lease
    timeout, ``distributed.scheduler.locks.lease-timeout``)."""

    def __init__(self, client: Any):
        self.client = client
        self.semaphores: dict[str, Any] = {}

    def _semaphore(self, name: str, limit: int) -> Any:
        if name not in self.semaphores:
            from distributed import Semaphore

            self.semaphores[name] = Semaphore(
                max_leases=limit, name=name, scheduler_rpc=self.client.scheduler, loop=self.client.loop
            )
        return self.semaphores[name]

    def take(self, slots: dict[str, int]) -> str | None:
        taken = []
        for name, limit in slots.items():
            semaphore = self._semaphore(name, limit)
            if not semaphore.acquire(timeout=0):
                for held in taken:
                    held.release()
                return name
            taken.append(semaphore)
        return None

    def release(self, slots: dict[str, int]) -> None:
        for name in slots:
            self.semaphores[name].release()


# --- worker side -------------------------------------------------------------------------------


@attrs.frozen
class EventChannel:
    """How a worker reports: Dask structured events under ``topic``, or an in-process callable."""

    topic: str
    local: Callable[[dict[str, Any]], None] | None = attrs.field(default=None, eq=False)

    def send(self, message: dict[str, Any]) -> None:
        if self.local is not None:
            self.local(message)
            return
        worker = _dask_worker()
        if worker is not None:
            worker.log_event(self.topic, message)


def _dask_worker() -> Any:
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def scheduler_address() -> str | None:
    """Run on a worker: the address of the Dask scheduler it serves (None when not on Dask)."""
    worker = _dask_worker()
    return worker.scheduler.address if worker is not None else None


@attrs.frozen
class MemberTask:
    """Everything a worker needs for one member; picklable, and holding no secret."""

    batch_id: str
    index: int
    plan: AcquisitionPlan
    directory: str
    case: CaseInfo
    signer: SignerRef | None
    options: dict[str, Any]
    resume: bool
    events: EventChannel
    in_process: Any = attrs.field(default=None, eq=False)  # (factory, record, key object): thread pools only


@attrs.frozen
class MemberOutcome:
    """What a worker reports back for one member."""

    index: int
    outcome: str  # sealed, failed
    reason: str | None
    manifest_sha256: str | None
    worker: dict[str, Any]
    started: str
    finished: str
    result: AcquisitionResult | None = None


def _identity() -> dict[str, Any]:
    worker = _dask_worker()
    name = worker.address if worker is not None else threading.current_thread().name
    return {"worker": name, "host": socket.gethostname(), "pid": os.getpid()}


def run_member(task: MemberTask) -> MemberOutcome:
    """Acquire one member on this worker; failures become the outcome, never an exception."""
    who = _identity()
    started = utc_now()
    task.events.send({"event": "started", "index": task.index, "time": started, **who})
    path = Path(task.directory)
    reporter = _Reporter(task.events, task.index)
    if (path / MANIFEST_NAME).is_file():
        # Sealed by an earlier attempt of this member: a resumed batch on a worker's own disk, or
        # Dask recomputing a finished task whose result was lost with its worker (a fresh batch
        # starts in an empty directory, so nothing else can have sealed it). Never acquired twice.
        return MemberOutcome(
            task.index, "sealed", None, sha256_file(path / MANIFEST_NAME), who, started, utc_now()
        )
    try:
        resume = _resume_state(path, task.resume)
        if task.in_process is not None:
            factory, record, key = task.in_process
            acquirer: Acquirer = factory(record) if factory is not None else task.plan.build()
        else:
            acquirer, key = task.plan.build(), None
        signer = task.signer.load() if task.signer is not None else key
        result = acquirer.acquire(
            task.plan.target,
            path,
            case=task.case,
            signer=signer,
            progress=reporter.update,
            resume=resume,
            **task.options,
        )
    except Exception as exc:  # isolated: recorded in the member's own ledger and in the batch record
        log.error("acquiring %s failed: %s", task.plan.name, exc)
        reporter.flush()
        return MemberOutcome(
            task.index, "failed", f"{type(exc).__name__}: {exc}", None, who, started, utc_now()
        )
    reporter.flush()
    digest = sha256_file(path / MANIFEST_NAME)
    return MemberOutcome(task.index, "sealed", None, digest, who, started, utc_now(), result)


def _resume_state(path: Path, resume: bool) -> bool:
    """Whether to resume this member: only a resumed batch continues an interrupted attempt."""
    interrupted = (path / "custody.log.jsonl").is_file() and not (path / MANIFEST_NAME).is_file()
    if interrupted and not resume:
        raise UsageError(
            f"{path} holds an earlier, interrupted attempt (a worker lost mid-acquisition?); "
            "run the batch again with --resume to continue it"
        )
    return interrupted


class _Reporter:
    """Turns an acquisition's progress callbacks into at most a few events a second."""

    def __init__(self, channel: EventChannel, index: int):
        self.channel = channel
        self.index = index
        self.last_sent = 0.0
        self.pending: ProgressUpdate | None = None

    def update(self, progress: ProgressUpdate) -> None:
        self.pending = progress
        now = time.monotonic()
        if now - self.last_sent >= PROGRESS_INTERVAL:
            self.flush()
            self.last_sent = now

    def flush(self) -> None:
        if self.pending is not None:
            p, self.pending = self.pending, None
            self.channel.send(
                {
                    "event": "progress",
                    "index": self.index,
                    "file": p.file,
                    "file_done": p.file_done,
                    "file_total": p.file_total,
                    "done": p.done,
                    "total": p.total,
                }
            )


# --- driver side -------------------------------------------------------------------------------


@attrs.frozen
class BatchItem:
    """One VM of the batch: where its evidence went, its outcome, and its result or the reason."""

    vm: str
    target: str
    path: Path
    result: AcquisitionResult | None = None
    error: str | None = None
    outcome: str = "sealed"
    worker: str | None = None
    manifest_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "sealed"


@attrs.frozen
class BatchResult:
    """What a batch returns: every member's item, the batch directory and its record's SHA-256."""

    items: tuple[BatchItem, ...]
    duration: float
    path: Path | None = None
    record_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    @property
    def failed(self) -> tuple[BatchItem, ...]:
        return tuple(item for item in self.items if not item.ok)

    def __repr__(self) -> str:
        return (
            f"<BatchResult {len(self.items) - len(self.failed)}/{len(self.items)} acquired, "
            f"{len(self.failed)} failed, {self.duration:.1f}s>"
        )

    def _repr_html_(self) -> str:
        from vmforensics.survey.html import sortable_table

        rows = [
            [
                item.vm,
                item.outcome,
                str(item.path),
                item.worker,
                item.result.manifest.total_bytes if item.result else None,
                item.error,
            ]
            for item in self.items
        ]
        return sortable_table(["VM", "outcome", "evidence directory", "worker", "bytes", "reason"], rows)


def member_directories(names: Sequence[str]) -> list[str]:
    """A distinct, safe directory name per member (VM names are untrusted and may repeat)."""
    used = {name.lower() for name in RESERVED_NAMES}
    chosen = []
    for raw in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "vm"
        name, number = base[:100], 1
        while name.lower() in used:
            number += 1
            name = f"{base[:96]}-{number}"
        used.add(name.lower())
        chosen.append(name)
    return chosen


def run_batch(
    plans: Sequence[AcquisitionPlan],
    out_root: str | os.PathLike[str],
    *,
    case: CaseInfo,
    executor: cf.Executor | None = None,
    limits: Limits | None = None,
    signer: Signer | SignerRef | None = None,
    progress: bool | BatchCallback = True,
    resume: bool = False,
    worker_root: str | os.PathLike[str] | None = None,
    acquirer_factory: Callable[[Any], Acquirer] | None = None,
    records: Sequence[Any] | None = None,
    **acquire_options: Any,
) -> BatchResult:
    """Acquire every plan into ``out_root/<name>`` and seal the batch record (see module docs).

    ``executor``: any concurrent.futures executor (default: a local thread pool of ``limits.total``
    threads). ``signer``: a :class:`KeyRef` or :class:`TokenKeyRef` (loaded on each worker, and here
    for batch.json) or, for thread pools only, a key object (SigningKey, PKCS11Key). ``worker_root``: where workers write when it is not ``out_root``
    as they see it. ``resume``: rerun only the members the last record does not list as sealed.
    ``acquirer_factory(records[i])`` replaces plan ``i``'s acquirer (thread pools only).
    """
    if not plans:
        raise UsageError("nothing selected to acquire")
    if not isinstance(case, CaseInfo):
        raise UsageError("case must be a vmforensics.CaseInfo(case_id=..., examiner=...)")
    limits = limits or Limits(total=2)
    own_pool = executor is None
    if own_pool:
        executor = cf.ThreadPoolExecutor(max_workers=limits.total or len(plans), thread_name_prefix="acquire")
    local = isinstance(executor, cf.ThreadPoolExecutor)
    by_reference = isinstance(signer, (KeyRef, TokenKeyRef))
    if not local and ((signer is not None and not by_reference) or acquirer_factory is not None):
        raise UsageError(
            "a key object or an acquirer_factory cannot be sent to other processes: pass "
            "signer=KeyRef(path, passphrase=SecretRef(env=...)) or TokenKeyRef(...) and AcquisitionPlans"
        )
    batch_key = signer.load() if by_reference else signer or SigningKey.generate()
    root = Path(out_root)
    began = time.monotonic()
    batch = _Batch(root, plans, case, limits, resume, batch_key, executor)
    view = BatchView(progress, [p.name for p in plans])
    batch.view = view
    channel = EventChannel(f"{EVENT_TOPIC}-{batch.batch_id}", batch.on_event if local else None)
    cluster = None if local else DaskConnection.of(executor)
    if cluster is not None:
        cluster.subscribe(channel.topic, batch.on_event)
    batch.channel = local or cluster is not None
    place = Path(worker_root) if worker_root is not None else root
    tasks = [
        MemberTask(
            batch_id=batch.batch_id,
            index=index,
            plan=plan,
            directory=str(place / batch.directories[index]),
            case=case,
            signer=signer if by_reference else None,
            options=dict(acquire_options),
            resume=resume,
            events=channel,
            in_process=(
                acquirer_factory,
                records[index] if records is not None else None,
                None if by_reference else signer,
            )
            if local
            else None,
        )
        for index, plan in enumerate(plans)
    ]
    shared = DaskSlots(cluster.client) if cluster is not None else ProcessSlots()
    try:
        batch.schedule(
            executor, Admission(limits, shared), [t for t in tasks if t.index not in batch.carried]
        )
    finally:
        if cluster is not None:
            cluster.close()
        view.close()
        if own_pool:
            executor.shutdown(wait=True, cancel_futures=True)
        digest = batch.seal(type(executor).__name__, str(place))
    return BatchResult(batch.items(), time.monotonic() - began, root, digest)


class DaskConnection:
    """The examiner's Client on the Dask cluster behind an executor, found with public API only: a
    worker names its scheduler (:func:`scheduler_address`); the current Client is used when it is
    connected there (``Client.current()``, ``scheduler_info()``), else a new one, closed again at
    the end. Worker events come through it (``subscribe_topic``), and the shared slots
    (:class:`DaskSlots`)."""

    def __init__(self, client: Any, owned: bool):
        self.client = client
        self.owned = owned
        self.topics: list[str] = []

    @classmethod
    def of(cls, executor: cf.Executor) -> DaskConnection | None:
        """None for an executor that does not run on Dask (its members report when they return)."""
        try:
            address = executor.submit(scheduler_address).result()
        except Exception as exc:  # an executor that cannot run the probe has no event channel either
            log.info("%s: no Dask scheduler behind it (%s)", executor, exc)
            return None
        if address is None:
            log.info("%s does not run on Dask: started events are logged when each member returns", executor)
            return None
        from distributed import Client

        try:
            current = Client.current()
        except ValueError:
            current = None
        if current is not None and current.scheduler_info().get("address") == address:
            return cls(current, owned=False)
        return cls(Client(address, set_as_default=False), owned=True)  # the caller's default stays

    def subscribe(self, topic: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self.client.subscribe_topic(topic, lambda event: handler(event[1]))
        self.topics.append(topic)

    def close(self) -> None:
        for topic in self.topics:
            self.client.unsubscribe_topic(topic)
        if self.owned:
            self.client.close()


class _Batch:
    """The driver's state: admission, the batch ledger, the outcomes, and sealing the record."""

    def __init__(
        self,
        root: Path,
        plans: Sequence[AcquisitionPlan],
        case: CaseInfo,
        limits: Limits,
        resume: bool,
        key: Signer,
        executor: cf.Executor,
    ):
        self.root = root
        self.plans = list(plans)
        self.case = case
        self.limits = limits
        self.key = key
        self.lock = threading.Lock()
        self.view: BatchView | None = None
        self.directories = member_directories([p.name for p in plans])
        self.outcomes: dict[int, MemberOutcome] = {}
        self.started: dict[int, list[dict[str, Any]]] = {}
        self.submitted: set[int] = set()
        self.closed = False  # no more ledger events once the record is being sealed
        self.channel = False  # whether started events arrive while members run
        self.carried: dict[int, dict[str, Any]] = {}
        host = ExaminerHost.current()
        actor = {"examiner": case.examiner, "host": host.hostname, "user": host.user}
        self.previous: dict[str, Any] | None = None
        if resume and (root / BATCH_LEDGER).is_file():
            self._open_resumed(actor)
        else:
            if resume:
                raise UsageError(f"{root} holds no batch to resume (no {BATCH_LEDGER})")
            root.mkdir(parents=True, exist_ok=True)
            if any(root.iterdir()):
                raise UsageError(f"{root} is not empty: a batch starts in a new or empty directory")
            self.ledger = Ledger.create(root / BATCH_LEDGER, actor)
            self.batch_id, self.run = new_acquisition_id(), 1
            self.created = utc_now()
        self.ledger.append(
            "batch-start",
            batch_id=self.batch_id,
            run=self.run,
            members=len(plans),
            limits=attrs.asdict(limits),
            executor=type(executor).__name__,
            case=to_plain(case),
            command_line=list(host.command_line),
            carried_over=[self.plans[i].name for i in sorted(self.carried)],
            resumes_record=self.previous["sha256"] if self.previous else None,
        )

    def _open_resumed(self, actor: dict[str, Any]) -> None:
        """Continue the batch: from its last record, or from its ledger alone when the examiner's
        process died before writing one. Members sealed on disk are carried over, not rerun."""
        self.ledger = Ledger.reopen(self.root / BATCH_LEDGER, actor)
        starts = [e for e in self.ledger.events() if e.action == "batch-start"]
        if not starts:
            raise UsageError(f"{self.root / BATCH_LEDGER} records no batch start; nothing to resume")
        self.batch_id, self.run, self.created = starts[0].details["batch_id"], len(starts) + 1, starts[0].time
        earlier: dict[str, dict[str, Any]] = {}
        if (self.root / RECORD_NAME).is_file():
            previous = read_record(self.root)
            if previous.get("batch_id") != self.batch_id:
                raise UsageError("batch.json and the batch ledger name different batches")
            earlier = {m["directory"]: m for m in previous.get("members", [])}
            self.previous = {"sha256": sha256_file(self.root / RECORD_NAME), "run": previous["run"]}
        for index, directory in enumerate(self.directories):
            if earlier and earlier.get(directory, {}).get("name") != self.plans[index].name:
                raise UsageError("resume with the same plan: the members differ from the batch record's")
            manifest = self.root / directory / MANIFEST_NAME
            if not manifest.is_file():
                continue
            digest = sha256_file(manifest)
            member = earlier.get(directory, {})
            if member.get("manifest_sha256") == digest:
                self.carried[index] = member
            else:  # sealed by a run that did not live to write its record
                self.carried[index] = {
                    "outcome": "sealed",
                    "reason": None,
                    "manifest_sha256": digest,
                    "worker": None,
                    "attempts": 1,
                    "run": self.run - 1,
                }

    # -- events from workers (any thread) --

    def on_event(self, message: dict[str, Any]) -> None:
        index = message.get("index")
        if not isinstance(index, int) or not 0 <= index < len(self.plans):
            return
        name = self.plans[index].name
        if message.get("event") == "started":
            facts = {k: message.get(k) for k in ("worker", "host", "pid", "time")}
            with self.lock:
                if self.closed:
                    return
                self.started.setdefault(index, []).append(facts)
            self.ledger.append("started", member=name, **facts)
            if self.view is not None:
                self.view.started(name, str(facts["worker"]))
        elif message.get("event") == "progress" and self.view is not None:
            self.view.progress(
                name,
                ProgressUpdate(
                    str(message.get("file")),
                    int(message.get("file_done") or 0),
                    message.get("file_total"),
                    int(message["done"]),
                    message.get("total"),
                ),
            )

    # -- scheduling --

    def schedule(self, executor: cf.Executor, admission: Admission, tasks: list[MemberTask]) -> None:
        waiting = list(tasks)
        running: dict[cf.Future[MemberOutcome], MemberTask] = {}
        try:
            while waiting or running:
                busy: set[str] = set()
                for task in list(waiting):
                    keys = limit_keys(task.plan)
                    if admission.take(keys, busy):
                        waiting.remove(task)
                        self.submitted.add(task.index)
                        self.ledger.append(
                            "submitted",
                            member=task.plan.name,
                            directory=self.directories[task.index],
                            slots=list(keys),
                        )
                        running[executor.submit(run_member, task)] = task
                if not running:  # every waiting member's slots are held by other batches
                    time.sleep(ADMISSION_POLL)
                    continue
                # slots other batches hold free up without a future of ours finishing: look again
                done, _ = cf.wait(
                    running, timeout=ADMISSION_POLL if busy else None, return_when=cf.FIRST_COMPLETED
                )
                for future in done:
                    task = running.pop(future)
                    admission.release(limit_keys(task.plan))
                    self._finish(task, future)
        except BaseException:
            for future, task in running.items():
                future.cancel()
                admission.release(limit_keys(task.plan))
            raise

    def _finish(self, task: MemberTask, future: cf.Future[MemberOutcome]) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # the worker was lost, or the executor failed the task
            outcome = MemberOutcome(
                task.index,
                "failed",
                f"{type(exc).__name__}: {exc} (the worker was lost?)",
                None,
                {},
                "",
                utc_now(),
            )
        name = task.plan.name
        if not self.channel and outcome.worker:  # an executor without an event channel
            self.ledger.append(
                "started", member=name, reported="on return", time=outcome.started, **outcome.worker
            )
        self.outcomes[task.index] = outcome
        self.ledger.append(
            "finished",
            member=name,
            outcome=outcome.outcome,
            reason=outcome.reason,
            manifest_sha256=outcome.manifest_sha256,
            worker=outcome.worker.get("worker"),
        )
        if self.view is not None:
            self.view.finished(name, outcome.outcome == "sealed")

    # -- the record --

    def member_entries(self) -> list[dict[str, Any]]:
        entries = []
        for index, plan in enumerate(self.plans):
            entry: dict[str, Any] = {
                "name": plan.name,
                "directory": self.directories[index],
                "plan": plan.to_plain(),
            }
            if index in self.carried:
                carried = self.carried[index]
                entry |= {
                    k: carried[k] for k in ("outcome", "reason", "manifest_sha256", "worker", "attempts")
                }
                entry["run"] = carried.get("run", 1)
            elif index in self.outcomes:
                o = self.outcomes[index]
                entry |= {
                    "outcome": o.outcome,
                    "reason": o.reason,
                    "manifest_sha256": o.manifest_sha256,
                    "worker": o.worker or None,
                    "attempts": len(self.started.get(index, [])) or 1,
                    "run": self.run,
                }
            else:
                ran = index in self.submitted
                entry |= {
                    "outcome": "failed" if ran else "not started",
                    "reason": "the batch was interrupted while it ran (resume the batch to continue it)"
                    if ran
                    else "the batch stopped before it ran",
                    "manifest_sha256": None,
                    "worker": None,
                    "attempts": len(self.started.get(index, [])),
                    "run": self.run,
                }
            entries.append(entry)
        return entries

    def seal(self, executor: str, worker_root: str) -> str:
        with self.lock:
            self.closed = True
        members = self.member_entries()
        self.ledger.append(
            "batch-end",
            run=self.run,
            sealed=sum(m["outcome"] == "sealed" for m in members),
            failed=sum(m["outcome"] == "failed" for m in members),
            not_started=sum(m["outcome"] == "not started" for m in members),
        )
        supersedes = None
        if self.previous is not None:
            moved = retire_record(self.root, self.previous["run"])
            supersedes = {"record": moved[RECORD_NAME], "sha256": self.previous["sha256"]}
        record = {
            "schema": SCHEMA,
            "batch_id": self.batch_id,
            "run": self.run,
            "created": self.created,
            "sealed_at": utc_now(),
            "case": to_plain(self.case),
            "examiner_host": to_plain(ExaminerHost.current()),
            "executor": executor,
            "worker_root": worker_root,
            "limits": attrs.asdict(self.limits),
            "members": members,
            "ledger": {"head": self.ledger.head, "events": self.ledger.count},
            "signer_key_id": self.key.key_id,
            "signature_algorithm": self.key.algorithm,
            "supersedes": supersedes,
        }
        return write_record(self.root, record, self.key)

    def items(self) -> tuple[BatchItem, ...]:
        items = []
        for index, entry in enumerate(self.member_entries()):
            outcome = self.outcomes.get(index)
            worker = entry.get("worker") or {}
            items.append(
                BatchItem(
                    vm=self.plans[index].name,
                    target=self.plans[index].target,
                    path=self.root / entry["directory"],
                    result=outcome.result if outcome else None,
                    error=entry["reason"],
                    outcome=entry["outcome"],
                    worker=worker.get("worker"),
                    manifest_sha256=entry["manifest_sha256"],
                )
            )
        return tuple(items)


def plans_for(selection: Iterable[Any]) -> list[AcquisitionPlan]:
    """Plans from survey records, targets or plans (records and targets become local acquisitions)."""
    from vmforensics.survey.models import VMRecord

    plans = []
    for item in selection:
        if isinstance(item, AcquisitionPlan):
            plans.append(item)
        elif isinstance(item, VMRecord):
            plans.append(AcquisitionPlan(item.name, item.target, host=item.host, datastores=item.datastores))
        else:
            plans.append(AcquisitionPlan(str(item), str(item)))
    return plans
