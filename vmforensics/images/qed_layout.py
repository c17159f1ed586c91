"""On-disk structures of QEMU Enhanced Disk (QED) images; all fields little-endian.

Reference: qemu's docs/interop/qed_spec.txt and block/qed.h.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"QED\0"
#: magic, cluster_size, table_size (clusters), header_size (clusters), features, compat_features,
#: autoclear_features, l1_table_offset, image_size, backing_filename_offset, backing_filename_size
HEADER = struct.Struct("<4sIIIQQQQQII")

F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04  # the backing file is raw: do not probe its format
KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE

MIN_CLUSTER_SIZE = 4 << 10
MAX_CLUSTER_SIZE = 64 << 20
MAX_TABLE_SIZE = 16  # clusters per table

UNALLOCATED = 0  # table entry: not in this image (the backing file's bytes, else zeros)
ZERO_CLUSTER = 1  # L2 entry: reads as zeros


class Header(NamedTuple):
    magic: bytes
    cluster_size: int
    table_size: int
    header_size: int
    features: int
    compat_features: int
    autoclear_features: int
    l1_table_offset: int
    image_size: int
    backing_filename_offset: int
    backing_filename_size: int

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        return cls._make(HEADER.unpack_from(raw))
