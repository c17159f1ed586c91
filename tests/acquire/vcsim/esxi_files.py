"""Realistic VM files written into a vcsim datastore directory, as ESXi would have written them.

vcsim keeps its datastores as real directories but leaves the files empty and writes no memory
or suspend state. These helpers put real contents there: a VMDK made by qemu-img holding an ext4
file system with a known file, a snapshot's .vmsn/.vmem pair and its sparse delta disk, a
suspended VM's .vmss/.vmem pair. Memory files carry the VMware state magic and random pages.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

#: The magic at the start of .vmss/.vmsn files (what Volatility 3's vmware layer checks).
VMSS_MAGIC = 0xBED2BED2
EVIDENCE_TEXT = b"the intruder was here\n"


def write_disk(vm_dir: Path, work: Path, *, name: str = "disk1", size_mb: int = 16) -> Path:
    """Replace vcsim's empty ``disk1.vmdk``/``disk1-flat.vmdk`` with a real VMDK holding ext4.

    ESXi keeps a descriptor and a flat extent; qemu-img's monolithicFlat writes exactly that
    pair. Returns the raw image the disk was made from (the oracle).
    """
    tree = work / "guest-root"
    (tree / "home" / "user").mkdir(parents=True, exist_ok=True)
    (tree / "home" / "user" / "evidence.txt").write_bytes(EVIDENCE_TEXT)
    raw = work / f"{name}.raw"
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(raw)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "guest", "-d", str(tree), str(raw)], check=True, capture_output=True
    )
    for stale in (vm_dir / f"{name}.vmdk", vm_dir / f"{name}-flat.vmdk"):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            str(raw),
            str(vm_dir / f"{name}.vmdk"),
        ],
        check=True,
    )
    return raw


def write_delta(vm_dir: Path, *, parent: str = "disk1", number: int = 1) -> Path:
    """The sparse delta a snapshot starts (``disk1-000001.vmdk``), with guest writes after it."""
    delta = vm_dir / f"{parent}-{number:06d}.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-b", f"{parent}.vmdk", "-F", "vmdk", str(delta)],
        check=True,
        cwd=vm_dir,
    )
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x41 1M 64k", str(delta)], check=True, capture_output=True, cwd=vm_dir
    )
    return delta


def write_memory_state(state_file: Path, memory_file: Path, *, memory_mb: int = 4) -> None:
    """A .vmsn or .vmss (state header) and the .vmem beside it with the same base name."""
    header = struct.pack("<III", VMSS_MAGIC, 0, 1) + os.urandom(4096 - 12)
    state_file.write_bytes(header)
    with open(memory_file, "wb") as out:
        for _ in range(memory_mb):
            out.write(os.urandom(1 << 20))
