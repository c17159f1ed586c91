"""A minimal VHDX differencing-disk writer for the Hyper-V lab (qemu-img cannot write one).

Built from Microsoft's VHDX Format Specification v1.00 and written independently of
vmforensics/images/vhdx*.py: file identifier, two headers, two region tables, a metadata region
(file parameters with HasParent, size, page 83 id, sector sizes, parent locator), a BAT with one
sector-bitmap entry after every chunk of payload entries, PARTIALLY_PRESENT payload blocks and
their sector bitmaps. libvhdi (pyvhdi) reads the result as the independent check.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import google_crc32c

MiB = 1 << 20
BLOCK_SIZE = 1 * MiB
SECTOR = 512
CHUNK_RATIO = (1 << 23) * SECTOR // BLOCK_SIZE  # payload blocks described by one sector bitmap block

BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

PAYLOAD_PARTIALLY_PRESENT = 7
SB_BLOCK_PRESENT = 6

LOG_OFFSET, METADATA_OFFSET, BAT_OFFSET, DATA_OFFSET = 1 * MiB, 2 * MiB, 3 * MiB, 4 * MiB


def _crc_into(buffer: bytearray, at: int) -> None:
    struct.pack_into("<I", buffer, at, 0)
    struct.pack_into("<I", buffer, at, google_crc32c.value(bytes(buffer)))


def data_write_guid(path: str | Path) -> uuid.UUID:
    """The DataWriteGuid of a VHDX (from its current header), which a child's parent_linkage names."""
    with open(path, "rb") as handle:
        best: tuple[int, uuid.UUID] | None = None
        for offset in (64 * 1024, 128 * 1024):
            handle.seek(offset)
            raw = bytearray(handle.read(4096))
            if raw[:4] != b"head":
                continue
            stored = struct.unpack_from("<I", raw, 4)[0]
            struct.pack_into("<I", raw, 4, 0)
            if google_crc32c.value(bytes(raw)) != stored:
                continue
            sequence = struct.unpack_from("<Q", raw, 8)[0]
            guid = uuid.UUID(bytes_le=bytes(raw[32:48]))
            if best is None or sequence > best[0]:
                best = (sequence, guid)
    if best is None:
        raise ValueError(f"{path}: no valid VHDX header")
    return best[1]


def _parent_locator(parent_guid: uuid.UUID, relative: str, absolute: str) -> bytes:
    pairs = [
        ("parent_linkage", "{" + str(parent_guid) + "}"),
        ("relative_path", relative),
        ("absolute_win32_path", absolute),
    ]
    header_size = 20 + 12 * len(pairs)
    entries, blob = b"", b""
    for key, value in pairs:
        key_raw, value_raw = key.encode("utf-16-le"), value.encode("utf-16-le")
        key_at = header_size + len(blob)
        blob += key_raw
        value_at = header_size + len(blob)
        blob += value_raw
        entries += struct.pack("<IIHH", key_at, value_at, len(key_raw), len(value_raw))
    return VHDX_LOCATOR_TYPE.bytes_le + struct.pack("<HH", 0, len(pairs)) + entries + blob


