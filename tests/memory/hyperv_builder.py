"""Spec-built HyperVStorage files (.vmrs), written from openvmm's support/hvs_file/FORMAT.md and
the saved-state key schema its hyperv_dump crate writes (no real Hyper-V sample is public).

The writer is deliberately independent of vmforensics/memory/hyperv_storage.py: it lays out
headers, one object table, 4096-byte key tables and 1 MiB file objects exactly as the document
says, with CRC-32 checksums, and lets a test break any field afterwards.
"""

from __future__ import annotations

import struct
import zlib

import attrs

ALIGN = 4096
DATA_BLOCK = 1 << 20
KEY_HEADER = 21
INT, UINT, STRING, ARRAY, BOOL, NODE = 3, 4, 6, 7, 8, 9


def checksum(data: bytes, at: int) -> int:
    return zlib.crc32(data[:at] + b"\0\0\0\0" + data[at + 4 :])


@attrs.define
class Layout:
    """Where the builder put things, for tests that break them."""

    data: bytearray
    object_table: int
    key_tables: list[int]
    file_objects: dict[str, int]  # key path -> offset of its file object
    entries: dict[str, int]  # key path -> offset of its key entry


def _value(kind: int, value) -> bytes:
    if kind == INT:
        return struct.pack("<q", value)
    if kind == UINT:
        return struct.pack("<Q", value)
    if kind == BOOL:
        return struct.pack("<i", int(value))
    if kind == STRING:
        raw = value.encode("utf-16-le")
        return struct.pack("<I", len(raw)) + raw
    return struct.pack("<I", len(value)) + value


