"""Spec-built saved states for the cases no real tool here writes: VMware state files with every
magic, embedded memory, a "cpu" group; and QEVM streams with configuration subsections,
repeated pages and refused record kinds. Layouts follow Volatility 3's layers/vmware.py and
QEMU's migration/savevm.c + ram.c (see vmforensics/memory/*_layout.py for the field lists).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence

PAGE = 4096
HEADER = struct.Struct("<4sII")
GROUP = struct.Struct("<64sQQ")


def tag(name: str, value: int | bytes, *indices: int, size: int = 4) -> bytes:
    """A short tag: ``value`` in ``size`` bytes (an int) or the bytes given."""
    data = value if isinstance(value, bytes) else value.to_bytes(size, "little")
    flags = (len(indices) << 6) | len(data)
    return bytes([flags, len(name)]) + name.encode() + struct.pack(f"<{len(indices)}I", *indices) + data


def long_tag(
    name: str, data: bytes, *indices: int, version: int = 2, memory_size: int | None = None
) -> bytes:
    """A long tag (size code 62): stored size, size in memory, two gap bytes, then ``data``."""
    field = "<I" if version == 0 else "<Q"
    flags = (len(indices) << 6) | 62
    return (
        bytes([flags, len(name)])
        + name.encode()
        + struct.pack(f"<{len(indices)}I", *indices)
        + struct.pack(field, len(data))
        + struct.pack(field, len(data) if memory_size is None else memory_size)
        + b"\0\0"
        + data
    )


def regions_tags(regions: Sequence[tuple[int, int, int]]) -> bytes:
    body = tag("regionsCount", len(regions))
    for number, (ppn, page_number, size) in enumerate(regions):
        body += (
            tag("regionPPN", ppn, number)
            + tag("regionPageNum", page_number, number)
            + tag("regionSize", size, number)
        )
    return body


def vmware_state(magic: bytes, groups: Iterable[tuple[str, bytes]]) -> bytes:
    """A state file of ``groups`` (name, tag bytes without the end marker)."""
    groups = [(name, body + b"\0\0") for name, body in groups]
    offset = HEADER.size + GROUP.size * len(groups)
    table, bodies = b"", b""
    for name, body in groups:
        table += GROUP.pack(name.encode(), offset + len(bodies), len(body))
        bodies += body
    return HEADER.pack(magic, 0, len(groups)) + table + bodies


# -- QEVM ---------------------------------------------------------------------------------------

ZERO, MEM_SIZE, PAGE_FLAG, EOS, CONTINUE, XBZRLE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


def qevm(
    blocks: Sequence[tuple[str, int]],
    records: Iterable[tuple[str, int, bytes | None]],
    *,
    machine: str = "pc-i440fx-7.2",
    subsections: bytes = b"",
    description: dict | None = None,
    extra_flags: int = 0,
    complete: bool = True,
) -> bytes:
    """A stream: configuration (+ ``subsections``), a ram START section with the block list, one
    PART with ``records`` (block, offset, page bytes or None for a zero page), an END, EOF and a
    VMDESCRIPTION. ``extra_flags`` is or-ed into every page record (to build refused kinds).
    ``complete``: then send every page not in ``records`` as a zero page, as QEMU's bulk stage does."""
    out = b"QEVM" + struct.pack(">I", 3)
    out += b"\x07" + struct.pack(">I", len(machine)) + machine.encode() + subsections
    total = sum(length for _, length in blocks)
    out += b"\x01" + struct.pack(">I", 2) + bytes([3]) + b"ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", total | MEM_SIZE)
    for name, length in blocks:
        out += bytes([len(name)]) + name.encode() + struct.pack(">Q", length)
    out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", 2)
    out += b"\x02" + struct.pack(">I", 2)
    records = list(records)
    if complete:
        order = {name: number for number, (name, _) in enumerate(blocks)}
        key = [(order.get(name, -1), offset) for name, offset, _ in records]
        ascending = key == sorted(set(key))
        sent = {(name, offset) for name, offset, _ in records}
        records += [
            (name, offset, None)
            for name, length in blocks
            for offset in range(0, length, PAGE)
            if (name, offset) not in sent
        ]
        if ascending:  # as QEMU's bulk stage sends them: block by block, ascending
            records.sort(key=lambda record: (order.get(record[0], -1), record[1]))
    last = None
    parts = []
    for name, offset, data in records:
        flags = (ZERO if data is None else PAGE_FLAG) | extra_flags
        if name == last:
            flags |= CONTINUE
        parts.append(struct.pack(">Q", offset | flags))
        if name != last:
            parts.append(bytes([len(name)]) + name.encode())
        parts.append(b"\0" if data is None else data)
        last = name
    out += b"".join(parts)
    out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", 2)
    out += b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", 2)
    out += b"\x00"
    if description is not None:
        text = json.dumps(description).encode()
        out += b"\x06" + struct.pack(">I", len(text)) + text
    return out


