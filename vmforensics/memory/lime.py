"""LiME images as guest memory: a 32-byte header per range (magic "EMiL", version 1, first and
last guest-physical address, reserved), each followed by the range's bytes; ranges ascend.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from vmforensics.errors import MemoryFormatError
from vmforensics.memory.base import PAGE, Extents, GuestMemory, MemoryInfo, MemoryRange

HEADER = struct.Struct("<IIQQQ")
MAGIC = 0x4C694D45
VERSION = 1


def is_lime(head: bytes) -> bool:
    return len(head) >= 8 and struct.unpack_from("<II", head) == (MAGIC, VERSION)


def header(start: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, start, start + length - 1, 0)


def open_lime(path: Path) -> GuestMemory:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        extents, ranges, offset = Extents(PAGE), [], 0
        while offset < size:
            raw = os.pread(fd, HEADER.size, offset)
            if len(raw) != HEADER.size:
                raise MemoryFormatError("the file ends inside a LiME header", offset=offset, path=str(path))
            magic, version, start, last, _reserved = HEADER.unpack(raw)
            if magic != MAGIC or version != VERSION:
                raise MemoryFormatError(
                    f"bad LiME header (magic 0x{magic:x}, version {version})", offset=offset, path=str(path)
                )
            length = last - start + 1
            if last < start or (ranges and start < ranges[-1].end):
                raise MemoryFormatError(
                    f"LiME range 0x{start:x}-0x{last:x} is empty or not ascending",
                    offset=offset,
                    path=str(path),
                )
            if offset + HEADER.size + length > size:
                raise MemoryFormatError(
                    f"LiME range 0x{start:x}-0x{last:x} runs past the end of the file",
                    offset=offset,
                    path=str(path),
                )
            ranges.append(MemoryRange(start, length, f"range{len(ranges)}"))
            extents.add(start, length, offset + HEADER.size)
            offset += HEADER.size + length
        if not ranges:
            raise MemoryFormatError("the LiME file is empty", offset=0, path=str(path))
        info = MemoryInfo(
            format="lime",
            page_size=PAGE,
            memory_size=sum(r.length for r in ranges),
            ranges=tuple(ranges),
            sources=(str(path),),
        )
        return GuestMemory(path=path, info_=info, extents=extents, fd=fd)
    except BaseException:
        os.close(fd)
        raise
