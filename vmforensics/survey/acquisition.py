"""Acquire several VMs at once (survey records, targets or plans): the public entry over
:mod:`vmforensics.acquire.batch`, on a local thread pool or any executor (Dask for several machines).

Each VM runs the ordinary acquisition template with its own acquirer; a failure is recorded in that
VM's own ledger, in the batch ledger and in the signed batch record, and the others carry on.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterable
from typing import Any

from vmforensics.acquire.base import Acquirer
from vmforensics.acquire.batch import BatchItem, BatchResult, Limits, plans_for, run_batch
from vmforensics.acquire.batch_plan import AcquisitionPlan, SignerRef
from vmforensics.acquire.batch_progress import BatchCallback
from vmforensics.custody.models import CaseInfo
from vmforensics.custody.signing import Signer
from vmforensics.errors import UsageError
from vmforensics.survey.models import VMRecord

__all__ = ["BatchItem", "BatchResult", "Limits", "acquire_many"]

AcquirerFactory = Callable[[VMRecord], Acquirer]


def acquire_many(
    selection: Iterable[VMRecord | AcquisitionPlan | str],
    out_root: str | os.PathLike[str],
    *,
    case: CaseInfo,
    executor: cf.Executor | None = None,
    limits: Limits | None = None,
    acquirer_factory: AcquirerFactory | None = None,
    max_parallel: int = 2,
    signer: Signer | SignerRef | None = None,
    progress: bool | BatchCallback = True,
    resume: bool = False,
    worker_root: str | os.PathLike[str] | None = None,
    **acquire_options: Any,
) -> BatchResult:
    """Acquire every VM in ``selection`` into ``out_root/<VM name>`` and sign the batch record.

    Survey records and targets become local acquisitions (or ``acquirer_factory(record)``'s, on a
    thread pool); :class:`AcquisitionPlan` names any acquirer kind with secrets by reference.
    ``executor``: any concurrent.futures executor, e.g. ``distributed.Client(...).get_executor()``
    (default: a local pool). ``limits``: overall / per host / per datastore (default: at most
    ``max_parallel`` overall). Other keywords go to :meth:`Acquirer.acquire` (preserve, memory...).
    ``resume=True`` reruns only the members the batch record does not list as sealed.
    """
    if max_parallel < 1:
        raise UsageError("max_parallel must be at least 1")
    items = list(selection)
    records = [
        item if isinstance(item, VMRecord) else VMRecord(name=str(item), reference=str(item))
        for item in items
    ]
    return run_batch(
        plans_for(items),
        out_root,
        case=case,
        executor=executor,
        limits=limits or Limits(total=max_parallel),
        signer=signer,
        progress=progress,
        resume=resume,
        worker_root=worker_root,
        acquirer_factory=acquirer_factory,
        records=records if acquirer_factory is not None else None,
        **acquire_options,
    )
