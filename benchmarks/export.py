"""E01 export speed: vmforensics' writer against libewf's ewfacquirestream of the same raw stream.

    python benchmarks/export.py [--mib 512] [--workdir DIR] [--compression fast|best]

A ``--mib`` MiB raw disk: a quarter random bytes (incompressible), a quarter text-like
(compressible), half zeros (a sparse disk's free space), in 1 MiB runs spread over the disk.
``export_e01`` writes it as EnCase 6 E01 (MD5, SHA-1 and SHA-256 of the media); then, in the same
run, ``ewfacquirestream -f encase6 -c fast|best -d sha1,sha256 < raw`` does the same from
standard input. Both read from the page cache after a warm-up read. Both outputs must pass
``ewfverify``. Prints JSON with MB/s of media, output sizes, the ratio and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmforensics.custody.ewf import E01Case, export_e01
from vmforensics.images import open_image

TEXT = b"".join(b"%06d GET /index.html HTTP/1.1 200 512 Mozilla/5.0\r\n" % i for i in range(20000))


def make_disk(path: Path, mib: int) -> None:
    with path.open("wb") as f, open("/dev/urandom", "rb") as rng:
        for i in range(mib):
            kind = i % 4
            if kind == 0:
                f.write(rng.read(1 << 20))
            elif kind == 1:
                f.write((TEXT * 2)[: 1 << 20])
            else:
                f.seek(1 << 20, os.SEEK_CUR)
        f.truncate(mib << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--workdir")
    parser.add_argument("--compression", choices=("fast", "best"), default="fast")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        disk = Path(work) / "disk.raw"
        make_disk(disk, args.mib)
        subprocess.run(["cat", str(disk)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        case = E01Case(case_number="bench", examiner="bench", acquired=0)
        began = time.perf_counter()
        with open_image(disk, format="raw") as image:
            ours = export_e01(
                image, Path(work) / "ours.E01", case=case, compression=args.compression, progress=False
            )
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        with disk.open("rb") as stdin:
            subprocess.run(
                [
                    *("ewfacquirestream", "-q", "-t", str(Path(work) / "ref"), "-f", "encase6"),
                    *("-c", args.compression, "-d", "sha1,sha256", "-C", "bench", "-e", "bench"),
                    *("-S", str(1500 << 20)),
                ],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                check=True,
            )
        ref_s = time.perf_counter() - began
        for first in (Path(ours.segments[0].path), Path(work) / "ref.E01"):
            done = subprocess.run(["ewfverify", "-q", str(first)], capture_output=True, text=True)
            assert done.returncode == 0 and ours.md5 in done.stdout, done.stdout
        mb = (args.mib << 20) / 1e6
        print(
            json.dumps(
                {
                    "media_mib": args.mib,
                    "compression": args.compression,
                    "vmforensics_export_e01_MBps": round(mb / ours_s, 1),
                    "ewfacquirestream_MBps": round(mb / ref_s, 1),
                    "ratio": round(ref_s / ours_s, 2),
                    "vmforensics_bytes": sum(s.size for s in ours.segments),
                    "ewfacquirestream_bytes": sum(p.stat().st_size for p in Path(work).glob("ref.E*")),
                    "cpus": os.cpu_count(),
                    "loadavg_1min": os.getloadavg()[0],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
