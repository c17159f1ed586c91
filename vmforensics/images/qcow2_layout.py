"""qcow2 on-disk structures (QEMU docs/interop/qcow2.txt): header, extensions, L1/L2, snapshots.

Every number in qcow2 is big-endian. This module only declares layouts and decodes them into
plain values; :mod:`vmforensics.images.qcow2` holds the reading logic.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

MAGIC = b"QFI\xfb"

#: Version 2 header (72 bytes); version 3 appends the feature words, refcount order and length.
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
HEADER_V3_TAIL = struct.Struct(">QQQII")  # at offset 72
V2_HEADER_LENGTH = HEADER_V2.size
V3_MIN_HEADER_LENGTH = V2_HEADER_LENGTH + HEADER_V3_TAIL.size  # 104
COMPRESSION_TYPE_OFFSET = 104

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
MAX_BACKING_NAME = 1023
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA = 1024  # QEMU's own limit on a snapshot entry's extra data

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)
INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type", 4: "extended L2"}

COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1
CRYPT_METHODS = {1: "AES-CBC", 2: "LUKS"}

# Header extension types.
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_DATA_FILE = 0x44415441
EXTENSION = struct.Struct(">II")
FEATURE_NAME = struct.Struct(">BB46s")
FEATURE_TYPES = {0: "incompatible", 1: "compatible", 2: "autoclear"}

# Table entries.
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_COMPRESSED = 1 << 62
L2_COPIED = 1 << 63
L2_ZERO = 1 << 0
SUBCLUSTERS = 32

SNAPSHOT = struct.Struct(">QIHHIIQII")  # 40 bytes, then extra data, id string, name, padding to 8
SNAPSHOT_EXTRA = struct.Struct(">QQ")  # vm_state_size_large, disk_size


class Header(NamedTuple):
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = COMPRESSION_ZLIB


class Snapshot(NamedTuple):
    id: str
    name: str
    date: int  # seconds since the epoch (UTC)
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    l1_size: int
    l1_table_offset: int


def decode_header(raw: bytes) -> Header:
    """Decode the fixed header from its first bytes (at least 72, or 112 for version 3)."""
    fields = HEADER_V2.unpack_from(
        raw
    )  # magic, version .. l1_table_offset, refcount table (2), snapshots (2)
    header = Header(*fields[1:9], *fields[11:13])
    if header.version < 3 or len(raw) < V3_MIN_HEADER_LENGTH:
        return header
    incompatible, compatible, autoclear, refcount_order, header_length = HEADER_V3_TAIL.unpack_from(
        raw, V2_HEADER_LENGTH
    )
    # a header that claims more than the file holds has no compression byte to read
    compression = raw[COMPRESSION_TYPE_OFFSET] if header_length > COMPRESSION_TYPE_OFFSET < len(raw) else 0
    return header._replace(
        incompatible=incompatible,
        compatible=compatible,
        autoclear=autoclear,
        refcount_order=refcount_order,
        header_length=header_length,
        compression_type=compression,
    )


def read_snapshot(read_at: Callable[[int, int], bytes], offset: int) -> tuple[Snapshot, int]:
    """Decode the snapshot table entry at ``offset`` via ``read_at(offset, length)``.

    Returns the entry and the offset of the next one (entries are padded to 8 bytes).
    """
    (l1_off, l1_size, id_size, name_size, date, date_nsec, vm_clock, vm_state, extra_size) = SNAPSHOT.unpack(
        read_at(offset, SNAPSHOT.size)
    )
    pos = offset + SNAPSHOT.size
    if extra_size > MAX_SNAPSHOT_EXTRA:
        raise ValueError(f"snapshot extra data of {extra_size} bytes exceeds {MAX_SNAPSHOT_EXTRA}")
    rest = read_at(pos, extra_size + id_size + name_size)
    disk_size: int | None = None
    if extra_size >= SNAPSHOT_EXTRA.size:
        vm_state_large, disk_size = SNAPSHOT_EXTRA.unpack_from(rest)
        vm_state = vm_state_large or vm_state
    elif extra_size >= 8:
        vm_state = struct.unpack_from(">Q", rest)[0] or vm_state
    ident = rest[extra_size : extra_size + id_size].decode("utf-8", "replace")
    name = rest[extra_size + id_size :].decode("utf-8", "replace")
    entry = Snapshot(ident, name, date, date_nsec, vm_clock, vm_state, disk_size, l1_size, l1_off)
    end = pos + len(rest)
    return entry, (end + 7) & ~7
