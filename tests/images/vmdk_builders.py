"""Build the VMDK variants qemu-img cannot write (COWD, SESparse, descriptors with ZERO/VMFS/offset
extents, a streamOptimized footer), straight from the format notes, for tests that check them
against independent readers (qemu-img, libvmdk). These builders never use vmforensics code.
"""

from __future__ import annotations

import struct
from pathlib import Path

SECTOR = 512


def write_descriptor(
    path: Path,
    extents: list[str],
    *,
    create_type: str,
    cid: int = 0x12345678,
    parent_cid: int = 0xFFFFFFFF,
    parent_hint: str | None = None,
    adapter: str = "lsilogic",
) -> Path:
    """A text descriptor with the given extent lines (e.g. ``'RW 2048 FLAT "x-flat.vmdk" 0'``)."""
    lines = ["# Disk DescriptorFile", "version=1", 'encoding="UTF-8"', f"CID={cid:08x}"]
    lines += [f"parentCID={parent_cid:08x}", f'createType="{create_type}"']
    if parent_hint is not None:
        lines.append(f'parentFileNameHint="{parent_hint}"')
    lines += ["", "# Extent description", *extents, "", "# The Disk Data Base", "#DDB", ""]
    lines += [f'ddb.adapterType = "{adapter}"', 'ddb.virtualHWVersion = "14"', ""]
    path.write_text("\n".join(lines))
    return path


def read_cid(vmdk: Path, name: str = "CID") -> int:
    """A CID from a descriptor (text file or the one embedded in a sparse file's first 64 KiB)."""
    text = vmdk.read_bytes()[: 64 * 1024].decode("latin-1")
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            return int(line.split("=", 1)[1], 16)
    raise AssertionError(f"no {name} in {vmdk}")


def patch_descriptor_field(vmdk: Path, name: str, value: int) -> None:
    """Rewrite ``name=<hex>`` in place, in a text or monolithicSparse file. qemu writes CIDs
    without leading zeros, so the new value keeps the old one's number of digits (same length)."""
    blob = bytearray(vmdk.read_bytes())
    key = f"\n{name}=".encode()
    at = blob.index(key) + len(key)
    end = blob.index(b"\n", at)
    text = f"{value:0{end - at}x}".encode()
    assert len(text) == end - at, f"{value:#x} does not fit the {end - at} digits of {name}"
    blob[at:end] = text
    vmdk.write_bytes(bytes(blob))


