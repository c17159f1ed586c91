"""On-disk structures of Parallels disks: the expanding image header (little-endian) and the
DiskDescriptor.xml of a .hdd bundle.

References: qemu's docs/interop/parallels.txt (the image) and docs/interop/prl-xml.txt (the
descriptor); OpenVZ ploop's ploop1_image.h.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC_V1 = b"WithoutFreeSpace"  # BAT entries count sectors
MAGIC_V2 = b"WithouFreSpacExt"  # BAT entries count clusters; 64-bit sector count
IN_USE = 0x746F6E59  # "Ynot": the image was not closed cleanly
SECTOR = 512

#: magic, version, heads, cylinders, tracks (sectors per cluster), bat_entries, nb_sectors,
#: inuse, data_off (sectors), flags, ext_off (bytes)
HEADER = struct.Struct("<16sIIIIIQIIIQ")
BAT_OFFSET = HEADER.size  # the BAT (32-bit entries, 0 = not allocated) follows the header

DESCRIPTOR_NAME = "DiskDescriptor.xml"
NULL_GUID = "{00000000-0000-0000-0000-000000000000}"
DEFAULT_TOP_GUID = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"  # the first image of a new disk


class Header(NamedTuple):
    magic: bytes
    version: int
    heads: int
    cylinders: int
    tracks: int
    bat_entries: int
    nb_sectors: int
    inuse: int
    data_off: int
    flags: int
    ext_off: int

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        return cls._make(HEADER.unpack_from(raw))

    @property
    def sectors(self) -> int:
        """Virtual size in sectors (version 1 keeps only the low 32 bits)."""
        return self.nb_sectors & 0xFFFFFFFF if self.magic == MAGIC_V1 else self.nb_sectors

    @property
    def entry_unit(self) -> int:
        """Bytes one BAT entry's value counts."""
        return SECTOR if self.magic == MAGIC_V1 else self.tracks * SECTOR
