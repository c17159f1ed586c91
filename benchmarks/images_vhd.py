"""VHD / VHDX read speed: vmforensics vs libvhdi (pyvhdi) vs the raw file, ratios printed in one run.

    python benchmarks/images_vhd.py [--size-mib 1024] [--random 20000] [--keep DIR]

Builds a raw disk (3/4 incompressible data, 1/4 holes, in 1 MiB pieces), converts it with qemu-img
to a dynamic VHDX, a dynamic VHD and a fixed VHD, then times a sequential read of the whole disk
in 4 MiB requests and N random 4 KiB reads with each reader. The files were just written, so they
are read from the page cache: this measures the readers' CPU cost, not the disk.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmforensics.images import open_image

MiB = 1 << 20
CHUNK = 4 * MiB
IMAGES = {  # name -> (qemu-img format, options)
    "vhdx-dynamic": ("vhdx", "subformat=dynamic"),
    "vhd-dynamic": ("vpc", "subformat=dynamic"),
    "vhd-fixed": ("vpc", "subformat=fixed"),
}


def make_raw(path: Path, size: int) -> None:
    rng = random.Random(42)
    with path.open("wb") as f:
        for _ in range(size // MiB):
            if rng.random() < 0.25:
                f.seek(MiB, os.SEEK_CUR)
            else:
                f.write(rng.randbytes(MiB))
        f.truncate(size)


def sequential(read: Callable[[int, int], object], size: int) -> float:
    """MB/s reading the whole disk in 4 MiB requests."""
    began = time.perf_counter()
    for offset in range(0, size, CHUNK):
        read(offset, min(CHUNK, size - offset))
    return size / MiB / (time.perf_counter() - began)


def random_reads(read: Callable[[int, int], bytes], size: int, count: int) -> float:
    """Reads per second of 4 KiB at random 4 KiB-aligned offsets."""
    rng = random.Random(7)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    began = time.perf_counter()
    for offset in offsets:
        read(offset, 4096)
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--random", type=int, default=20000)
    parser.add_argument("--keep", type=Path, help="build the images in this directory and keep them")
    args = parser.parse_args()
    import pyvhdi

    size = args.size_mib * MiB
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="vhd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "disk.raw"
    if not raw.exists() or raw.stat().st_size != size:
        make_raw(raw, size)
    images = {}
    for name, (fmt, options) in IMAGES.items():
        out = workdir / f"{name}.{'vhdx' if fmt == 'vhdx' else 'vhd'}"
        if not out.exists():
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", fmt, "-o", options, raw, out], check=True
            )
        images[name] = out

    fd = os.open(raw, os.O_RDONLY)
    raw_seq = sequential(lambda off, n: os.pread(fd, n, off), size)
    raw_rand = random_reads(lambda off, n: os.pread(fd, n, off), size, args.random)
    os.close(fd)
    print(f"size {args.size_mib} MiB; raw file: pread {raw_seq:.0f} MB/s, random 4 KiB {raw_rand:.0f}/s")
    reused = memoryview(bytearray(CHUNK))
    for name, path in images.items():
        with open_image(path) as disk:
            virtual = min(disk.size, size)
            ours_seq = sequential(disk.read_at, virtual)
            ours_into = sequential(lambda off, n, disk=disk: disk.readinto_at(reused[:n], off), virtual)
            ours_rand = random_reads(disk.read_at, virtual, args.random)
        handle = pyvhdi.file()
        handle.open(str(path))
        lib_seq = sequential(lambda off, n, h=handle: h.read_buffer_at_offset(n, off), virtual)
        lib_rand = random_reads(
            lambda off, n, h=handle: h.read_buffer_at_offset(n, off), virtual, args.random
        )
        handle.close()
        print(
            f"{name:13s} sequential: vmforensics {ours_seq:6.0f} MB/s (readinto {ours_into:6.0f}), "
            f"libvhdi {lib_seq:6.0f} MB/s -> {ours_seq / lib_seq:4.2f}x libvhdi, {ours_seq / raw_seq:4.2f}x raw"
        )
        print(
            f"{'':13s} random 4 KiB: vmforensics {ours_rand:6.0f}/s, libvhdi {lib_rand:6.0f}/s "
            f"-> {ours_rand / lib_rand:4.2f}x libvhdi, {ours_rand / raw_rand:4.2f}x raw"
        )
    if args.keep is None:
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
