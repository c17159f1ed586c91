"""On-disk structures of Apple sparse image format (ASIF) disks, macOS 26; all fields big-endian.

Apple publishes no specification. The layout here follows the one public description,
dissect.hypervisor's disk/asif.py (from reversing macOS's diskimagescontroller); docs/formats.md
says what of it is proven and what is not.
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

MAGIC = b"shdw"
META_MAGIC = b"meta"
#: signature, version, header_size, flags, directory_offsets[2], guid, sector_count,
#: max_sector_count, chunk_size, block_size, total_segments, metadata_chunk, 16 unknown bytes,
#: read_only_flags, metadata_flags, metadata_read_only_flags
HEADER = struct.Struct(">4sIIIQQ16sQQIHHQ16sIII")
#: signature, version, header_size, data_size, unknown
META_HEADER = struct.Struct(">4sIIQQ")
DIRECTORY_VERSION = struct.Struct(">Q")  # a directory's version, then its table chunk numbers

ENTRY_CHUNK_MASK = (1 << 55) - 1  # data entry: the chunk number; the top 9 bits are flags
ENTRY_DIRTY = 1 << 62
CONTENT_DIRTY = 1 << 63


class Header(NamedTuple):
    signature: bytes
    version: int
    header_size: int
    flags: int
    directory_offset_0: int
    directory_offset_1: int
    guid: bytes
    sector_count: int
    max_sector_count: int
    chunk_size: int
    block_size: int
    total_segments: int
    metadata_chunk: int
    unknown: bytes
    read_only_flags: int
    metadata_flags: int
    metadata_read_only_flags: int

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        return cls._make(HEADER.unpack_from(raw))

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.guid)


class Geometry(NamedTuple):
    """How tables divide the disk (the arithmetic diskimagescontroller uses, per dissect)."""

    blocks_per_chunk: int
    reserved_per_group: int  # data entries after which a table keeps one entry for other use
    table_entries: int  # entries in one table
    data_per_table: int  # data entries in one table
    bytes_per_table: int  # guest bytes one table covers
    directory_entries: int  # tables in a directory, enough for the maximum size

    @classmethod
    def of(cls, chunk_size: int, block_size: int, max_size: int) -> Geometry:
        blocks_per_chunk = chunk_size // block_size
        reserved_size = 4 * chunk_size
        group = 1 if reserved_size < blocks_per_chunk else reserved_size // blocks_per_chunk
        most = chunk_size >> 3
        entries = most - most % (group + 1)
        data_entries = entries - (group + entries) // (group + 1)
        per_table = data_entries * chunk_size
        directory = -(-max_size // per_table) if per_table > 0 else 0
        return cls(blocks_per_chunk, group, entries, data_entries, per_table, directory)

    def data_index(self, chunk_in_table: int) -> int:
        """The table entry of the ``chunk_in_table``-th data chunk a table covers."""
        return chunk_in_table + chunk_in_table // self.reserved_per_group