def build_cowd(path: Path, capacity: int, grain_sectors: int, grains: dict[int, bytes]) -> Path:
    """An ESX COWD sparse extent (``-delta.vmdk``): 2048-byte header, directory, 4096-entry tables.

    ``grains`` maps a grain index to its bytes (padded with zeros); grains are stored in reverse
    order of index so that file order and disk order differ.
    """
    grain = grain_sectors * SECTOR
    per_table = 4096
    tables = -(-capacity // (per_table * grain))
    gd_sector = 4
    gd_sectors = -(-tables * 4 // SECTOR)
    gt_sector = gd_sector + gd_sectors
    gt_sectors = per_table * 4 // SECTOR
    next_sector = gt_sector + tables * gt_sectors
    gd = [0] * tables
    gts: dict[int, list[int]] = {}
    placed: list[tuple[int, bytes]] = []
    for index in sorted(grains, reverse=True):
        table, slot = divmod(index, per_table)
        if table not in gts:
            gts[table] = [0] * per_table
            gd[table] = gt_sector + table * gt_sectors
        gts[table][slot] = next_sector
        placed.append((next_sector, grains[index].ljust(grain, b"\0")))
        next_sector += grain_sectors
    header = struct.pack(
        "<4sIIIIIII", b"COWD", 1, 3, capacity // SECTOR, grain_sectors, gd_sector, tables, next_sector
    )
    with path.open("wb") as f:
        f.write(header.ljust(2048, b"\0"))
        f.seek(gd_sector * SECTOR)
        f.write(struct.pack(f"<{tables}I", *gd))
        for table, entries in gts.items():
            f.seek((gt_sector + table * gt_sectors) * SECTOR)
            f.write(struct.pack(f"<{per_table}I", *entries))
        for sector, payload in placed:
            f.seek(sector * SECTOR)
            f.write(payload)
        f.truncate(next_sector * SECTOR)
    return path


SESPARSE_ALLOCATED = 0x3 << 60
SESPARSE_ZERO = 0x2 << 60
SESPARSE_UNMAPPED = 0x1 << 60


def build_sesparse(
    path: Path,
    capacity: int,
    grains: dict[int, bytes],
    *,
    zero: set[int] = frozenset(),  # type: ignore[assignment]
    unmapped: set[int] = frozenset(),  # type: ignore[assignment]
    first_grain_number: int = 4100,
) -> Path:
    """An ESXi SESparse extent as QEMU's block/vmdk.c reads it: 4 KiB grains, 4096-entry tables.

    Grains get numbers from ``first_grain_number`` upwards (above 4095 so that the split storage
    of the grain number in a table entry is exercised), in reverse order of disk index.
    """
    grain = 8 * SECTOR
    per_table = 4096
    tables = -(-capacity // (per_table * grain))
    volatile_sector, journal_header, journal = 1, 2, 3
    gd_sector, gd_sectors = 8, max(1, -(-tables * 8 // SECTOR))
    gt_area = gd_sector + gd_sectors
    gt_sectors = per_table * 8 // SECTOR  # 64
    grains_sector = gt_area + tables * gt_sectors
    entries: dict[int, list[int]] = {}

    def entry_list(index: int) -> tuple[list[int], int]:
        table, slot = divmod(index, per_table)
        return entries.setdefault(table, [0] * per_table), slot

    placed: list[tuple[int, bytes]] = []
    number = first_grain_number
    for index in sorted(grains, reverse=True):
        table, slot = entry_list(index)
        table[slot] = SESPARSE_ALLOCATED | ((number & 0xFFF) << 48) | (number >> 12)
        placed.append((grains_sector + number * 8, grains[index].ljust(grain, b"\0")))
        number += 1
    for index in zero:
        table, slot = entry_list(index)
        table[slot] = SESPARSE_ZERO
    for index in unmapped:
        table, slot = entry_list(index)
        table[slot] = SESPARSE_UNMAPPED
    grains_sectors = (number + 1) * 8
    const = [
        0xCAFEBABE, 0x0000000200000001, capacity // SECTOR, 8, 64, 0, 0, 0, 0, 0,
        volatile_sector, 1, journal_header, 1, journal, 1,
        gd_sector, gd_sectors, gt_area, tables * gt_sectors, 0, 0, 0, 0, grains_sector, grains_sectors,
    ]  # fmt: skip
    with path.open("wb") as f:
        f.write(struct.pack("<26Q", *const).ljust(SECTOR, b"\0"))
        f.write(struct.pack("<4Q", 0xCAFECAFE, tables, 1, 0).ljust(SECTOR, b"\0"))
        f.seek(gd_sector * SECTOR)
        gd = [(0x1000000000000000 | t) if t in entries else 0 for t in range(tables)]
        f.write(struct.pack(f"<{tables}Q", *gd))
        for t, table in entries.items():
            f.seek((gt_area + t * gt_sectors) * SECTOR)
            f.write(struct.pack(f"<{per_table}Q", *table))
        for sector, payload in placed:
            f.seek(sector * SECTOR)
            f.write(payload)
        f.truncate((grains_sector + grains_sectors) * SECTOR)
    return path


def move_grain_directory_to_footer(stream: Path) -> None:
    """Turn a qemu-written streamOptimized file into the VMware shape: header GD_AT_END + footer.

    Appends a footer marker, a copy of the header with the real grain directory offset, and an
    end-of-stream marker (the last three sectors), then sets the header's offset to GD_AT_END.
    """
    blob = bytearray(stream.read_bytes())
    header = bytes(blob[:SECTOR])
    blob += b"\0" * (-len(blob) % SECTOR)
    blob += struct.pack("<QII", 1, 0, 3).ljust(SECTOR, b"\0")  # footer marker
    blob += header
    blob += struct.pack("<QII", 0, 0, 0).ljust(SECTOR, b"\0")  # end of stream
    struct.pack_into("<Q", blob, 56, 0xFFFFFFFFFFFFFFFF)
    stream.write_bytes(bytes(blob))
