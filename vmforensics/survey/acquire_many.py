"""Acquire several VMs at once: bounded parallelism, one progress view, one evidence directory each.

Each VM runs the ordinary acquisition template with its own acquirer (connections are not shared
between threads); a failure is recorded in that VM's own ledger and in the batch result, and the
other acquisitions carry on.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.base import Acquirer, AcquisitionResult
from vmforensics.custody.models import CaseInfo
from vmforensics.custody.signing import SigningKey
from vmforensics.errors import UsageError
from vmforensics.progress import ProgressUpdate
from vmforensics.survey.models import VMRecord

log = logging.getLogger(__name__)

AcquirerFactory = Callable[[VMRecord], Acquirer]
BatchCallback = Callable[[str, ProgressUpdate], None]


@attrs.frozen
class BatchItem:
    """One VM of the batch: where its evidence went, and its result or why it failed."""

    vm: str
    target: str
    path: Path
    result: AcquisitionResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@attrs.frozen
class BatchResult:
    items: tuple[BatchItem, ...]
    duration: float

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
                "acquired" if item.ok else "FAILED",
                str(item.path),
                item.result.manifest.total_bytes if item.result else None,
                item.error,
            ]
            for item in self.items
        ]
        return sortable_table(["VM", "outcome", "evidence directory", "bytes", "error"], rows)


class _BatchView:
    """One overall bar (bytes over every VM) with a VM count, fed by each acquisition's callback."""

    def __init__(self, option: bool | BatchCallback, count: int):
        self._lock = threading.Lock()
        self._callback = option if callable(option) else None
        self._per_vm: dict[str, tuple[int, int]] = {}
        self._count = count
        self._finished = 0
        self._failed = 0
        self._bar: Any = None
        if option is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"acquire {count} VMs")

    def for_vm(self, name: str) -> Callable[[ProgressUpdate], None]:
        def update(progress: ProgressUpdate) -> None:
            with self._lock:
                self._per_vm[name] = (progress.done, progress.total or 0)
                if self._bar is not None:
                    done = sum(d for d, _ in self._per_vm.values())
                    self._bar.total = sum(t for _, t in self._per_vm.values()) or None
                    self._bar.update(done - self._bar.n)
            if self._callback is not None:
                self._callback(name, progress)

        return update

    def finished(self, ok: bool) -> None:
        with self._lock:
            self._finished += 1
            self._failed += 0 if ok else 1
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self._finished}/{self._count} VMs, {self._failed} failed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def acquire_many(
    selection: Iterable[VMRecord | str],
    out_root: str | os.PathLike[str],
    *,
    case: CaseInfo,
    acquirer_factory: AcquirerFactory | None = None,
    max_parallel: int = 2,
    signer: SigningKey | None = None,
    progress: bool | BatchCallback = True,
    **acquire_options: Any,
) -> BatchResult:
    """Acquire every VM in ``selection`` (survey records or targets) into ``out_root/<VM name>``.

    ``acquirer_factory(record)`` makes a fresh acquirer for each VM (default: LocalAcquirer, for
    records from a local survey); at most ``max_parallel`` run at once. Other keyword arguments go
    to :meth:`Acquirer.acquire` (preserve, memory, hashes...). Failures do not stop the batch.
    """
    if max_parallel < 1:
        raise UsageError("max_parallel must be at least 1")
    records = [
        vm if isinstance(vm, VMRecord) else VMRecord(name=str(vm), reference=str(vm)) for vm in selection
    ]
    if not records:
        raise UsageError("nothing selected to acquire")
    factory = acquirer_factory or _local_acquirer
    root = Path(out_root)
    directories = _directories(records, root)
    view = _BatchView(progress, len(records))
    began = time.monotonic()

    def run(record: VMRecord, path: Path) -> BatchItem:
        try:
            result = factory(record).acquire(
                record.target,
                path,
                case=case,
                signer=signer,
                progress=view.for_vm(record.name) if progress else False,
                **acquire_options,
            )
        except Exception as exc:  # isolated: recorded here and in the VM's own ledger
            log.error("acquiring %s failed: %s", record.name, exc)
            view.finished(False)
            return BatchItem(record.name, record.target, path, error=f"{type(exc).__name__}: {exc}")
        view.finished(True)
        return BatchItem(record.name, record.target, path, result=result)

    executor = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="acquire")
    try:
        futures = [
            executor.submit(run, record, path) for record, path in zip(records, directories, strict=True)
        ]
        items = tuple(future.result() for future in futures)
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        view.close()
    executor.shutdown(wait=True)
    return BatchResult(items, time.monotonic() - began)


def _local_acquirer(record: VMRecord) -> Acquirer:
    from vmforensics.hypervisors import get, load

    return load(get("local").acquirer)()


def _directories(records: list[VMRecord], root: Path) -> list[Path]:
    """A distinct, safe directory name per VM (VM names are untrusted and may repeat)."""
    used: set[str] = set()
    paths = []
    for record in records:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", record.name).strip("._") or "vm"
        name, number = base[:100], 1
        while name.lower() in used:
            number += 1
            name = f"{base[:96]}-{number}"
        used.add(name.lower())
        paths.append(root / name)
    return paths
