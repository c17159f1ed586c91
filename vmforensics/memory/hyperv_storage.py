"""The HyperVStorage container of Hyper-V's .vmrs / .vmcx / .vsv files, read-only and strict.

Layout as Microsoft's openvmm describes and writes it (support/hvs_file/FORMAT.md and
src/defs.rs; dissect.hypervisor's c_hyperv agrees on every field both name). Little-endian,
packed. Two 46-byte file headers at 0 and 4096 (signature 0x01282014, CRC-32 with the checksum
zeroed; the valid copy with the higher sequence wins, equal sequences are corrupt). Object
tables from 8192: signature 0x01110001, a count, then 18-byte entries (type, CRC-32, offset,
size, flags) whose last slot chains to the next table. Key tables (signature 2, index,
sequence, CRC-32 of the 10-byte header) hold packed entries: a 21-byte header (type, flags,
size, parent table and offset, CRC-32 of header + name + data, insertion sequence, name
length), a NUL-terminated UTF-8 name, then the value; flag 0x01 makes the value a
{u32 size, u64 offset} pointer to a file object (raw bytes at an aligned offset).

Every checksum is verified, every offset bounded by the file, every parent link followed with
a cycle check. An outstanding replay log (uncommitted changes) is reported, never applied.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import attrs

from vmforensics.errors import MemoryFormatError

SIGNATURE = 0x01282014
OBJECT_TABLE_SIGNATURE = 0x01110001
KEY_TABLE_SIGNATURE = 0x0002
REPLAY_LOG_SIGNATURE = 0x01110003
HEADER_COPIES = (0, 4096)
FIRST_OBJECT_TABLE = 8192

FILE_HEADER = struct.Struct("<IIHIIIIQQI")  # 46 bytes
OBJECT_TABLE = struct.Struct("<II")
OBJECT_ENTRY = struct.Struct("<BIQIB")  # 18 bytes
KEY_TABLE = struct.Struct("<HHHI")  # 10 bytes
KEY_ENTRY = struct.Struct("<BBIHIIIB")  # 21 bytes
REPLAY_LOG = struct.Struct("<IIIBIBQII")  # 34 bytes
FILE_OBJECT = struct.Struct("<IQ")

OBJ_EMPTY, OBJ_TABLE, OBJ_KEY_TABLE, OBJ_FILE, OBJ_FREE = range(5)
KEY_FREE, KEY_INT, KEY_UINT, KEY_DOUBLE, KEY_STRING, KEY_ARRAY, KEY_BOOL, KEY_NODE = 1, 3, 4, 5, 6, 7, 8, 9
TYPE_NAMES = {
    KEY_INT: "int", KEY_UINT: "uint", KEY_DOUBLE: "double", KEY_STRING: "string",
    KEY_ARRAY: "array", KEY_BOOL: "bool", KEY_NODE: "node",
}  # fmt: skip
FIXED_SIZES = {KEY_INT: 8, KEY_UINT: 8, KEY_DOUBLE: 8, KEY_BOOL: 4, KEY_NODE: 12}
FLAG_FILE_OBJECT = 0x01
#: Format versions openvmm documents with the layout above (4.0 is current; 3.1 fixed the object
#: entry checksum, so older versions are refused rather than checked wrongly).
VERSIONS = {0x0301: "3.1", 0x0400: "4.0"}
#: Key tables are 4096 bytes by default; all of them together are read into memory.
MAX_KEY_TABLE = 1 << 20
MAX_KEY_BYTES = 64 << 20
MAX_OBJECT_TABLES = 4096


@attrs.frozen
class Key:
    """One key: its full path, type, and where its value lies (``offset`` in the file, ``size``
    bytes; ``in_file_object``: the value is a file object rather than inline in a key table)."""

    path: str
    type: int
    offset: int
    size: int
    in_file_object: bool
    entry_offset: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


@attrs.define
class Container:
    """A parsed HyperVStorage file: its header facts, keys by path, file objects by offset."""

    path: Path
    fd: int
    file_size: int
    version: int
    sequence: int
    alignment: int
    replay_entries: int
    keys: dict[str, Key]
    file_objects: dict[int, int]  # offset -> aligned size from the object table

    def value(self, key: Key) -> bytes:
        """The value's bytes (an array's or string's without its length prefix)."""
        return _pread(self, key.offset, key.size, f"the value of {key.path}")

    def integer(self, path: str) -> int | None:
        key = self.keys.get(path)
        if key is None:
            return None
        if key.type not in (KEY_INT, KEY_UINT):
            raise MemoryFormatError(
                f"{path} is a {key.type_name}, not an integer", offset=key.entry_offset, path=str(self.path)
            )
        return struct.unpack("<q" if key.type == KEY_INT else "<Q", self.value(key))[0]

    def string(self, path: str) -> str | None:
        key = self.keys.get(path)
        if key is None or key.type != KEY_STRING:
            return None
        return self.value(key).decode("utf-16-le", "replace").rstrip("\0")

    def facts(self) -> dict[str, object]:
        """What the container holds, for ``memory info``: version, keys (path -> type and size)."""
        return {
            "container": "HyperVStorage",
            "container_version": VERSIONS[self.version],
            "header_sequence": self.sequence,
            "data_alignment": self.alignment,
            "replay_log_entries": self.replay_entries,
            "key_count": len(self.keys),
            "file_objects": len(self.file_objects),
        }

    def tree(self) -> Iterator[tuple[str, str, int]]:
        """(path, type, value size) of every key, sorted by path."""
        for path in sorted(self.keys):
            key = self.keys[path]
            yield path, key.type_name, key.size


