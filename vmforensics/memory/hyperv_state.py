"""Hyper-V saved state (.vmrs, and the older .bin + .vsv pair): recognised, and refused.

A .vmrs is a "HyperVStorage" container (the same key/value file format as .vmcx; header
signature 0x01282014 at offset 0, a second header copy at 0x1000). Where in it the guest's RAM
lies, and how it is encoded, is not publicly documented, and no public sample of a saved VM with
memory was available to prove a reading against; so no memory is ever produced from it (never
guessed memory). docs/memory.md says what to do instead (Microsoft's vmsavedstatedumpprovider
on Windows, or ``Checkpoint-VM`` + LiveKd / a crash dump).
"""

from __future__ import annotations

import struct
from pathlib import Path

from vmforensics.errors import MemoryFormatError
from vmforensics.memory.base import GuestMemory

SIGNATURE = 0x01282014
#: The .vsv of Windows Server 2008-2012 R2 saved states (the .bin beside it holds RAM).
VSV_SUFFIX = ".vsv"


def is_hyperv(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack_from("<I", head)[0] == SIGNATURE


def open_hyperv(path: Path) -> GuestMemory:
    raise MemoryFormatError(
        "Hyper-V saved state (.vmrs) is recognised but not converted: its memory encoding is not "
        "publicly documented; on the Hyper-V host, use Microsoft's vmsavedstatedumpprovider "
        "(VmSavedStateDumpProvider.dll) to write a dump, then open that",
        offset=0,
        path=str(path),
    )
