"""On-disk structures of QEMU qcow version 1 images; all fields big-endian.

Reference: qemu's block/qcow.c (QCowHeader) and the qcow format notes in libyal/libqcow.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"QFI\xfb"
VERSION = 1
#: magic, version, backing_file_offset, backing_file_size, mtime, size, cluster_bits, l2_bits,
#: padding, crypt_method, l1_table_offset
HEADER = struct.Struct(">4sIQIIQBBHIQ")

CRYPT_NONE = 0
CRYPT_AES = 1
COMPRESSED = 1 << 63  # L2 entry: a deflate-compressed cluster
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 16


class Header(NamedTuple):
    magic: bytes
    version: int
    backing_file_offset: int
    backing_file_size: int
    mtime: int
    size: int
    cluster_bits: int
    l2_bits: int
    padding: int
    crypt_method: int
    l1_table_offset: int

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        return cls._make(HEADER.unpack_from(raw))


def compressed_location(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(file offset, stored size) of a compressed cluster's L2 entry."""
    shift = 63 - cluster_bits
    return entry & ((1 << shift) - 1), (entry >> shift) & ((1 << cluster_bits) - 1)
