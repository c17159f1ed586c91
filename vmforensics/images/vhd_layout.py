"""On-disk structures of Microsoft VHD (Virtual PC / Hyper-V v1) images; all fields big-endian.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0 and libyal/libvhdi's
"Virtual Hard Disk (VHD) image format" notes.
"""

from __future__ import annotations

import struct
import uuid
from enum import IntEnum
from typing import NamedTuple

SECTOR = 512
FOOTER_SIZE = 512
DYNAMIC_HEADER_SIZE = 1024
FOOTER_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
UNALLOCATED = 0xFFFFFFFF  # BAT entry of a block that is not in the file
CHECKSUM_OFFSET_FOOTER = 64
CHECKSUM_OFFSET_DYNAMIC = 36


class DiskType(IntEnum):
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


FOOTER = struct.Struct(">8sIIQI4sI4sQQIII16sB427x")
DYNAMIC_HEADER = struct.Struct(">8sQQIIII16sI4x512s")
PARENT_LOCATOR = struct.Struct(">4sIII Q")
PARENT_LOCATORS_OFFSET = DYNAMIC_HEADER.size  # eight locator entries follow the fixed fields
PARENT_LOCATOR_COUNT = 8

#: Platform codes of parent locators, in the order a parent is looked for (relative first).
PLATFORM_ENCODINGS = {
    b"W2ru": "utf-16-le",  # Windows relative path, Unicode
    b"W2ku": "utf-16-le",  # Windows absolute path, Unicode
    b"Wi2r": "latin-1",  # deprecated Windows relative path, ANSI
    b"Wi2k": "latin-1",  # deprecated Windows absolute path, ANSI
    b"MacX": "utf-8",  # Mac OS X file URL
}


def checksum(structure: bytes, field_offset: int) -> int:
    """One's complement of the byte sum, skipping the 4-byte checksum field itself."""
    total = sum(structure) - sum(structure[field_offset : field_offset + 4])
    return ~total & 0xFFFFFFFF


class Footer(NamedTuple):
    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    geometry: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int

    @classmethod
    def parse(cls, raw: bytes) -> Footer:
        return cls._make(FOOTER.unpack_from(raw.ljust(FOOTER_SIZE, b"\0")))

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.unique_id)

    @property
    def chs(self) -> tuple[int, int, int]:
        return self.geometry >> 16, (self.geometry >> 8) & 0xFF, self.geometry & 0xFF


class DynamicHeader(NamedTuple):
    cookie: bytes
    data_offset: int
    table_offset: int
    version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_timestamp: int
    parent_name_utf16be: bytes

    @classmethod
    def parse(cls, raw: bytes) -> DynamicHeader:
        return cls._make(DYNAMIC_HEADER.unpack_from(raw))

    @property
    def parent_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.parent_unique_id)

    @property
    def parent_name(self) -> str:
        return self.parent_name_utf16be.decode("utf-16-be", "replace").split("\0", 1)[0]


class ParentLocator(NamedTuple):
    platform_code: bytes
    data_space: int
    data_length: int
    reserved: int
    data_offset: int


def parent_locators(raw_header: bytes) -> list[ParentLocator]:
    return [
        ParentLocator._make(PARENT_LOCATOR.unpack_from(raw_header, PARENT_LOCATORS_OFFSET + i * 24))
        for i in range(PARENT_LOCATOR_COUNT)
    ]


def bitmap_bytes(block_size: int) -> int:
    """Size of the sector bitmap in front of each block: one bit a sector, padded to a sector."""
    bits = -(-block_size // SECTOR)
    return -(-bits // (8 * SECTOR)) * SECTOR
