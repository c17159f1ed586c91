"""The cost of proving a resume: re-reading and hashing the prefix already copied, against coreutils.

    python benchmarks/resume_proof.py [--mib 1024] [--workdir DIR]

A ``--mib`` MiB source file of random bytes; ``vmforensics.acquire.resume.prefix_hash`` re-reads
and hashes its first ``--mib`` MiB through the local transport (what ``--resume`` does before it
appends a byte), and ``head -c N FILE | sha256sum`` and ``sha256sum FILE`` do the same with
coreutils in the same run.
Both read from the page cache after a warm-up read, so the figure is the hashing path's own cost;
over SSH/SMB/HTTPS the link's speed bounds it instead. Prints JSON with MB/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmforensics.acquire.resume import prefix_hash
from vmforensics.transport.local import LocalTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        source = Path(work) / "source.bin"
        with source.open("wb") as f, open("/dev/urandom", "rb") as rng:
            for _ in range(args.mib):
                f.write(rng.read(1 << 20))
        length = args.mib << 20
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        began = time.perf_counter()
        ours = prefix_hash(LocalTransport(), str(source), length)
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        done = subprocess.run(
            f"head -c {length} '{source}' | sha256sum", shell=True, capture_output=True, text=True, check=True
        )
        ref_s = time.perf_counter() - began
        assert done.stdout.split()[0] == ours, "prefix hashes differ"
        began = time.perf_counter()
        whole = subprocess.run(["sha256sum", str(source)], capture_output=True, text=True, check=True)
        whole_s = time.perf_counter() - began
        assert whole.stdout.split()[0] == ours, "whole-file hash differs"
        mb = length / 1e6
        print(
            json.dumps(
                {
                    "prefix_mib": args.mib,
                    "vmforensics_prefix_hash_MBps": round(mb / ours_s, 1),
                    "coreutils_head_sha256sum_MBps": round(mb / ref_s, 1),
                    "coreutils_sha256sum_file_MBps": round(mb / whole_s, 1),
                    "ratio_vs_coreutils_pipe": round(ref_s / ours_s, 2),
                    "ratio_vs_coreutils_file": round(whole_s / ours_s, 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
