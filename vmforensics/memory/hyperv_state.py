"""Hyper-V saved state (.vmrs; .vsv) in a HyperVStorage container: guest memory where the
layout is the one Microsoft's openvmm documents and writes, refused everywhere else.

openvmm (vmm_core/hyperv_dump, support/hvs_file/FORMAT.md "Saved State Key Schema") writes
.vmrs files that WinDbg opens through VmSavedStateDumpProvider.dll: ``/savedstate/VmVersion``
(an int above 5.0), ``/savedstate/RamMemoryBlock0``, ``1``... (48-byte arrays: version 3, flags,
page count, first memory-block page, first guest-physical page, NUMA node, KSR id) and
``/savedstate/RamBlock0``, ``1``... (1 MiB arrays, 256 pages each; memory-block page *n* is page
``n % 256`` of RamBlock ``n // 256``). A RamBlock shorter than 1 MiB is XPRESS-compressed:
refused. So are metadata flags (hot-added, SGX, VTL2, specific-purpose memory), versions of 5.0
and below (other key names), a replay log with outstanding entries and the older .bin RAM file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from vmforensics.errors import MemoryFormatError
from vmforensics.memory.base import PAGE, Extents, GuestMemory, MemoryInfo, MemoryRange
from vmforensics.memory.hyperv_storage import KEY_ARRAY, Container, is_container, read_container

SIGNATURE = 0x01282014
VERSION_KEY = "/savedstate/VmVersion"
BLOCK_META = "/savedstate/RamMemoryBlock{}"
BLOCK_DATA = "/savedstate/RamBlock{}"
META = struct.Struct("<IIQQQIIQ")  # 48 bytes
META_VERSION = 3
DATA_BLOCK = 1 << 20
DATA_PAGES = DATA_BLOCK // PAGE
#: Guest-physical pages above 2**52 are not x86-64 or arm64 addresses.
MAX_GPA_PAGE = 1 << 40
FLAG_NAMES = {1: "hot-added", 2: "SGX", 4: "VTL2", 8: "specific-purpose"}


def is_hyperv(head: bytes) -> bool:
    return is_container(head)


def inspect(path: Path) -> tuple[dict[str, object], list[tuple[str, str, int]], str | None]:
    """The container's facts and keys (path, type, size), and why memory cannot be read (or None)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        container = read_container(path, fd)
        try:
            _memory_map(container)
            reason = None
        except MemoryFormatError as exc:
            reason = str(exc)
        return {**container.facts(), **_facts(container)}, list(container.tree()), reason
    finally:
        os.close(fd)


def open_hyperv(path: Path) -> GuestMemory:
    fd = os.open(path, os.O_RDONLY)
    try:
        container = read_container(path, fd)
        ranges, extents = _memory_map(container)
        info = MemoryInfo(
            format="hyperv",
            page_size=PAGE,
            memory_size=sum(r.length for r in ranges),
            ranges=tuple(ranges),
            cpu_count=None,  # in the partition state blob, which is not parsed
            details={**container.facts(), **_facts(container)},
            sources=(str(path),),
        )
    except BaseException:
        os.close(fd)
        raise
    return GuestMemory(path=path, fd=fd, info_=info, extents=extents)


def _facts(container: Container) -> dict[str, object]:
    facts: dict[str, object] = {}
    version = container.keys.get(VERSION_KEY)
    if version is not None and version.type in (3, 4):
        facts["vm_version"] = "{}.{}".format(*divmod(container.integer(VERSION_KEY) or 0, 256))
    kind = container.string("/savedstate/type")
    if kind is not None:
        facts["saved_state_type"] = kind
    facts["memory_blocks"] = sum(1 for p in container.keys if p.startswith("/savedstate/RamMemoryBlock"))
    facts["data_blocks"] = sum(1 for p in container.keys if p.startswith("/savedstate/RamBlock"))
    return facts


