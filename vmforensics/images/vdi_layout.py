"""On-disk structures of VirtualBox VDI images; all fields little-endian.

References: VirtualBox's src/VBox/Storage/VDICore.h (VDIPREHEADER, VDIHEADER0, VDIHEADER1PLUS) and
qemu's block/vdi.c.
"""

from __future__ import annotations

import struct
import uuid
from enum import IntEnum
from typing import NamedTuple

SIGNATURE = 0xBEDA107F
SIGNATURE_OFFSET = 64
VERSION_0_0 = 0x00000000
VERSION_1_1 = 0x00010001
BLOCK_FREE = 0xFFFFFFFF  # not in this file: zeros in a base image, the parent's bytes in a diff
BLOCK_ZERO = 0xFFFFFFFE  # reads as zeros (also in a differencing image)
SECTOR = 512

PREHEADER = struct.Struct("<64sII")  # szFileInfo, u32Signature, u32Version
#: Version 1.x: cbHeader, type, flags, comment, offBlocks, offData, legacy CHS + sector size,
#: dummy, cbDisk, cbBlock, cbBlockExtra, cBlocks, cBlocksAllocated, four UUIDs.
HEADER_1 = struct.Struct("<III256sII4IIQIIII16s16s16s16s")
#: Version 0.0: type, flags, comment, legacy geometry, cbDisk, cbBlock, cBlocks, cBlocksAllocated,
#: three UUIDs; the block map follows the header and the data follows the map.
HEADER_0 = struct.Struct("<II256s4IQIII16s16s16s")


class ImageType(IntEnum):
    NORMAL = 1  # dynamically growing
    FIXED = 2  # preallocated
    UNDO = 3  # differencing, for undo/commit (read like DIFF)
    DIFF = 4  # differencing


class Header(NamedTuple):
    """The fields a reader needs, the same for both header versions."""

    version: int
    header_size: int
    image_type: int
    flags: int
    comment: str
    blocks_offset: int
    data_offset: int
    disk_size: int
    block_size: int
    block_extra: int
    blocks: int
    blocks_allocated: int
    uuid_create: uuid.UUID
    uuid_modify: uuid.UUID
    uuid_linkage: uuid.UUID
    uuid_parent_modify: uuid.UUID
    file_info: str


def _uuid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw)  # RTUUID is stored in the Windows GUID byte order


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_header(raw: bytes) -> Header:
    """Decode the pre-header and header at the start of ``raw`` (at least 72 + 384 bytes)."""
    file_info, _signature, version = PREHEADER.unpack_from(raw)
    if version >> 16 == 0:
        (kind, flags, comment, _c, _h, _s, _b, size, block, blocks, allocated, create, modify, link) = (
            HEADER_0.unpack_from(raw, PREHEADER.size)
        )
        blocks_offset = PREHEADER.size + HEADER_0.size
        return Header(
            version, HEADER_0.size, kind, flags, _text(comment), blocks_offset, blocks_offset + blocks * 4,
            size, block, 0, blocks, allocated, _uuid(create), _uuid(modify), _uuid(link), uuid.UUID(int=0),
            _text(file_info),
        )  # fmt: skip
    fields = HEADER_1.unpack_from(raw, PREHEADER.size)
    (cb_header, kind, flags, comment, off_blocks, off_data, _c, _h, _s, _b, _dummy, size, block, extra) = (
        fields[:14]
    )
    blocks, allocated, create, modify, link, parent_modify = fields[14:]
    return Header(
        version, cb_header, kind, flags, _text(comment), off_blocks, off_data, size, block, extra, blocks,
        allocated, _uuid(create), _uuid(modify), _uuid(link), _uuid(parent_modify), _text(file_info),
    )  # fmt: skip


HEADER_READ = PREHEADER.size + HEADER_1.size
