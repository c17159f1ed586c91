"""On-disk structures of VHDX / AVHDX images (Hyper-V); all fields little-endian.

Reference: Microsoft "VHDX Format Specification v1.00" ([MS-VHDX]); libyal/libvhdi's notes.
"""

from __future__ import annotations

import struct
import uuid
from enum import IntEnum
from typing import NamedTuple

import google_crc32c

KiB = 1024
MiB = 1024 * KiB

FILE_SIGNATURE = b"vhdxfile"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
MAX_REGION_ENTRIES = 2047
METADATA_TABLE_SIZE = 64 * KiB
MAX_METADATA_ENTRIES = 2047
MAX_METADATA_ITEM = 1 * MiB
SECTORS_PER_BITMAP = 1 << 23  # one sector bitmap block (1 MiB) describes 2^23 sectors
BITMAP_BLOCK_SIZE = 1 * MiB
LOG_SECTOR = 4 * KiB

HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
REGION_TABLE_HEADER = struct.Struct("<4sIII")
REGION_ENTRY = struct.Struct("<16sQII")
METADATA_TABLE_HEADER = struct.Struct("<8sHH20x")
METADATA_ENTRY = struct.Struct("<16sIII4x")
FILE_PARAMETERS = struct.Struct("<II")
PARENT_LOCATOR_HEADER = struct.Struct("<16sHH")
PARENT_LOCATOR_ENTRY = struct.Struct("<IIHH")
LOG_ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")
LOG_DESCRIPTOR = struct.Struct("<4sIQQQ")
LOG_DATA_SECTOR = struct.Struct("<4sI4084sI")

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_ITEM = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_ITEM = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID_ITEM = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_ITEM = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_ITEM = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_ITEM = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
KNOWN_METADATA = frozenset(
    {
        FILE_PARAMETERS_ITEM,
        VIRTUAL_DISK_SIZE_ITEM,
        VIRTUAL_DISK_ID_ITEM,
        LOGICAL_SECTOR_SIZE_ITEM,
        PHYSICAL_SECTOR_SIZE_ITEM,
        PARENT_LOCATOR_ITEM,
    }
)
#: Parent locator keys naming the parent's file, in the order the specification says to try them.
PARENT_PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


class PayloadState(IntEnum):
    NOT_PRESENT = 0
    UNDEFINED = 1
    ZERO = 2
    UNMAPPED = 3
    FULLY_PRESENT = 6
    PARTIALLY_PRESENT = 7


SB_BLOCK_PRESENT = 6
BAT_STATE_MASK = 0x7
BAT_OFFSET_SHIFT = 20  # FileOffsetMB occupies bits 20..63


def crc32c(raw: bytes | bytearray | memoryview) -> int:
    return google_crc32c.value(bytes(raw))


def checksum_ok(raw: bytes, field_offset: int = 4) -> bool:
    """CRC-32C over the structure with its 4-byte checksum field read as zero."""
    stored = int.from_bytes(raw[field_offset : field_offset + 4], "little")
    blanked = raw[:field_offset] + b"\0\0\0\0" + raw[field_offset + 4 :]
    return crc32c(blanked) == stored


def guid(raw: bytes) -> uuid.UUID:
    """A GUID in Microsoft's mixed-endian binary form."""
    return uuid.UUID(bytes_le=bytes(raw))


class Header(NamedTuple):
    signature: bytes
    checksum: int
    sequence_number: int
    file_write_guid: bytes
    data_write_guid: bytes
    log_guid: bytes
    log_version: int
    version: int
    log_length: int
    log_offset: int

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        return cls._make(HEADER.unpack_from(raw))


class RegionEntry(NamedTuple):
    guid: bytes
    file_offset: int
    length: int
    required: int


class MetadataEntry(NamedTuple):
    item_id: bytes
    offset: int
    length: int
    flags: int

    @property
    def is_required(self) -> bool:
        return bool(self.flags & 4)


class LogEntryHeader(NamedTuple):
    signature: bytes
    checksum: int
    entry_length: int
    tail: int
    sequence_number: int
    descriptor_count: int
    reserved: int
    log_guid: bytes
    flushed_file_offset: int
    last_file_offset: int


class LogDescriptor(NamedTuple):
    signature: bytes  # b"desc" (data) or b"zero"
    trailing_bytes: int  # data: trailing 4 bytes of the sector; zero: reserved
    leading_or_length: int  # data: leading 8 bytes of the sector; zero: length to zero
    file_offset: int
    sequence_number: int


def descriptor_sectors(descriptor_count: int) -> int:
    """4 KiB sectors holding the entry header (with 126 descriptors) and any further descriptors."""
    return 1 + max(0, -(-(descriptor_count - 126) // 128))


def chunk_ratio(block_size: int, logical_sector_size: int) -> int:
    """Payload blocks per sector bitmap block."""
    return SECTORS_PER_BITMAP * logical_sector_size // block_size