def _fail(container: Container, reason: str, offset: int) -> MemoryFormatError:
    return MemoryFormatError(f"Hyper-V saved state: {reason}", offset=offset, path=str(container.path))


def _memory_map(container: Container) -> tuple[list[MemoryRange], Extents]:
    if container.replay_entries:
        raise _fail(container, f"the replay log holds {container.replay_entries} uncommitted change(s); "
                    "they are not applied, so the memory keys may be stale", 0)  # fmt: skip
    key = container.keys.get(VERSION_KEY)
    if key is None:
        raise _fail(container, f"no {VERSION_KEY} key: not a saved state with memory (a .vmcx, or a .vmrs "
                    "of a VM that was not saved)", 0)  # fmt: skip
    version = container.integer(VERSION_KEY) or 0
    if version <= 0x0500:
        raise _fail(container, f"VM version {version >> 8}.{version & 0xFF} keeps memory under older key "
                    "names whose layout is not publicly documented", key.entry_offset)  # fmt: skip
    blocks = []
    while (meta := container.keys.get(BLOCK_META.format(len(blocks)))) is not None:
        blocks.append(_block(container, meta))
    if not blocks:
        raise _fail(container, f"no {BLOCK_META.format(0)} key: the saved state holds no memory", 0)
    blocks.sort(key=lambda block: block[1])
    ranges, extents = [], Extents(PAGE)
    for number, (pages, gpa_page, mbp, at) in enumerate(blocks):
        start = gpa_page * PAGE
        if ranges and start < ranges[-1].end:
            raise _fail(container, "two memory blocks overlap in guest-physical memory", at)
        ranges.append(MemoryRange(start, pages * PAGE, f"RamMemoryBlock{number}"))
        _place(container, extents, start, pages, mbp)
    return ranges, extents


def _block(container: Container, meta) -> tuple[int, int, int, int]:
    at = meta.entry_offset
    if meta.type != KEY_ARRAY or meta.size != META.size:
        raise _fail(
            container, f"{meta.path} is a {meta.type_name} of {meta.size} bytes, not a 48-byte array", at
        )
    version, flags, pages, mbp, gpa_page, _node, _pad, _ksr = META.unpack(container.value(meta))
    if version != META_VERSION:
        raise _fail(container, f"{meta.path} has metadata version {version}, not {META_VERSION}", at)
    if flags:
        named = ", ".join(name for bit, name in FLAG_NAMES.items() if flags & bit) or f"0x{flags:x}"
        raise _fail(container, f"{meta.path} is flagged {named} memory, which this reader does not place", at)
    if pages == 0 or gpa_page + pages > MAX_GPA_PAGE or mbp + pages > MAX_GPA_PAGE:
        raise _fail(container, f"{meta.path} claims {pages} pages from guest page 0x{gpa_page:x}", at)
    return pages, gpa_page, mbp, at


def _place(container: Container, extents: Extents, start: int, pages: int, mbp: int) -> None:
    """Extents for ``pages`` pages from guest-physical ``start``, memory-block pages from ``mbp``."""
    done = 0
    while done < pages:
        block, within = divmod(mbp + done, DATA_PAGES)
        count = min(DATA_PAGES - within, pages - done)
        name = BLOCK_DATA.format(block)
        data = container.keys.get(name)
        if data is None:
            raise _fail(
                container, f"no {name} key for the memory at guest-physical 0x{start + done * PAGE:x}", 0
            )
        if data.type != KEY_ARRAY:
            raise _fail(container, f"{name} is a {data.type_name}, not an array", data.entry_offset)
        if data.size != DATA_BLOCK:
            raise _fail(container, f"{name} holds {data.size} bytes, not {DATA_BLOCK}: XPRESS-compressed "
                        "memory is not decoded", data.offset)  # fmt: skip
        extents.add(start + done * PAGE, count * PAGE, data.offset + within * PAGE)
        done += count
