"""Build differencing VHD files from the Microsoft VHD specification, for what qemu cannot write.

Written from the specification independently of vmforensics.images.vhd; the tests check the
result against libvhdi (pyvhdi) and against the bytes the builder was asked to write.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

SECTOR = 512


def vhd_checksum(raw: bytearray, field: int) -> None:
    raw[field : field + 4] = b"\0\0\0\0"
    raw[field : field + 4] = struct.pack(">I", ~sum(raw) & 0xFFFFFFFF)


def footer_of(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-512, 2)
        return f.read(512)


def build_differencing_vhd(
    path: Path,
    parent: Path,
    writes: dict[int, bytes],
    *,
    block_size: int = 2 << 20,
    relative_locator: str | None = None,
    absolute_locator: str | None = None,
    parent_unique_id: bytes | None = None,
) -> None:
    """A differencing VHD over ``parent`` whose sectors ``writes`` (offset -> bytes) are set.

    Offsets and lengths are multiples of 512. Locators default to the parent's base name (W2ru)
    and ``C:\\VMs\\<name>`` (W2ku).
    """
    parent_footer = footer_of(parent)
    size = struct.unpack_from(">Q", parent_footer, 48)[0]
    sectors_per_block = block_size // SECTOR
    bitmap_size = -(-sectors_per_block // (8 * SECTOR)) * SECTOR
    blocks = -(-size // block_size)

    sectors: dict[int, bytes] = {}
    for offset, payload in writes.items():
        assert offset % SECTOR == 0 and len(payload) % SECTOR == 0
        for i in range(0, len(payload), SECTOR):
            sectors[(offset + i) // SECTOR] = payload[i : i + SECTOR]

    relative = relative_locator if relative_locator is not None else f".\\{parent.name}"
    absolute = absolute_locator if absolute_locator is not None else f"C:\\VMs\\{parent.name}"
    locators = [(b"W2ru", relative.encode("utf-16-le")), (b"W2ku", absolute.encode("utf-16-le"))]

    header_at, locator_at = 512, 1536
    bat_at = locator_at + SECTOR * len(locators)
    bat_bytes = -(-blocks * 4 // SECTOR) * SECTOR
    data_at = bat_at + bat_bytes
    bat = [0xFFFFFFFF] * blocks
    body = bytearray()
    for block in sorted({s // sectors_per_block for s in sectors}):
        bat[block] = (data_at + len(body)) // SECTOR
        bitmap = bytearray(bitmap_size)
        data = bytearray(block_size)
        for s in range(block * sectors_per_block, (block + 1) * sectors_per_block):
            if s in sectors:
                k = s - block * sectors_per_block
                bitmap[k // 8] |= 0x80 >> (k % 8)
                data[k * SECTOR : (k + 1) * SECTOR] = sectors[s]
        body += bitmap + data

    footer = bytearray(parent_footer)
    footer[8:12] = struct.pack(">I", 2)
    footer[16:24] = struct.pack(">Q", header_at)
    footer[28:32] = b"vmft"
    footer[60:64] = struct.pack(">I", 4)
    footer[68:84] = uuid.uuid4().bytes
    vhd_checksum(footer, 64)

    header = bytearray(1024)
    struct.pack_into(
        ">8sQQIIII16sI4x512s",
        header,
        0,
        b"cxsparse",
        0xFFFFFFFFFFFFFFFF,
        bat_at,
        0x00010000,
        blocks,
        block_size,
        0,
        parent_unique_id if parent_unique_id is not None else parent_footer[68:84],
        struct.unpack_from(">I", parent_footer, 24)[0],
        parent.name.encode("utf-16-be"),
    )
    for index, (code, raw) in enumerate(locators):
        struct.pack_into(
            ">4sIIIQ", header, 576 + 24 * index, code, SECTOR, len(raw), 0, locator_at + SECTOR * index
        )
    vhd_checksum(header, 36)

    out = bytearray(footer + header)
    for _, raw in locators:
        out += raw.ljust(SECTOR, b"\0")
    out += b"".join(struct.pack(">I", e) for e in bat).ljust(bat_bytes, b"\xff")
    out += body + footer
    path.write_bytes(out)
