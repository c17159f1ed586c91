"""Valid giant images, made by qemu-img at the sizes where fixed limits used to refuse them (or
tables were allocated whole): each opens, reads what qemu reads at chosen offsets, and stays
within a small memory bound however large the disk it declares.

Memory is measured in a child process (tracemalloc's peak, and the growth of its peak RSS,
VmHWM, from before the import of vmforensics to after open, info and the reads), so the test's
own allocations do not count. qemu's bytes come from ``qemu-img dd`` of the same offsets.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.images.conftest import qemu_img, qemu_io

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
#: Python heap the reader may allocate for a giant image (tables are paged: a few MiB at most).
HEAP_BOUND = 16 * MiB
#: Growth of the child's peak RSS (heap, mmap'd read buffers, imports of the image modules).
RSS_BOUND = 48 * MiB
PROBE = 64 * KiB


class Giant(NamedTuple):
    fmt: str  # qemu's format name
    size: int
    options: tuple[str, ...] = ()

    @property
    def written(self) -> dict[int, int]:
        """Offsets qemu-io fills (with bytes 0x41, 0x42, ...): start, middle, the last 4 KiB."""
        middle = (self.size // 2 + 3 * MiB) // (64 * KiB) * (64 * KiB)
        return {0: 64 * KiB, middle: 8 * KiB, self.size - 4 * KiB: 4 * KiB}

    @property
    def probes(self) -> list[int]:
        """Where reads are compared: each write (and just before it), a hole, unaligned spans."""
        out = {0, self.size // 4, self.size - PROBE}
        for at in self.written:
            out |= {at, max(0, at - 2 * KiB)}
        return sorted(min(at, self.size - PROBE) for at in out)


GIANTS = {
    # the refusals: a BAT over the old 64 MiB limit (512 MiB here)
    "vhdx-64TiB-1MiB-blocks": Giant("vhdx", 64 * TiB, ("-o", "block_size=1M")),
    # L1 tables of 16 and 32 MiB (QEMU's own maximum), once read whole
    "qcow2-256TiB-32KiB-clusters": Giant("qcow2", 256 * TiB, ("-o", "cluster_size=32k")),
    "qcow2-8TiB-4KiB-clusters": Giant("qcow2", 8 * TiB, ("-o", "cluster_size=4k")),
    # 2M preallocated grain tables (8 GiB of them, a sparse file): once 157 MiB and 15 s
    "vmdk-monolithicSparse-64TiB": Giant("vmdk", 64 * TiB),
    "vmdk-monolithicSparse-2TiB": Giant("vmdk", 2 * TiB),
    "vdi-64TiB": Giant("vdi", 64 * TiB),  # a 256 MiB block map
    "parallels-64TiB": Giant("parallels", 64 * TiB),  # a 256 MiB BAT
    "qcow1-20TiB": Giant("qcow", 20 * TiB),  # an 80 MiB L1 table
    "qed-256TiB-16MiB-tables": Giant("qed", 256 * TiB, ("-o", "cluster_size=1M,table_size=16")),
    "vhd-2040GiB": Giant("vpc", 2040 * GiB),  # the format's maximum
}

CHILD = r"""
import hashlib, json, sys, tracemalloc
def high_water():  # VmHWM: this process's own peak RSS (ru_maxrss keeps the forking parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
path, probes, length = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
before = high_water()
tracemalloc.start()
from vmforensics.images import open_image
with open_image(path) as disk:
    info = disk.info()
    digests = [hashlib.sha256(disk.read_at(at, length)).hexdigest() for at in probes]
    size, allocated, warnings = disk.size, info.allocated, list(info.warnings)
heap = tracemalloc.get_traced_memory()[1]
print(json.dumps({"size": size, "allocated": allocated, "warnings": warnings, "digests": digests,
                  "heap": heap, "rss": high_water() - before}))
"""


def qemu_bytes(image: Path, fmt: str, at: int, length: int, out: Path) -> bytes:
    """``length`` bytes at ``at`` of the guest disk, as qemu-img dd reads them (its count
    includes the skipped blocks)."""
    block = 2 * KiB
    assert at % block == 0 and length % block == 0
    out.unlink(missing_ok=True)
    skip = at // block
    qemu_img("dd", "-f", fmt, "-O", "raw", f"bs={block}", f"skip={skip}", f"count={skip + length // block}",
             f"if={image}", f"of={out}")  # fmt: skip
    got = out.read_bytes()
    assert len(got) == length, f"qemu-img dd gave {len(got)} bytes"
    return got


@pytest.mark.parametrize("name", list(GIANTS))
def test_a_giant_valid_image_opens_reads_as_qemu_and_stays_small_in_memory(tmp_path: Path, name: str) -> None:
    giant = GIANTS[name]
    image = tmp_path / f"giant.{giant.fmt}"
    try:
        qemu_img("create", "-q", "-f", giant.fmt, *giant.options, image, str(giant.size))
        commands = [
            f"write -P {0x41 + i} {at} {length}" for i, (at, length) in enumerate(giant.written.items())
        ]
        qemu_io(image, *commands, fmt=giant.fmt)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(image), json.dumps(giant.probes), str(PROBE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["size"] == json.loads(qemu_img("info", "--output=json", image))["virtual-size"]
        for at, digest in zip(giant.probes, seen["digests"], strict=True):
            want = qemu_bytes(image, giant.fmt, at, PROBE, tmp_path / "probe.raw")
            assert digest == hashlib.sha256(want).hexdigest(), f"bytes at {at} differ from qemu's"
        assert seen["allocated"] >= sum(giant.written.values())
        assert seen["warnings"] == []
        assert seen["heap"] < HEAP_BOUND, f"{seen['heap']} bytes of Python heap"
        assert seen["rss"] < RSS_BOUND, f"peak RSS grew by {seen['rss']} bytes"
    finally:
        image.unlink(missing_ok=True)  # up to 545 MiB each (qemu writes a VHDX's BAT in full)