def crc(data: bytes | memoryview, at: int) -> int:
    """CRC-32 of ``data`` with its 4-byte checksum field at ``at`` taken as zero."""
    return zlib.crc32(bytes(data[at + 4 :]), zlib.crc32(b"\0\0\0\0", zlib.crc32(bytes(data[:at]))))


def is_container(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack_from("<I", head)[0] == SIGNATURE


def read_container(path: Path, fd: int) -> Container:
    """Parse the container open on ``fd`` (the caller owns and closes it)."""
    size = os.fstat(fd).st_size
    shell = Container(path, fd, size, 0, 0, 0, 0, {}, {})
    version, sequence, alignment, log_offset = _header(shell)
    shell.version, shell.sequence, shell.alignment = version, sequence, alignment
    shell.replay_entries = _replay_entries(shell, log_offset)
    objects = _objects(shell)
    shell.file_objects = {offset: length for kind, offset, length, _ in objects if kind == OBJ_FILE}
    shell.keys = _keys(
        shell, [(offset, length, at) for kind, offset, length, at in objects if kind == OBJ_KEY_TABLE]
    )
    return shell


def _fail(container: Container, reason: str, offset: int) -> MemoryFormatError:
    return MemoryFormatError(f"HyperVStorage: {reason}", offset=offset, path=str(container.path))


def _pread(container: Container, offset: int, length: int, what: str) -> bytes:
    if offset < 0 or length < 0 or offset + length > container.file_size:
        raise _fail(container, f"{what} ({length} bytes) lies beyond the end of the file", offset)
    data = os.pread(container.fd, length, offset)
    if len(data) != length:
        raise _fail(container, f"{what}: the file ends early", offset + len(data))
    return data


def _header(container: Container) -> tuple[int, int, int, int]:
    valid, problems = [], []
    for at in HEADER_COPIES:
        if at + FILE_HEADER.size > container.file_size:
            problems.append((at, "the file ends inside the header"))
            continue
        raw = _pread(container, at, FILE_HEADER.size, "the file header")
        fields = FILE_HEADER.unpack(raw)
        if fields[0] != SIGNATURE:
            problems.append((at, f"header signature 0x{fields[0]:08x}, not 0x{SIGNATURE:08x}"))
        elif fields[1] != crc(raw, 4):
            problems.append((at, "header checksum mismatch"))
        else:
            valid.append((fields, at))
    if not valid:
        at, reason = problems[0]
        raise _fail(container, f"no valid file header ({reason})", at)
    if len(valid) == 2 and valid[0][0][2] == valid[1][0][2]:
        raise _fail(container, f"both header copies have sequence number {valid[0][0][2]}", 4096)
    fields, at = max(valid, key=lambda item: item[0][2])
    _, _, sequence, version, _data_version, _flags, alignment, log_offset, _log_size, _ = fields
    if version not in VERSIONS:
        raise _fail(
            container, f"format version 0x{version:04x} is not one this reader knows (3.1, 4.0)", at + 10
        )
    if alignment < 4096 or alignment > 65536 or alignment & (alignment - 1):
        raise _fail(
            container, f"data alignment {alignment} is not a power of two from 4096 to 65536", at + 22
        )
    return version, sequence, alignment, log_offset


def _replay_entries(container: Container, offset: int) -> int:
    raw = _pread(container, offset, REPLAY_LOG.size, "the replay log header")
    fields = REPLAY_LOG.unpack(raw)
    if fields[0] != REPLAY_LOG_SIGNATURE:
        raise _fail(
            container, f"replay log signature 0x{fields[0]:08x}, not 0x{REPLAY_LOG_SIGNATURE:08x}", offset
        )
    if fields[1] != crc(raw, 4):
        raise _fail(container, "replay log header checksum mismatch", offset)
    return fields[2]


def _objects(container: Container) -> list[tuple[int, int, int, int]]:
    """(type, offset, size, entry offset) of every object table entry, following the chain."""
    found: list[tuple[int, int, int, int]] = []
    table, seen = FIRST_OBJECT_TABLE, set()
    while True:
        if table in seen or len(seen) >= MAX_OBJECT_TABLES:
            raise _fail(container, "the object table chain loops or is too long", table)
        seen.add(table)
        signature, count = OBJECT_TABLE.unpack(_pread(container, table, OBJECT_TABLE.size, "an object table"))
        if signature != OBJECT_TABLE_SIGNATURE:
            raise _fail(container, f"object table signature 0x{signature:08x}", table)
        raw = _pread(
            container, table + OBJECT_TABLE.size, count * OBJECT_ENTRY.size, "an object table's entries"
        )
        entries = []
        for index in range(count):
            at = table + OBJECT_TABLE.size + index * OBJECT_ENTRY.size
            piece = raw[index * OBJECT_ENTRY.size : (index + 1) * OBJECT_ENTRY.size]
            kind, checksum, offset, length, _flags = OBJECT_ENTRY.unpack(piece)
            if checksum != crc(piece, 1):
                raise _fail(container, f"object table entry {index} checksum mismatch", at)
            if kind > OBJ_FREE:
                raise _fail(container, f"object table entry {index} has unknown type {kind}", at)
            if kind in (OBJ_TABLE, OBJ_KEY_TABLE, OBJ_FILE) and offset + length > container.file_size:
                raise _fail(container, f"object table entry {index} points beyond the end of the file", at)
            entries.append((kind, offset, length, at))
        chain = entries.pop() if entries else None
        found.extend(entries)
        if chain is None or chain[0] != OBJ_TABLE:
            return found
        table = chain[1]


def _keys(container: Container, tables: list[tuple[int, int, int]]) -> dict[str, Key]:
    entries: dict[tuple[int, int], tuple[int, int, int, int, str, int, int]] = {}
    total, indices = 0, {}
    for offset, length, at in tables:
        if length < KEY_TABLE.size or length > MAX_KEY_TABLE:
            raise _fail(container, f"a key table of {length} bytes", at)
        total += length
        if total > MAX_KEY_BYTES:
            raise _fail(container, f"more than {MAX_KEY_BYTES} bytes of key tables", at)
        raw = memoryview(_pread(container, offset, length, "a key table"))
        signature, index, _sequence, checksum = KEY_TABLE.unpack_from(raw)
        if signature != KEY_TABLE_SIGNATURE:
            raise _fail(container, f"key table signature 0x{signature:04x}", offset)
        if checksum != crc(raw[: KEY_TABLE.size], 6):
            raise _fail(container, "key table header checksum mismatch", offset)
        if index == 0 or index in indices:
            # Which of two tables with one index is current is not documented: refuse, never pick.
            raise _fail(container, f"key table index {index} is used twice or is 0", offset)
        indices[index] = offset
        _table_entries(container, raw, offset, index, entries)
    return _paths(container, entries)


def _table_entries(container: Container, raw: memoryview, base: int, index: int, entries: dict) -> None:
    pos = KEY_TABLE.size
    while pos + KEY_ENTRY.size <= len(raw):
        kind, flags, size, parent_table, parent_offset, checksum, _insertion, name_size = (
            KEY_ENTRY.unpack_from(raw, pos)
        )
        at = base + pos
        if size == 0:
            return  # the rest of the table is unused
        if size < KEY_ENTRY.size or pos + size > len(raw):
            raise _fail(container, f"a key entry of {size} bytes overruns its table", at)
        if kind == KEY_FREE:
            pos += size
            continue
        if kind not in TYPE_NAMES:
            raise _fail(container, f"key entry of unknown type {kind}", at)
        name_end = pos + KEY_ENTRY.size + name_size
        if name_size == 0 or name_end > pos + size or raw[name_end - 1] != 0:
            raise _fail(container, "a key name without its terminating NUL inside the entry", at)
        name = bytes(raw[pos + KEY_ENTRY.size : name_end - 1]).decode("utf-8", "replace")
        if "/" in name or not name:
            raise _fail(container, f"key name {name!r} is empty or contains '/'", at)
        data_at, limit = name_end, pos + size
        if flags & FLAG_FILE_OBJECT:
            meaningful = FILE_OBJECT.size
        elif kind in FIXED_SIZES:
            meaningful = FIXED_SIZES[kind]
        else:
            if data_at + 4 > limit:
                raise _fail(container, "a key value's length lies outside its entry", at)
            meaningful = 4 + struct.unpack_from("<I", raw, data_at)[0]
        if data_at + meaningful > limit:
            raise _fail(container, f"the value of {name!r} overruns its entry", at)
        covered = bytearray(raw[pos : data_at + meaningful])
        covered[12:16] = b"\0\0\0\0"
        if zlib.crc32(covered) != checksum:
            raise _fail(container, f"key entry {name!r} checksum mismatch", at)
        if flags & FLAG_FILE_OBJECT:
            length, offset = FILE_OBJECT.unpack_from(raw, data_at)
            if kind not in (KEY_STRING, KEY_ARRAY):
                raise _fail(container, f"a {TYPE_NAMES[kind]} key {name!r} points to a file object", at)
            aligned = container.file_objects.get(offset)
            if aligned is None or length > aligned:
                raise _fail(
                    container, f"{name!r} points to 0x{offset:x}, not a file object of {length} bytes", at
                )
            value = (offset, length, True)
        elif kind in FIXED_SIZES:
            value = (base + data_at, FIXED_SIZES[kind], False)
        else:
            value = (base + data_at + 4, meaningful - 4, False)
        entries[(index, pos)] = (kind, parent_table, parent_offset, at, name, *value)
        pos += size


def _paths(container: Container, entries: dict) -> dict[str, Key]:
    """Full paths by following parent links ((0, 0) is the virtual root) with a cycle check."""
    paths: dict[tuple[int, int], str] = {(0, 0): ""}
    keys: dict[str, Key] = {}

    def path_of(where: tuple[int, int]) -> str:
        chain = []
        while where not in paths:
            entry = entries.get(where)
            if entry is None or entry[0] != KEY_NODE:
                first = entries[chain[0]] if chain else None
                raise _fail(container, "a key's parent is not a node", first[3] if first else 0)
            if where in chain:
                raise _fail(container, "the key tree has a cycle", entry[3])
            chain.append(where)
            where = (entry[1], entry[2])
        for link in reversed(chain):
            paths[link] = paths[where] + "/" + entries[link][4]
            where = link
        return paths[where]

    for where, (kind, parent_table, parent_offset, at, name, offset, size, in_file) in entries.items():
        full = path_of((parent_table, parent_offset)) + "/" + name
        if full in keys:
            raise _fail(container, f"key {full} appears twice", at)
        if kind == KEY_NODE:
            path_of(where)
        keys[full] = Key(full, kind, offset, size, in_file, at)
    return keys
