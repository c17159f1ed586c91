"""On-disk layout of VMware state files (.vmss suspend, .vmsn snapshot; metadata for a .vmem).

A header ``<4sII`` (magic, an unknown word, the group count) is followed by the group table: per
group a 64-byte NUL-padded name, the file offset of its tags and a size. A group's tags run until
two zero bytes: ``flags`` (u8), the name length (u8), the name, ``flags >> 6`` indices (u32 each)
and a value of ``flags & 0x3f`` bytes. Sizes 62 and 63 mark a long value: two sizes follow (the
stored size and the size in memory; u32 in version 0 files, u64 otherwise), then two bytes, then
the stored bytes. Volatility 3's ``layers/vmware.py`` reads the same layout.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<4sII")
GROUP = struct.Struct("<64sQQ")
INDEX = struct.Struct("<I")
#: Every magic Volatility 3 accepts; the low nibble of the first byte is the file version.
MAGICS = (b"\xd0\xbe\xd2\xbe", b"\xd1\xba\xd1\xba", b"\xd2\xbe\xd2\xbe", b"\xd3\xbe\xd3\xbe")
LONG_SIZES = (62, 63)
#: Gap between the two size fields of a long value and its bytes.
LONG_GAP = 2
MAX_GROUPS = 4096
MAX_TAGS = 1 << 20
MAX_REGIONS = 4096
#: x86 guests without a region table (older embedded-memory files) have RAM linear only below this.
PCI_HOLE_START = 0xC0000000


def version(magic: bytes) -> int:
    return magic[0] & 0x0F


def long_size_field(file_version: int) -> struct.Struct:
    return struct.Struct("<I") if file_version == 0 else struct.Struct("<Q")
