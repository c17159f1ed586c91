"""LocalAcquirer throughput on a large file vs `openssl dgst -sha256` of the same file, same run.

    python benchmarks/local_acquire.py [--size-mib 1024] [--workdir DIR]

Prints MB/s for: openssl dgst -sha256 (the reference: OpenSSL's SHA-256, no copy), cp + sync
(the disk's copy speed), and vmforensics (copy + SHA-256 in one pass + fsync + seal), with
ratios, and the peak RSS of the acquisition (it must not grow with the file size).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vmforensics import CaseInfo, LocalAcquirer


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vmf-bench-"))
    vm = work / "ds" / "vm"
    vm.mkdir(parents=True, exist_ok=True)
    source = vm / "vm-flat.vmdk"
    size = args.size_mib << 20
    if not source.exists() or source.stat().st_size != size:
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
    subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    mb = size / 1e6

    openssl = timed(
        lambda: subprocess.run(["openssl", "dgst", "-sha256", str(source)], capture_output=True, check=True)
    )
    copy_target = work / "cp-copy"
    copy_target.unlink(missing_ok=True)
    cp = timed(lambda: (shutil.copyfile(source, copy_target), os.sync()))
    copy_target.unlink()
    out = work / "evidence"
    if out.exists():
        subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)
        shutil.rmtree(out)
    case = CaseInfo(case_id="BENCH", examiner="benchmark")
    ours = timed(lambda: LocalAcquirer().acquire(str(vm), out, case=case, progress=False))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"file: {args.size_mib} MiB random, {work}")
    print(f"openssl dgst -sha256      {mb / openssl:8.0f} MB/s")
    print(f"cp + sync                 {mb / cp:8.0f} MB/s")
    print(f"vmforensics acquire local {mb / ours:8.0f} MB/s  (copy + sha256 + fsync + seal)")
    print(f"ratio vs openssl dgst: {openssl / ours:.2f}   ratio vs cp+sync: {cp / ours:.2f}")
    print(f"peak RSS of this process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
