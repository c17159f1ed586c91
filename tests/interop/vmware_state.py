"""A VMware state file (.vmsn / .vmss) whose "memory" group maps the .vmem beside it, and that .vmem.

Layout (what Volatility 3's vmware layer reads): a header ``<4sII`` (magic D2 BE D2 BE, an unknown
word, the group count), then per group a 64-byte name, the offset of its tags and their size; a
group's tags are ``flags, name length, name, indices (u32 each), value`` and end with two zero
bytes. ``flags & 0x3f`` is the value's size, ``flags >> 6`` the number of indices. The memory group
says how the .vmem's pages map onto guest-physical pages: regionsCount, then for each region
regionPPN (guest page), regionPageNum (page in the .vmem) and regionSize (pages).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

MAGIC = b"\xd2\xbe\xd2\xbe"
PAGE = 4096
HEADER = struct.Struct("<4sII")
GROUP = struct.Struct("<64sQQ")

#: (guest-physical page, page in the .vmem, pages): low memory, then the rest above the 4 GiB hole.
REGIONS = ((0, 0, 512), (0x100000, 512, 512))
#: A kernel banner planted in the second region: found at BANNER_PHYSICAL only through the metadata.
BANNER = (
    b"Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP"
)
BANNER_VMEM_OFFSET = (512 + 3) * PAGE + 0x10
BANNER_PHYSICAL = (0x100000 + 3) * PAGE + 0x10


def _tag(name: str, value: int, *indices: int) -> bytes:
    flags = (len(indices) << 6) | 4
    encoded = name.encode()
    return (
        bytes([flags, len(encoded)])
        + encoded
        + struct.pack(f"<{len(indices)}I", *indices)
        + struct.pack("<I", value)
    )


def state_file(regions: Sequence[tuple[int, int, int]] = REGIONS) -> bytes:
    """The bytes of a state file with a "Checkpoint" group and a "memory" group describing ``regions``."""
    end = b"\x00\x00"
    checkpoint = _tag("version", 8) + end
    memory = _tag("regionsCount", len(regions))
    for number, (ppn, page_number, size) in enumerate(regions):
        memory += _tag("regionPPN", ppn, number) + _tag("regionPageNum", page_number, number)
        memory += _tag("regionSize", size, number)
    memory += end
    groups = (("Checkpoint", checkpoint), ("memory", memory))
    offset = HEADER.size + GROUP.size * len(groups)
    table, bodies = b"", b""
    for name, body in groups:
        table += GROUP.pack(name.encode(), offset + len(bodies), len(body))
        bodies += body
    return HEADER.pack(MAGIC, 0, len(groups)) + table + bodies


def write_memory_state(state: Path, memory: Path, regions: Sequence[tuple[int, int, int]] = REGIONS) -> None:
    """``state`` (.vmsn or .vmss) and ``memory`` (.vmem: random pages, as many as the regions use,
    with BANNER at BANNER_VMEM_OFFSET)."""
    state.write_bytes(state_file(regions))
    pages = bytearray(os.urandom(max(page_number + size for _, page_number, size in regions) * PAGE))
    pages[BANNER_VMEM_OFFSET : BANNER_VMEM_OFFSET + len(BANNER) + 1] = BANNER + b"\0"
    memory.write_bytes(pages)
