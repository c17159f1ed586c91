"""Batch acquisition overhead: one by one vs a batch on local threads and on 1, 2, 4 Dask workers.

    python benchmarks/fleet.py [--vms 8,32] [--workers 1,2,4] [--memory-mib 16] [--repeat 3] [--workdir DIR]

Builds local VM folders (the demo VM, renamed, plus a sparse .vmem of --memory-mib) and acquires
them (a) one by one with ``LocalAcquirer.acquire`` in this process -- the reference; (b) as a batch
on one local thread; (c) as a batch on a ``distributed.LocalCluster(processes=True)`` of 1, 2 and 4
single-threaded workers on this machine (cluster start-up not counted; workers are warmed by
importing vmforensics first, as a lab's long-running cluster would be; each worker's RSS is sampled
every 20 ms during the run). Each kind runs ``--repeat`` times, interleaved with the others, and the
median is reported (this machine's disk is shared: fsync latency varies by a factor of three from
one minute to the next). The batches carry a per-host limit that never binds (four hosts, N
VMs), so that its cost is in the figures: process-wide slots locally, named Dask semaphores on the
cluster. Reports seconds, the batch overhead per VM against the
reference ((batch - reference) / VMs), the ratio batch / reference, and the largest peak RSS of any
worker for each number of VMs (flat when memory does not grow with the batch).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmforensics import CaseInfo, LocalAcquirer
from vmforensics.acquire.batch import Limits
from vmforensics.acquire.batch_plan import AcquisitionPlan
from vmforensics.demo.vm import VM_NAME, build_demo_vm
from vmforensics.survey.acquisition import acquire_many

CASE = CaseInfo(case_id="bench-fleet", examiner="benchmark")
MiB = 1 << 20


def build_vms(root: Path, count: int, memory: int) -> list[Path]:
    template = build_demo_vm(root / "template").parent
    folders = []
    for index in range(count):
        name = f"vm{index:03d}"
        folder = root / "ds" / name
        shutil.copytree(template, folder)
        for path in list(folder.iterdir()):
            if path.name.startswith(VM_NAME + "."):
                path.rename(folder / (name + path.name[len(VM_NAME) :]))
        vmx = folder / f"{name}.vmx"
        vmx.write_text(vmx.read_text().replace(VM_NAME, name))
        with open(folder / f"{name}.vmem", "wb") as f:
            f.truncate(memory)
        folders.append(folder)
    return folders


def one_by_one(folders: list[Path], out: Path) -> float:
    began = time.perf_counter()
    for folder in folders:
        LocalAcquirer().acquire(folder, out / folder.name, case=CASE, progress=False)
    return time.perf_counter() - began


def plans(folders: list[Path]) -> list[AcquisitionPlan]:
    return [AcquisitionPlan(f.name, str(f), host=f"esx{i % 4}") for i, f in enumerate(folders)]


def local_batch(folders: list[Path], out: Path) -> float:
    began = time.perf_counter()
    limits = Limits(total=1, per_host=len(folders))  # a host limit that never binds: its cost only
    batch = acquire_many(plans(folders), out, case=CASE, limits=limits, progress=False)
    assert batch.ok
    return time.perf_counter() - began


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MiB


def start_sampler(dask_worker: Any) -> None:
    """On a worker: import what the tasks use, then sample its RSS every 20 ms (the peak of the run)."""
    import threading

    import vmforensics.acquire.batch
    import vmforensics.hypervisors.local.acquirer  # noqa: F401

    dask_worker.vmf_rss_peak = _rss_mib()

    def sample() -> None:
        while True:
            dask_worker.vmf_rss_peak = max(dask_worker.vmf_rss_peak, _rss_mib())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()


def dask_batch(folders: list[Path], out: Path, workers: int) -> tuple[float, float]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(start_sampler)  # warm workers: a lab's cluster outlives one batch
        began = time.perf_counter()
        batch = acquire_many(  # the host slots are named Dask semaphores; this limit never binds
            plans(folders),
            out,
            case=CASE,
            executor=client.get_executor(),
            limits=Limits(per_host=len(folders)),
            progress=False,
        )
        seconds = time.perf_counter() - began
        assert batch.ok, [i.error for i in batch.failed]
        rss = max(client.run(lambda dask_worker: dask_worker.vmf_rss_peak).values())
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="8,32")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--memory-mib", type=int, default=16)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the median is reported")
    args = parser.parse_args()
    counts = [int(n) for n in args.vms.split(",")]
    worker_counts = [int(n) for n in args.workers.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vmf-fleet-"))
    results: list[dict[str, Any]] = []
    for count in counts:
        root = work / f"n{count}"
        shutil.rmtree(root, ignore_errors=True)
        folders = build_vms(root, count, args.memory_mib * MiB)
        one_by_one(folders[:2], root / "warm-up")  # imports and first-run costs out of the reference
        runs: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        for repeat in range(args.repeat):  # interleaved, so that the machine's load hits every run alike
            out = root / f"r{repeat}"
            runs.setdefault("one by one (reference)", []).append(one_by_one(folders, out / "seq"))
            runs.setdefault("batch, 1 local thread", []).append(local_batch(folders, out / "local"))
            for workers in worker_counts:
                label = f"batch, {workers} Dask worker(s)"
                seconds, rss = dask_batch(folders, out / f"dask{workers}", workers)
                runs.setdefault(label, []).append(seconds)
                peaks[label] = max(peaks.get(label, 0.0), rss)
            shutil.rmtree(out, ignore_errors=True)
        rows = [(label, statistics.median(times), peaks.get(label)) for label, times in runs.items()]
        reference = rows[0][1]
        for label, seconds, rss in rows:
            results.append(
                {
                    "vms": count,
                    "run": label,
                    "seconds": round(seconds, 3),
                    "overhead_per_vm_ms": round((seconds - reference) / count * 1000, 1),
                    "ratio_vs_one_by_one": round(seconds / reference, 3),
                    "worker_peak_rss_mib": round(rss, 1) if rss else None,
                }
            )
            print(
                f"{count:3d} VMs  {label:<26} {seconds:7.2f} s  overhead/VM {results[-1]['overhead_per_vm_ms']:7.1f} ms"
                f"  x{results[-1]['ratio_vs_one_by_one']:.2f}"
                + (f"  worker peak RSS {rss:.0f} MiB" if rss else ""),
                flush=True,
            )
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
