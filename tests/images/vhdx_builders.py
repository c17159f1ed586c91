"""Build VHDX files from [MS-VHDX] for what qemu cannot write: differencing images and dirty logs.

Written from the specification independently of vmforensics.images.vhdx; tests check the result
against libvhdi (pyvhdi), against qemu (which replays a log when it opens a copy read-write) and
against the bytes the builder was asked to store.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import google_crc32c

KiB, MiB = 1024, 1024 * 1024
LOG_AT, METADATA_AT, BAT_AT, PAYLOAD_AT = 1 * MiB, 2 * MiB, 3 * MiB, 4 * MiB
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
SB_PRESENT = 6


def crc32c_into(raw: bytearray, field: int = 4) -> None:
    raw[field : field + 4] = b"\0\0\0\0"
    raw[field : field + 4] = struct.pack("<I", google_crc32c.value(bytes(raw)))


def gbytes(value: str) -> bytes:
    return uuid.UUID(value).bytes_le


def active_data_write_guid(path: Path) -> uuid.UUID:
    """The DataWriteGuid of the header with the higher sequence number (both assumed sound)."""
    with path.open("rb") as f:
        headers = []
        for offset in (64 * KiB, 128 * KiB):
            f.seek(offset)
            raw = f.read(64)
            headers.append((struct.unpack_from("<Q", raw, 8)[0], raw[32:48]))
    return uuid.UUID(bytes_le=max(headers)[1])


def header(sequence: int, log_guid: bytes, data_write_guid: bytes) -> bytes:
    raw = bytearray(4 * KiB)
    struct.pack_into(
        "<4sIQ16s16s16sHHIQ", raw, 0, b"head", 0, sequence, uuid.uuid4().bytes_le, data_write_guid,
        log_guid, 0, 1, 1 * MiB, LOG_AT,
    )  # fmt: skip
    crc32c_into(raw)
    return bytes(raw)


def region_table() -> bytes:
    raw = bytearray(64 * KiB)
    struct.pack_into("<4sIII", raw, 0, b"regi", 0, 2, 0)
    struct.pack_into("<16sQII", raw, 16, gbytes("2DC27766-F623-4200-9D64-115E9BFD4A08"), BAT_AT, 1 * MiB, 1)
    struct.pack_into(
        "<16sQII", raw, 48, gbytes("8B7CA206-4790-4B9A-B8FE-575F050F886E"), METADATA_AT, 1 * MiB, 1
    )
    crc32c_into(raw)
    return bytes(raw)


def metadata(size: int, block_size: int, sector_size: int, locator: dict[str, str] | None) -> bytes:
    items = [
        ("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", struct.pack("<II", block_size, 2 if locator else 0), 0b100),
        ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", struct.pack("<Q", size), 0b110),
        ("BECA12AB-B2E6-4523-93EF-C309E000C746", uuid.uuid4().bytes_le, 0b110),
        ("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", struct.pack("<I", sector_size), 0b110),
        ("CDA348C7-445D-4471-9CC9-E9885251C556", struct.pack("<I", sector_size), 0b110),
    ]
    if locator:
        pairs = [(k.encode("utf-16-le"), v.encode("utf-16-le")) for k, v in locator.items()]
        raw = bytearray(gbytes("B04AEFB7-D19E-4A81-B789-25B8E9445913") + struct.pack("<HH", 0, len(pairs)))
        strings = bytearray()
        at = 20 + 12 * len(pairs)
        for key, value in pairs:
            raw += struct.pack("<IIHH", at + len(strings), at + len(strings) + len(key), len(key), len(value))
            strings += key + value
        items.append(("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", bytes(raw + strings), 0b100))
    region = bytearray(1 * MiB)
    struct.pack_into("<8sHH", region, 0, b"metadata", 0, len(items))
    at = 64 * KiB
    for index, (item, value, flags) in enumerate(items):
        struct.pack_into("<16sIII", region, 32 + 32 * index, gbytes(item), at, len(value), flags)
        region[at : at + len(value)] = value
        at += -(-len(value) // 8) * 8
    return bytes(region)


def log_entry(
    sequence: int,
    tail: int,
    log_guid: bytes,
    writes: list[tuple[int, bytes]],
    zeros: list[tuple[int, int]],
    file_size: int,
) -> bytes:
    """One log entry: data descriptors for 4 KiB ``writes``, zero descriptors, then data sectors."""
    count = len(writes) + len(zeros)
    desc_sectors = 1 + max(0, -(-(count - 126) // 128))
    raw = bytearray((desc_sectors + len(writes)) * 4 * KiB)
    flushed = file_size // MiB * MiB
    struct.pack_into(
        "<4sIIIQII16sQQ", raw, 0, b"loge", 0, len(raw), tail, sequence, count, 0, log_guid, flushed,
        -(-file_size // MiB) * MiB,
    )  # fmt: skip
    at = 64
    for offset, sector in writes:
        assert len(sector) == 4 * KiB and offset % (4 * KiB) == 0
        leading, trailing = struct.unpack_from("<Q", sector)[0], struct.unpack_from("<I", sector, 4092)[0]
        struct.pack_into("<4sIQQQ", raw, at, b"desc", trailing, leading, offset, sequence)
        at += 32
    for offset, length in zeros:
        struct.pack_into("<4sIQQQ", raw, at, b"zero", 0, length, offset, sequence)
        at += 32
    data_at = desc_sectors * 4 * KiB
    for index, (_, sector) in enumerate(writes):
        struct.pack_into(
            "<4sI4084sI", raw, data_at + index * 4 * KiB, b"data", sequence >> 32, sector[8:4092],
            sequence & 0xFFFFFFFF,
        )  # fmt: skip
    crc32c_into(raw)
    return bytes(raw)


class VhdxBuilder:
    """A VHDX being assembled: payload blocks, sector bitmaps, a parent locator, a log."""

    def __init__(self, size: int, *, block_size: int = 1 * MiB, sector_size: int = 512):
        self.size, self.block_size, self.sector_size = size, block_size, sector_size
        self.chunk_ratio = (1 << 23) * sector_size // block_size
        self.payload_blocks = -(-size // block_size)
        self.bat = [0] * ((-(-self.payload_blocks // self.chunk_ratio)) * (self.chunk_ratio + 1))
        self.body = bytearray()
        self.locator: dict[str, str] | None = None
        self.log = bytearray(1 * MiB)
        self.log_guid = bytes(16)
        self.data_write_guid = uuid.uuid4().bytes_le

    def bat_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def _allocate(self, raw: bytes) -> int:
        offset = PAYLOAD_AT + len(self.body)
        self.body += raw
        return offset

    def set_block(self, block: int, state: int, data: bytes | None = None) -> int:
        """Set a payload block's state; with ``data`` (a whole block) store it and return its offset."""
        offset = self._allocate(data.ljust(self.block_size, b"\0")) if data is not None else 0
        self.bat[self.bat_index(block)] = state | (offset // MiB) << 20
        return offset

    def write_sectors(self, writes: dict[int, bytes]) -> None:
        """Differencing writes: whole blocks become fully present, others partially present."""
        per_block = self.block_size // self.sector_size
        sectors: dict[int, bytes] = {}
        for offset, payload in writes.items():
            for i in range(0, len(payload), self.sector_size):
                sectors[(offset + i) // self.sector_size] = payload[i : i + self.sector_size]
        bitmaps: dict[int, bytearray] = {}
        for block in sorted({s // per_block for s in sectors}):
            data = bytearray(self.block_size)
            present = [s for s in range(block * per_block, (block + 1) * per_block) if s in sectors]
            for s in present:
                k = s - block * per_block
                data[k * self.sector_size : (k + 1) * self.sector_size] = sectors[s]
            if len(present) == per_block:
                self.set_block(block, FULLY_PRESENT, bytes(data))
                continue
            self.set_block(block, PARTIALLY_PRESENT, bytes(data))
            chunk = block // self.chunk_ratio
            bitmap = bitmaps.setdefault(chunk, bytearray(1 * MiB))
            base = (block % self.chunk_ratio) * per_block
            for s in present:
                k = base + s - block * per_block
                bitmap[k // 8] |= 1 << (k % 8)
        for chunk, bitmap in bitmaps.items():
            offset = self._allocate(bytes(bitmap))
            self.bat[chunk * (self.chunk_ratio + 1) + self.chunk_ratio] = SB_PRESENT | (offset // MiB) << 20

    def bat_bytes(self) -> bytes:
        return b"".join(struct.pack("<Q", e) for e in self.bat).ljust(1 * MiB, b"\0")

    def file_size(self) -> int:
        return PAYLOAD_AT + len(self.body)

    def build(self, path: Path) -> None:
        out = bytearray(b"vhdxfile" + "vmforensics tests".encode("utf-16-le")).ljust(64 * KiB, b"\0")
        out += header(1, self.log_guid, self.data_write_guid).ljust(64 * KiB, b"\0")
        out += header(2, self.log_guid, self.data_write_guid).ljust(64 * KiB, b"\0")
        out += region_table() + region_table()
        out = out.ljust(LOG_AT, b"\0") + self.log
        out += metadata(self.size, self.block_size, self.sector_size, self.locator)
        out += self.bat_bytes() + self.body
        path.write_bytes(out)


def build_dirty_vhdx(image: Path) -> tuple[Path, bytes]:
    """A VHDX whose on-disk BAT is stale; its log holds the BAT updates (and an older, stale entry)."""
    builder = VhdxBuilder(8 * MiB)
    block0, block1 = bytes(range(256)) * 4096, b"\x77" * MiB
    builder.set_block(0, FULLY_PRESENT, block0)
    first = builder.bat_bytes()[: 4 * KiB]
    offset1 = builder.set_block(1, FULLY_PRESENT, block1)
    final = builder.bat_bytes()[: 4 * KiB]
    builder.set_block(2, FULLY_PRESENT, b"\x99" * MiB)
    stale = builder.bat_bytes()[: 4 * KiB]  # only an entry older than the active sequence says this
    builder.bat = [0] * len(builder.bat)  # what reached the file before the "power failure"
    log_guid = uuid.uuid4().bytes_le
    builder.log_guid = log_guid
    size = builder.file_size()
    one = log_entry(10, 0, log_guid, [(BAT_AT, first)], [], size)
    two = log_entry(11, 0, log_guid, [(BAT_AT, final)], [(offset1 + 8 * KiB, 4 * KiB)], size)
    old = log_entry(3, len(one) + len(two), log_guid, [(BAT_AT, stale)], [], size)
    entries = one + two + old
    builder.log[: len(entries)] = entries
    builder.build(image)
    replayed = bytearray(8 * MiB)
    replayed[:MiB] = block0
    replayed[MiB : 2 * MiB] = block1
    replayed[MiB + 8 * KiB : MiB + 12 * KiB] = bytes(4 * KiB)
    return image, bytes(replayed)