def subsection(name: str, body: bytes, version: int = 1) -> bytes:
    return b"\x05" + bytes([len(name)]) + name.encode() + struct.pack(">I", version) + body


def capabilities(*names: str) -> bytes:
    body = struct.pack(">I", len(names)) + b"".join(bytes([len(n)]) + n.encode() for n in names)
    return subsection("configuration/capabilities", body)


def live_qevm() -> bytes:
    """A live save: every page of pc.ram and pc.bios once in order, then two sweeps that send a
    few pages again (the stream a running guest's save writes)."""
    first = [("pc.ram", n * PAGE, b"S" * PAGE if n in (0, 2, 5) else None) for n in range(64)]
    first += [("pc.bios", n * PAGE, None) for n in range(4)]
    again = [("pc.ram", PAGE, b"1" * PAGE), ("pc.ram", 2 * PAGE, None), ("pc.ram", 40 * PAGE, b"4" * PAGE)]
    records = first + again + [("pc.ram", 0, None)]
    return qevm([("pc.ram", 64 * PAGE), ("pc.bios", 4 * PAGE)], records, complete=False)


def mapped_ram_qevm(
    blocks: Sequence[tuple[str, int]],
    pages: dict[tuple[str, int], bytes],
    *,
    stale: dict[tuple[str, int], bytes] | None = None,
    machine: str = "pc-i440fx-7.2",
    header: Callable[[int, int, int], tuple[int, int, int, int]] | None = None,
) -> bytes:
    """A mapped-ram stream (QEMU 9.0+ ``file:`` migration, migration/ram.c): each block-list entry
    is followed by its MappedRamHeader; page n lies at pages_offset + n * PAGE, the bitmap says
    which are in the file. ``pages`` maps (block, page number) to the page's bytes; ``stale``
    pages are in the file but cleared in the bitmap (zeroed in a later pass). ``header`` may
    replace (version, page size, bitmap offset, pages offset) from (bitmap, pages, length)."""
    out = bytearray(b"QEVM" + struct.pack(">I", 3))
    out += b"\x07" + struct.pack(">I", len(machine)) + machine.encode() + capabilities("mapped-ram")
    out += b"\x01" + struct.pack(">I", 2) + bytes([3]) + b"ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", sum(length for _, length in blocks) | MEM_SIZE)
    bitmaps = []
    for name, length in blocks:
        out += bytes([len(name)]) + name.encode() + struct.pack(">Q", length)
        count = length // PAGE
        bitmap_at = len(out) + 28
        pages_at = -(-(bitmap_at + -(-count // 64) * 8) // (1 << 20)) * (1 << 20)
        fields = (1, PAGE, bitmap_at, pages_at) if header is None else header(bitmap_at, pages_at, length)
        out += struct.pack(">IQQQ", *fields)
        out += bytes(pages_at + length - len(out))
        bits = bytearray(-(-count // 64) * 8)
        for (block, number), data in {**(stale or {}), **pages}.items():
            if block == name:
                out[pages_at + number * PAGE : pages_at + (number + 1) * PAGE] = data
        for block, number in pages:
            if block == name:
                bits[number // 8] |= 1 << number % 8
        bitmaps.append((bitmap_at, bytes(bits)))
    out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", 2)
    out += b"\x02" + struct.pack(">I", 2) + struct.pack(">Q", 0x200) + struct.pack(">Q", EOS)
    out += b"\x7e" + struct.pack(">I", 2)
    out += b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", 2) + b"\x00"
    for at, bits in bitmaps:  # written last, as ram_save_complete does
        out[at : at + len(bits)] = bits
    return bytes(out)
