"""VDI images qemu-img cannot write (differencing images, header version 0.0, crafted maps),
built field by field from VirtualBox's VDICore.h."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from vmforensics.images import vdi_layout as v

FREE, ZERO = v.BLOCK_FREE, v.BLOCK_ZERO
NIL = uuid.UUID(int=0)
FILE_INFO = b"<<< Oracle VM VirtualBox Disk Image >>>\n"


def header_of(path: Path) -> v.Header:
    return v.decode_header(path.read_bytes()[: v.HEADER_READ])


def build_vdi(
    path: Path,
    size: int,
    blocks: dict[int, bytes | int],
    *,
    image_type: int = v.ImageType.NORMAL,
    block_size: int = 1 << 20,
    uuid_create: uuid.UUID | None = None,
    uuid_linkage: uuid.UUID = NIL,
    uuid_parent_modify: uuid.UUID = NIL,
    version: int = v.VERSION_1_1,
    block_extra: int = 0,
) -> uuid.UUID:
    """Write a VDI whose block ``i`` holds ``blocks[i]`` (bytes, stored in reverse order so map
    and file order differ), or is ZERO/FREE; every other block is FREE. Returns its UUID."""
    uuid_create = uuid_create or uuid.uuid4()
    uuid_modify = uuid.uuid4()
    count = -(-size // block_size)
    table = [FREE] * count
    stored: list[bytes] = []
    for index in sorted(blocks, reverse=True):
        payload = blocks[index]
        if isinstance(payload, int):
            table[index] = payload
            continue
        table[index] = len(stored)
        stored.append(payload.ljust(block_size, b"\0"))
    pre = v.PREHEADER.pack(FILE_INFO.ljust(64, b"\0"), v.SIGNATURE, version)
    if version >> 16 == 0:
        header = v.HEADER_0.pack(
            image_type, 0, b"built from VDICore.h", 0, 0, 0, 512, size, block_size, count, len(stored),
            uuid_create.bytes_le, uuid_modify.bytes_le, uuid_linkage.bytes_le,
        )  # fmt: skip
        blocks_offset = len(pre) + len(header)
        data_offset = blocks_offset + 4 * count
        head = pre + header
    else:
        blocks_offset = 512
        data_offset = -(-(blocks_offset + 4 * count) // 512) * 512
        header = v.HEADER_1.pack(
            400, image_type, 0, b"built from VDICore.h", blocks_offset, data_offset, 0, 0, 0, 512, 0, size,
            block_size, block_extra, count, len(stored), uuid_create.bytes_le, uuid_modify.bytes_le,
            uuid_linkage.bytes_le, uuid_parent_modify.bytes_le,
        )  # fmt: skip
        head = (pre + header + struct.pack("<4I", 0, 0, 0, 512)).ljust(blocks_offset, b"\0")
    with path.open("wb") as f:
        f.write(head)
        f.write(struct.pack(f"<{count}I", *table))
        f.seek(data_offset)
        for payload in stored:
            f.write(b"\xee" * block_extra + payload)
    return uuid_create