def build(keys: list[tuple[str, int, object]], *, version: int = 0x0400, replay_entries: int = 0) -> Layout:
    """A container holding ``keys`` ((path, type, value), parents first; nodes are implied)."""
    nodes: dict[str, None] = {}
    flat: list[tuple[str, int, object]] = []
    for path, kind, value in keys:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            node = "/" + "/".join(parts[:depth])
            if node not in nodes:
                nodes[node] = None
                flat.append((node, NODE, None))
        flat.append((path, kind, value))
    # Lay out: headers 0-8191, object table 8192, file objects, key tables, replay log.
    big = [(p, v) for p, k, v in flat if k in (ARRAY, STRING) and len(_value(k, v)) - 4 >= 2048]
    at = 3 * ALIGN
    file_objects: dict[str, int] = {}
    for path, value in big:
        raw = value if isinstance(value, bytes) else value.encode("utf-16-le")
        file_objects[path] = at
        at += -(-len(raw) // ALIGN) * ALIGN
    # Key entries, packed into 4096-byte tables.
    tables: list[bytearray] = [bytearray(10)]
    where: dict[str, tuple[int, int]] = {}
    entry_at: dict[str, tuple[int, int]] = {}
    sequence: dict[str, int] = {}
    for path, kind, value in flat:
        parent = path.rsplit("/", 1)[0]
        name = path.rsplit("/", 1)[1].encode() + b"\0"
        parent_table, parent_offset = where.get(parent, (0, 0))
        sequence[parent] = sequence.get(parent, 0) + 1
        flags = 0
        if kind == NODE:
            data = struct.pack("<QI", 0, 1)
        elif path in file_objects:
            raw = value if isinstance(value, bytes) else value.encode("utf-16-le")
            flags, data = 1, struct.pack("<IQ", len(raw), file_objects[path])
        else:
            data = _value(kind, value)
        size = KEY_HEADER + len(name) + len(data)
        if len(tables[-1]) + size > ALIGN - KEY_HEADER - 1:
            tables.append(bytearray(10))
        table = tables[-1]
        header = struct.pack(
            "<BBIHIIIB", kind, flags, size, parent_table, parent_offset, 0, sequence[parent], len(name)
        )
        entry = header + name + data
        entry = entry[:12] + struct.pack("<I", zlib.crc32(entry)) + entry[16:]
        offset = len(table)
        if kind == NODE:
            where[path] = (len(tables), offset)
        entry_at[path] = (len(tables) - 1, offset)
        table += entry
    key_tables = []
    for index, table in enumerate(tables, start=1):
        left = ALIGN - len(table)
        if left:  # a Free entry fills the rest (FORMAT.md: entries exactly fill the table)
            table += struct.pack("<BBIHIIIB", 1, 0, left, 0, 0, 0, 0, 0) + bytes(left - KEY_HEADER)
        header = struct.pack("<HHHI", 2, index, 1, 0)
        table[:10] = header[:6] + struct.pack("<I", checksum(header, 6))
        key_tables.append(at)
        at += ALIGN
    replay = at
    at += ALIGN
    out = bytearray(at)
    for path, value in big:
        raw = value if isinstance(value, bytes) else value.encode("utf-16-le")
        out[file_objects[path] : file_objects[path] + len(raw)] = raw
    for offset, table in zip(key_tables, tables, strict=True):
        out[offset : offset + ALIGN] = table
    objects = [
        (3, file_objects[p], -(-len(v if isinstance(v, bytes) else v.encode("utf-16-le")) // ALIGN) * ALIGN)
        for p, v in big
    ]
    objects += [(2, offset, ALIGN) for offset in key_tables]
    objects.append((0, 0, 0))  # the chain slot: no further table
    table = struct.pack("<II", 0x01110001, len(objects))
    for kind, offset, length in objects:
        entry = struct.pack("<BIQIB", kind, 0, offset, length, 1)
        table += entry[:1] + struct.pack("<I", checksum(entry, 1)) + entry[5:]
    assert len(table) <= ALIGN
    out[2 * ALIGN : 2 * ALIGN + len(table)] = table
    log = struct.pack("<IIIBIBQII", 0x01110003, 0, replay_entries, 0, 145, 0, 0, 0, 0)
    out[replay : replay + len(log)] = log[:4] + struct.pack("<I", checksum(log, 4)) + log[8:]
    for sequence_number, copy in ((1, 0), (0, ALIGN)):
        header = struct.pack(
            "<IIHIIIIQQI", 0x01282014, 0, sequence_number, version, 0, 0, ALIGN, replay, ALIGN, ALIGN
        )
        out[copy : copy + len(header)] = header[:4] + struct.pack("<I", checksum(header, 4)) + header[8:]
    entries = {p: key_tables[t] + o for p, (t, o) in entry_at.items()}
    return Layout(out, 2 * ALIGN, key_tables, file_objects, entries)


def saved_state(
    ranges: list[tuple[int, bytes]], *, vm_version: int = 0x0A00, block_of=None, flags: int = 0
) -> Layout:
    """A .vmrs as openvmm's VmrsWriter writes it: ranges of (guest-physical start, bytes), each
    split into 1 MiB RamBlocks (the last zero-filled), one RamMemoryBlock per range.
    ``block_of(number, data)`` may replace a RamBlock's bytes (e.g. with a short, "compressed" one)."""
    keys: list[tuple[str, int, object]] = [
        ("/savedstate/VmVersion", INT, vm_version),
        ("/configuration/properties/version", INT, vm_version),
        ("/savedstate/type", STRING, "Normal"),
        ("/savedstate/savedVM/partition_state", ARRAY, b"\x01partition state not parsed"),
    ]
    block = 0
    data_keys = []
    for number, (start, memory) in enumerate(ranges):
        pages = len(memory) // 4096
        meta = struct.pack("<IIQQQIIQ", 3, flags, pages, block * 256, start // 4096, 0, 0, 0)
        keys.append((f"/savedstate/RamMemoryBlock{number}", ARRAY, meta))
        for at in range(0, len(memory), DATA_BLOCK):
            piece = memory[at : at + DATA_BLOCK].ljust(DATA_BLOCK, b"\0")
            if block_of is not None:
                piece = block_of(block, piece)
            data_keys.append((f"/savedstate/RamBlock{block}", ARRAY, piece))
            block += 1
    return build(keys + data_keys)
