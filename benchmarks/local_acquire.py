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
    parser.add_argument("--trials", type=int, default=3)
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
    case = CaseInfo(case_id="BENCH", examiner="benchmark")
    best = {"openssl": float("inf"), "cp": float("inf"), "ours": float("inf")}
    used: list[Path] = []
    for trial in range(args.trials):  # interleaved; deletions happen after all trials (ext4 discard)
        copy_target = work / f"cp-copy-{trial}"
        out = work / f"evidence-{trial}"
        used += [copy_target, out]
        best["openssl"] = min(
            best["openssl"],
            timed(
                lambda: subprocess.run(
                    ["openssl", "dgst", "-sha256", str(source)], capture_output=True, check=True
                )
            ),
        )
        best["cp"] = min(best["cp"], timed(lambda t=copy_target: (shutil.copyfile(source, t), os.sync())))
        best["ours"] = min(
            best["ours"], timed(lambda o=out: LocalAcquirer().acquire(str(vm), o, case=case, progress=False))
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"file: {args.size_mib} MiB random, {work}; best of {args.trials} interleaved trials")
    print(f"openssl dgst -sha256      {mb / best['openssl']:8.0f} MB/s  (reference: hash only, no copy)")
    print(f"cp + sync                 {mb / best['cp']:8.0f} MB/s  (copy only, no hash)")
    print(f"vmforensics acquire local {mb / best['ours']:8.0f} MB/s  (copy + sha256 + fsync + seal)")
    print(
        f"ratio vs openssl dgst: {best['openssl'] / best['ours']:.2f}   ratio vs cp+sync: {best['cp'] / best['ours']:.2f}"
    )
    print(f"peak RSS of this process: {rss:.0f} MiB")
    for path in used:
        if path.is_dir():
            subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
