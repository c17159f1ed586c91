"""VMware saved memory: .vmss (suspend) / .vmsn (snapshot) metadata, with the .vmem beside it or
memory embedded in the state file (older Workstation, ESXi < 5 checkpoints).

The "memory" group's region table (regionsCount; regionPPN, regionPageNum, regionSize per region)
maps pages of the memory file onto guest-physical pages, leaving the PCI hole (3-4 GiB on x86)
unmapped, exactly as Volatility 3's VMware layer does. Without a region table, embedded memory
is one linear run (only below the PCI hole, where linear is certain); anything else is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from vmforensics.errors import MemoryFormatError
from vmforensics.memory import vmware_layout as vfmt
from vmforensics.memory.base import PAGE, Extents, GuestMemory, MemoryInfo, MemoryRange

log = logging.getLogger(__name__)


class Tag(NamedTuple):
    name: str
    indices: tuple[int, ...]
    value: int | bytes | None  # int for 1/2/4/8-byte values; bytes for other short values
    data_offset: int  # where the value's bytes start in the file
    data_size: int  # stored bytes (long values)
    memory_size: int  # size in memory (long values; differs when VMware compressed them)


def is_state(head: bytes) -> bool:
    return head[:4] in vfmt.MAGICS


class _File:
    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path
        self.size = os.fstat(fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset) if offset < self.size else b""
        if len(data) != length:
            raise MemoryFormatError(
                "the state file ends inside its metadata", offset=offset, path=str(self.path)
            )
        return data


def read_groups(f: _File) -> dict[str, int]:
    magic, _unknown, count = vfmt.HEADER.unpack(f.read(0, vfmt.HEADER.size))
    if magic not in vfmt.MAGICS:
        raise MemoryFormatError(f"not a VMware state file (magic {magic.hex()})", offset=0, path=str(f.path))
    if count > vfmt.MAX_GROUPS or vfmt.HEADER.size + count * vfmt.GROUP.size > f.size:
        raise MemoryFormatError(f"group count {count} does not fit the file", offset=8, path=str(f.path))
    groups = {}
    table = f.read(vfmt.HEADER.size, count * vfmt.GROUP.size)
    for number in range(count):
        name, tags, _size = vfmt.GROUP.unpack_from(table, number * vfmt.GROUP.size)
        label = name.split(b"\0", 1)[0].decode("latin-1")
        if label and label not in groups:
            groups[label] = tags
    return groups


def read_tags(f: _File, offset: int, file_version: int) -> Iterator[Tag]:
    long_field = vfmt.long_size_field(file_version)
    start = offset
    for _ in range(vfmt.MAX_TAGS):
        flags, name_length = f.read(offset, 2)
        if flags == 0 and name_length == 0:
            return
        name = f.read(offset + 2, name_length).decode("latin-1")
        count = (flags >> 6) & 3
        pos = offset + 2 + name_length
        indices = tuple(vfmt.INDEX.unpack_from(f.read(pos, 4 * count), 4 * n)[0] for n in range(count))
        pos += 4 * count
        size = flags & 0x3F
        if size in vfmt.LONG_SIZES:
            sizes = f.read(pos, 2 * long_field.size)
            stored = long_field.unpack_from(sizes, 0)[0]
            in_memory = long_field.unpack_from(sizes, long_field.size)[0]
            data = pos + 2 * long_field.size + vfmt.LONG_GAP
            if data + stored > f.size:
                raise MemoryFormatError(
                    f"tag {name!r} says {stored} bytes follow, past the end of the file",
                    offset=pos,
                    path=str(f.path),
                )
            yield Tag(name, indices, None, data, stored, in_memory)
            offset = data + stored
        else:
            raw = f.read(pos, size)
            value: int | bytes = int.from_bytes(raw, "little") if size in (1, 2, 4, 8) else raw
            yield Tag(name, indices, value, pos, size, size)
            offset = pos + size
    raise MemoryFormatError("a tag list does not end", offset=start, path=str(f.path))


def sibling_memory(path: Path) -> Path | None:
    candidate = path.with_suffix(".vmem")
    return candidate if candidate.is_file() else None


def sibling_state(vmem: Path) -> Path | None:
    for suffix in (".vmss", ".vmsn"):
        candidate = vmem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def open_vmware(state: Path, vmem: Path | None = None) -> GuestMemory:
    """The guest memory a VMware state file describes (``vmem`` defaults to the same-named .vmem)."""
    fd = os.open(state, os.O_RDONLY)
    try:
        return _open(_File(fd, state), vmem, fd)
    except BaseException:
        os.close(fd)
        raise


def _open(f: _File, vmem: Path | None, state_fd: int) -> GuestMemory:
    magic = f.read(0, 4)
    file_version = vfmt.version(magic)
    groups = read_groups(f)
    if "memory" not in groups:
        raise MemoryFormatError(
            "this state file has no memory group (a snapshot taken without memory?)",
            offset=8,
            path=str(f.path),
        )
    memory_tags = {(t.name, t.indices): t for t in read_tags(f, groups["memory"], file_version)}
    embedded = memory_tags.get(("Memory", (0, 0))) or memory_tags.get(("Memory", ()))
    if embedded is not None and embedded.data_size == 0:
        embedded = None
    if embedded is not None and embedded.data_size != embedded.memory_size:
        raise MemoryFormatError(
            f"the embedded memory is stored compressed ({embedded.data_size} of {embedded.memory_size} bytes); "
            "not supported",
            offset=embedded.data_offset,
            path=str(f.path),
        )
    details: dict[str, object] = {
        "magic": magic.hex(),
        "file_version": file_version,
        "groups": sorted(groups),
    }
    if embedded is not None:
        fd, base, data_size, source = state_fd, embedded.data_offset, embedded.data_size, f.path
        details["memory"] = "embedded"
    else:
        vmem = vmem or sibling_memory(f.path)
        if vmem is None:
            raise MemoryFormatError(
                f"the memory is in a separate .vmem file: put {f.path.with_suffix('.vmem').name} beside "
                f"{f.path.name} (or pass vmem=)",
                path=str(f.path),
            )
        fd, base, source = os.open(vmem, os.O_RDONLY), 0, vmem
        data_size = os.fstat(fd).st_size
        details["memory"] = "separate"
    try:
        ranges, extents = _regions(f, memory_tags, base, data_size, source)
        info = MemoryInfo(
            format="vmware",
            page_size=PAGE,
            memory_size=sum(r.length for r in ranges),
            ranges=ranges,
            cpu_count=_cpu_count(f, groups, file_version),
            registers=_registers(f, groups, file_version),
            details=details,
            sources=(str(f.path),) if source == f.path else (str(f.path), str(source)),
        )
    except BaseException:
        if fd != state_fd:
            os.close(fd)
        raise
    if fd != state_fd:
        os.close(state_fd)
    return GuestMemory(path=f.path, info_=info, extents=extents, fd=fd)


def _value(tags: dict[tuple[str, tuple[int, ...]], Tag], name: str, *indices: int, path: Path) -> int:
    tag = tags.get((name, indices))
    if tag is None or not isinstance(tag.value, int):
        raise MemoryFormatError(f"the memory group lacks {name}{list(indices) or ''}", path=str(path))
    return tag.value


def _regions(
    f: _File, tags: dict[tuple[str, tuple[int, ...]], Tag], base: int, data_size: int, source: Path
) -> tuple[tuple[MemoryRange, ...], Extents]:
    count_tag = tags.get(("regionsCount", ()))
    count = count_tag.value if count_tag is not None and isinstance(count_tag.value, int) else 0
    regions = []
    if count == 0:
        if source != f.path:
            raise MemoryFormatError(
                "the state file has no region table for its .vmem; the guest-physical layout is unknown "
                "(Volatility refuses it too)",
                path=str(f.path),
            )
        if data_size > vfmt.PCI_HOLE_START:
            raise MemoryFormatError(
                f"embedded memory of {data_size} bytes without a region table: where the PCI hole lies is unknown",
                path=str(f.path),
            )
        regions.append((0, 0, data_size // PAGE, base))
    else:
        if count > vfmt.MAX_REGIONS:
            raise MemoryFormatError(
                f"regionsCount {count} is implausible", offset=count_tag.data_offset, path=str(f.path)
            )
        for number in range(count):
            regions.append(
                (
                    _value(tags, "regionPPN", number, path=f.path),
                    _value(tags, "regionPageNum", number, path=f.path),
                    _value(tags, "regionSize", number, path=f.path),
                    tags[("regionSize", (number,))].data_offset,
                )
            )
    regions.sort()
    extents = Extents(PAGE)
    ranges = []
    for number, (ppn, page_number, pages, tag_offset) in enumerate(regions):
        if pages == 0:
            continue
        if (page_number + pages) * PAGE > data_size:
            raise MemoryFormatError(
                f"region {number} (pages {page_number}+{pages}) lies beyond the {data_size}-byte memory file",
                offset=tag_offset,
                path=str(f.path),
            )
        extents.add(ppn * PAGE, pages * PAGE, base + page_number * PAGE)
        ranges.append(MemoryRange(ppn * PAGE, pages * PAGE, f"region{number}"))
    if not ranges:
        raise MemoryFormatError(
            "the region table maps no memory",
            offset=count_tag.data_offset if count_tag is not None else None,
            path=str(f.path),
        )
    return tuple(ranges), extents


def _cpu_count(f: _File, groups: dict[str, int], file_version: int) -> int | None:
    if "Checkpoint" not in groups:
        return None
    for tag in read_tags(f, groups["Checkpoint"], file_version):
        if tag.name == "numVCPUs" and isinstance(tag.value, int):
            return tag.value
    return None


def _registers(f: _File, groups: dict[str, int], file_version: int) -> dict[int, dict[str, int]]:
    """The "cpu" group's integer tags indexed by CPU, under their VMware names (e.g. ``rip``, ``CR64[3]``)."""
    registers: dict[int, dict[str, int]] = {}
    if "cpu" not in groups:
        return registers
    for tag in read_tags(f, groups["cpu"], file_version):
        if tag.indices and isinstance(tag.value, int):
            name = tag.name + "".join(f"[{i}]" for i in tag.indices[1:])
            registers.setdefault(tag.indices[0], {})[name] = tag.value
    return registers