def write_differencing(
    path: str | Path,
    *,
    size: int,
    parent: str | Path,
    parent_absolute_path: str,
    changes: dict[int, bytes] | None = None,
) -> None:
    """Write a differencing VHDX of ``size`` bytes over ``parent`` holding ``changes``.

    ``changes`` maps sector-aligned virtual offsets to sector-multiple data; every other sector
    reads from the parent.
    """
    assert size % BLOCK_SIZE == 0
    parent_guid = data_write_guid(parent)
    relative = ".\\" + Path(parent).name
    blocks = size // BLOCK_SIZE
    bitmap_blocks = -(-blocks // CHUNK_RATIO)
    entries = bitmap_blocks * (CHUNK_RATIO + 1)
    bat_length = -(-entries * 8 // MiB) * MiB

    # Which sectors change, grouped by payload block.
    per_block: dict[int, dict[int, bytes]] = {}
    for offset, data in (changes or {}).items():
        assert offset % SECTOR == 0 and len(data) % SECTOR == 0
        for at in range(0, len(data), SECTOR):
            sector = (offset + at) // SECTOR
            block, index = divmod(sector * SECTOR, BLOCK_SIZE)
            per_block.setdefault(block, {})[index // SECTOR] = data[at : at + SECTOR]

    bat = bytearray(bat_length)
    next_offset = DATA_OFFSET
    payloads: list[tuple[int, bytes]] = []
    bitmaps: dict[int, bytearray] = {}
    for block in sorted(per_block):
        content = bytearray(BLOCK_SIZE)
        chunk = block // CHUNK_RATIO
        bitmap = bitmaps.setdefault(chunk, bytearray(MiB))
        for sector, data in per_block[block].items():
            content[sector * SECTOR : (sector + 1) * SECTOR] = data
            bit = (block % CHUNK_RATIO) * (BLOCK_SIZE // SECTOR) + sector
            bitmap[bit // 8] |= 1 << (bit % 8)
        entry = block + block // CHUNK_RATIO
        struct.pack_into("<Q", bat, entry * 8, PAYLOAD_PARTIALLY_PRESENT | (next_offset // MiB) << 20)
        payloads.append((next_offset, bytes(content)))
        next_offset += BLOCK_SIZE
    for chunk, bitmap in sorted(bitmaps.items()):
        entry = (chunk + 1) * (CHUNK_RATIO + 1) - 1
        struct.pack_into("<Q", bat, entry * 8, SB_BLOCK_PRESENT | (next_offset // MiB) << 20)
        payloads.append((next_offset, bytes(bitmap)))
        next_offset += MiB

    locator = _parent_locator(parent_guid, relative, parent_absolute_path)
    items = [
        (FILE_PARAMETERS, struct.pack("<II", BLOCK_SIZE, 0b10), 0b100),  # HasParent; IsRequired
        (VIRTUAL_DISK_SIZE, struct.pack("<Q", size), 0b110),
        (PAGE83, uuid.uuid4().bytes_le, 0b110),
        (LOGICAL_SECTOR, struct.pack("<I", SECTOR), 0b110),
        (PHYSICAL_SECTOR, struct.pack("<I", 4096), 0b110),
        (PARENT_LOCATOR, locator, 0b100),
    ]
    metadata = bytearray(MiB)
    metadata[0:8] = b"metadata"
    struct.pack_into("<HH", metadata, 8, 0, len(items))
    data_at = 64 * 1024
    for index, (item_id, value, flags) in enumerate(items):
        struct.pack_into("<16sIII4x", metadata, 32 + 32 * index, item_id.bytes_le, data_at, len(value), flags)
        metadata[data_at : data_at + len(value)] = value
        data_at += -(-len(value) // 4096) * 4096 + 4096

    region = bytearray(64 * 1024)
    region[0:4] = b"regi"
    struct.pack_into("<I", region, 8, 2)
    struct.pack_into("<16sQII", region, 16, BAT_GUID.bytes_le, BAT_OFFSET, bat_length, 1)
    struct.pack_into("<16sQII", region, 48, METADATA_GUID.bytes_le, METADATA_OFFSET, MiB, 1)
    _crc_into(region, 4)

    file_write, data_write = uuid.uuid4(), uuid.uuid4()
    with open(path, "wb") as out:
        identifier = bytearray(64 * 1024)
        identifier[0:8] = b"vhdxfile"
        creator = "vmforensics test lab".encode("utf-16-le")
        identifier[8 : 8 + len(creator)] = creator
        out.write(identifier)
        for sequence in (1, 2):
            header = bytearray(4096)
            header[0:4] = b"head"
            struct.pack_into("<Q", header, 8, sequence)
            header[16:32] = file_write.bytes_le
            header[32:48] = data_write.bytes_le
            # LogGuid all zero: no log to replay. LogVersion 0, Version 1.
            struct.pack_into("<HHIQ", header, 64, 0, 1, MiB, LOG_OFFSET)
            _crc_into(header, 4)
            out.write(header + bytes(64 * 1024 - 4096))
        out.write(region)
        out.write(region)
        out.seek(LOG_OFFSET)
        out.write(bytes(MiB))
        out.seek(METADATA_OFFSET)
        out.write(metadata)
        out.seek(BAT_OFFSET)
        out.write(bat)
        for offset, payload in payloads:
            out.seek(offset)
            out.write(payload)
        out.truncate(max(next_offset, BAT_OFFSET + bat_length))
