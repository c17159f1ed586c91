"""QEMU migration stream ("QEVM", version 3) layout, as QEMU's migration/savevm.c and
migration/ram.c write it; all integers are big-endian.

Stream: magic, version, then sections until EOF. A section starts with its type byte:
CONFIGURATION (u32 length + machine type, then optional subsections), START/FULL (u32 section
id, u8 length + id string, u32 instance, u32 version), PART/END (u32 section id), FOOTER (u32
section id), VMDESCRIPTION (u32 length + JSON), EOF. RAM travels in the "ram" section's
START/PART/END contents as records: a u64 whose low page bits are RAM_SAVE flags and whose rest
is the page's offset in its RAM block; unless CONTINUE, a u8 length + block name follows; then a
fill byte (ZERO), a page (PAGE), or nothing (EOS, MULTIFD_FLUSH). MEM_SIZE opens the block list.
With mapped-ram the pages are not records but lie at fixed places in the file (below).
"""

from __future__ import annotations

import re
import struct

MAGIC = b"QEVM"
VERSION = 3

EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
FOOTER = 0x7E

FLAG_FULL = 0x01  # obsolete, never written
FLAG_ZERO = 0x02
FLAG_MEM_SIZE = 0x04
FLAG_PAGE = 0x08
FLAG_EOS = 0x10
FLAG_CONTINUE = 0x20
FLAG_XBZRLE = 0x40
FLAG_HOOK = 0x80  # RDMA
FLAG_COMPRESS_PAGE = 0x100
FLAG_MULTIFD_FLUSH = 0x200

U8 = struct.Struct(">B")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")

#: Capabilities that put RAM somewhere this reader does not follow, or change the block list.
UNSUPPORTED_CAPABILITIES = {
    "multifd": "multifd streams carry pages on other channels (unless mapped-ram puts them in the file)",
    "postcopy-ram": "postcopy streams add page sizes to the block list only for some blocks",
    "xbzrle": "XBZRLE delta pages cannot be decoded without the previous page",
    "compress": "compressed pages (the compress capability) are not supported",
}

#: mapped-ram (QEMU 9.0+, ``file:`` migrations): after each block-list entry, a packed header
#: (u32 version 1, u64 page size, u64 bitmap offset, u64 pages offset; absolute file offsets).
#: Page n of the block lies at pages offset + n * page size; the bitmap, one bit a page in the
#: host's unsigned-long words (read as little-endian: x86-64, aarch64), says which pages are in
#: the file, the others being zero. The stream goes on at pages offset + block length.
MAPPED_RAM_HEADER = struct.Struct(">IQQQ")
MAPPED_RAM_VERSION = 1
MAPPED_RAM_ALIGNMENT = 1 << 20

MAX_BLOCKS = 4096
MAX_BLOCK_SIZE = 1 << 50


def pc_lowmem(machine: str, ram_size: int) -> int:
    """Bytes of "pc.ram" below 4 GiB on QEMU's x86 machines (hw/i386/pc_piix.c, pc_q35.c),
    assuming max-ram-below-4g is not set; the rest lies from 4 GiB up."""
    if "q35" in machine:
        return 0x80000000 if ram_size >= 0xB0000000 else ram_size
    if machine == "microvm":
        return 0xC0000000 if ram_size >= 0xC0000000 else ram_size
    old = re.match(r"pc-i440fx-(\d+)\.(\d+)$", machine)
    gigabyte_align = not (old and (int(old.group(1)), int(old.group(2))) < (2, 1))
    if ram_size >= 0xE0000000:
        return 0xC0000000 if gigabyte_align else 0xE0000000
    return ram_size


def is_x86(machine: str) -> bool:
    return machine.startswith(("pc", "q35")) or machine in ("microvm", "isapc")


FOUR_GIB = 1 << 32
