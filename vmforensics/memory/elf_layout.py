"""ELF64 core layout (what ``virsh dump --memory-only --format=elf`` and QEMU's dump-guest-memory
write, and what the ELF converter writes): the file header, program headers, notes, and the CPU
notes QEMU stores (NT_PRSTATUS in the kernel's layout, and its own "QEMU" note with CR0-CR4).
"""

from __future__ import annotations

import struct

MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_R, PF_W, PF_X = 4, 2, 1
NT_PRSTATUS = 1
PN_XNUM = 0xFFFF

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident ... e_shstrndx (64 bytes)
PHDR = struct.Struct("<IIQQQQQQ")  # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
NOTE = struct.Struct("<III")  # namesz descsz type

MAX_PHNUM = 1 << 20
MAX_NOTES = 16 << 20

#: pr_reg in the kernel's elf_prstatus: its offset and register names, by machine / desc size.
PRSTATUS_X86_64 = (
    112,
    [
        "r15",
        "r14",
        "r13",
        "r12",
        "rbp",
        "rbx",
        "r11",
        "r10",
        "r9",
        "r8",
        "rax",
        "rcx",
        "rdx",
        "rsi",
        "rdi",
        "orig_rax",
        "rip",
        "cs",
        "eflags",
        "rsp",
        "ss",
        "fs_base",
        "gs_base",
        "ds",
        "es",
        "fs",
        "gs",
    ],
    8,
)
PRSTATUS_I386 = (
    72,
    [
        "ebx",
        "ecx",
        "edx",
        "esi",
        "edi",
        "ebp",
        "eax",
        "ds",
        "es",
        "fs",
        "gs",
        "orig_eax",
        "eip",
        "cs",
        "eflags",
        "esp",
        "ss",
    ],
    4,
)
#: QEMU's QEMUCPUState note: u32 version, u32 size, then these u64 registers, ten segments
#: (24 bytes each) and cr[5].
QEMU_NOTE_REGS = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "rflags",
]
QEMU_NOTE_CR_OFFSET = 8 + 8 * 18 + 24 * 10


def ident() -> bytes:
    return MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
