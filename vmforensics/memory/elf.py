"""ELF64 cores as guest memory: each PT_LOAD maps ``p_filesz`` bytes at ``p_offset`` to guest-physical
``p_paddr`` (the rest of ``p_memsz`` reads as zeros). Cores whose physical addresses are all zero
(process cores written by gcore) are mapped by virtual address instead, and say so in ``details``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from vmforensics.errors import MemoryFormatError
from vmforensics.memory import elf_layout as efmt
from vmforensics.memory.base import PAGE, Extents, GuestMemory, MemoryInfo, MemoryRange


def is_elf(head: bytes) -> bool:
    return head[:4] == efmt.MAGIC


def open_elf(path: Path) -> GuestMemory:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _open(fd, path)
    except BaseException:
        os.close(fd)
        raise


def _read(fd: int, offset: int, length: int, path: Path, what: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise MemoryFormatError(f"the file ends inside {what}", offset=offset, path=str(path))
    return data


def _open(fd: int, path: Path) -> GuestMemory:
    size = os.fstat(fd).st_size
    header = _read(fd, 0, efmt.EHDR.size, path, "the ELF header")
    ident = header[:16]
    if ident[4] != efmt.ELFCLASS64 or ident[5] != efmt.ELFDATA2LSB:
        raise MemoryFormatError("only little-endian ELF64 cores are supported", offset=4, path=str(path))
    fields = efmt.EHDR.unpack(header)
    e_type, e_machine, e_phoff, e_phentsize, e_phnum = fields[1], fields[2], fields[5], fields[9], fields[10]
    if e_type != efmt.ET_CORE:
        raise MemoryFormatError(f"ELF type {e_type} is not a core file (4)", offset=16, path=str(path))
    if e_phentsize != efmt.PHDR.size:
        raise MemoryFormatError(
            f"program header size {e_phentsize} is not {efmt.PHDR.size}", offset=54, path=str(path)
        )
    if e_phnum == efmt.PN_XNUM:  # the real count is in section header 0's sh_info
        e_shoff = fields[6]
        e_phnum = struct.unpack("<I", _read(fd, e_shoff + 44, 4, path, "section header 0"))[0]
    if e_phnum > efmt.MAX_PHNUM or e_phoff + e_phnum * efmt.PHDR.size > size:
        raise MemoryFormatError(
            f"{e_phnum} program headers do not fit the file", offset=e_phoff, path=str(path)
        )
    table = _read(fd, e_phoff, e_phnum * efmt.PHDR.size, path, "the program headers")
    loads, notes = [], []
    for number in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = efmt.PHDR.unpack_from(
            table, number * efmt.PHDR.size
        )
        where = e_phoff + number * efmt.PHDR.size
        if p_type == efmt.PT_LOAD and p_memsz:
            if p_filesz > p_memsz or p_offset + p_filesz > size:
                raise MemoryFormatError(
                    f"PT_LOAD {number} ({p_filesz} bytes at {p_offset}) lies outside the file",
                    offset=where,
                    path=str(path),
                )
            loads.append((p_paddr, p_vaddr, p_memsz, p_offset, p_filesz))
        elif p_type == efmt.PT_NOTE and p_filesz:
            if p_filesz > efmt.MAX_NOTES or p_offset + p_filesz > size:
                raise MemoryFormatError(
                    f"PT_NOTE {number} lies outside the file", offset=where, path=str(path)
                )
            notes.append(_read(fd, p_offset, p_filesz, path, "a note"))
    if not loads:
        raise MemoryFormatError("the core has no PT_LOAD segment", offset=e_phoff, path=str(path))
    by_virtual = len(loads) > 1 and all(load[0] == 0 for load in loads)
    segments = sorted((load[1] if by_virtual else load[0], load[2], load[3], load[4]) for load in loads)
    extents, ranges = Extents(PAGE), []
    for number, (address, memsz, offset, filesz) in enumerate(segments):
        if ranges and address < ranges[-1].end:
            raise MemoryFormatError(
                f"PT_LOAD segments overlap at 0x{address:x}", offset=e_phoff, path=str(path)
            )
        ranges.append(MemoryRange(address, memsz, f"load{number}"))
        extents.add(address, filesz, offset)
    cpus, registers = _cpu_notes(notes, e_machine)
    info = MemoryInfo(
        format="elf",
        page_size=PAGE,
        memory_size=sum(r.length for r in ranges),
        ranges=tuple(ranges),
        cpu_count=cpus or None,
        registers=registers,
        details={
            "machine": e_machine,
            "address": "virtual" if by_virtual else "physical",
            "segments": len(loads),
        },
        sources=(str(path),),
    )
    return GuestMemory(path=path, info_=info, extents=extents, fd=fd)


def iter_notes(data: bytes):
    """(name, type, desc) of each note in a PT_NOTE segment; a truncated note ends the list."""
    pos = 0
    while pos + efmt.NOTE.size <= len(data):
        namesz, descsz, kind = efmt.NOTE.unpack_from(data, pos)
        name_at = pos + efmt.NOTE.size
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if desc_at + descsz > len(data):
            return
        yield data[name_at : name_at + namesz].rstrip(b"\0"), kind, data[desc_at : desc_at + descsz]
        pos = end


def _cpu_notes(notes: list[bytes], machine: int) -> tuple[int, dict[int, dict[str, int]]]:
    registers: dict[int, dict[str, int]] = {}
    prstatus = qemu = 0
    for data in notes:
        for name, kind, desc in iter_notes(data):
            if name == b"CORE" and kind == efmt.NT_PRSTATUS:
                regs_layout = efmt.PRSTATUS_X86_64 if len(desc) >= 328 else efmt.PRSTATUS_I386
                offset, names, width = regs_layout
                if machine in (efmt.EM_X86_64, efmt.EM_386) and len(desc) >= offset + width * len(names):
                    values = struct.unpack_from(f"<{len(names)}{'Q' if width == 8 else 'I'}", desc, offset)
                    registers.setdefault(prstatus, {}).update(zip(names, values, strict=True))
                prstatus += 1
            elif name == b"QEMU" and len(desc) >= efmt.QEMU_NOTE_CR_OFFSET + 40:
                values = struct.unpack_from(f"<{len(efmt.QEMU_NOTE_REGS)}Q", desc, 8)
                cr = struct.unpack_from("<5Q", desc, efmt.QEMU_NOTE_CR_OFFSET)
                regs = registers.setdefault(qemu, {})
                regs.update(zip(efmt.QEMU_NOTE_REGS, values, strict=True))
                regs.update({f"cr{n}": value for n, value in enumerate(cr)})
                qemu += 1
    return max(prstatus, qemu), registers
