"""A minimal FAT16 file-system builder (root files and one level of folders) for the demo VM.

Enough of the format for any FAT reader (The Sleuth Kit, Linux, Windows) to list and read the
files: boot sector with BPB, two FATs, a fixed root directory and cluster chains.
"""

from __future__ import annotations

import struct

SECTOR = 512
SECTORS_PER_CLUSTER = 4
CLUSTER = SECTOR * SECTORS_PER_CLUSTER
ROOT_ENTRIES = 512
RESERVED = 1
FATS = 2
# 2001-02-03 04:05:06 in FAT's packed date/time; fixed so the demo disk is reproducible.
_DATE = ((2021 - 1980) << 9) | (6 << 5) | 15
_TIME = (13 << 11) | (37 << 5) | 0


def _short_name(name: str) -> bytes:
    stem, _, ext = name.upper().partition(".")
    if not stem or len(stem) > 8 or len(ext) > 3:
        raise ValueError(f"{name!r} is not an 8.3 name")
    return stem.ljust(8).encode("ascii") + ext.ljust(3).encode("ascii")


def _entry(name: bytes, attributes: int, cluster: int, size: int) -> bytes:
    return struct.pack(
        "<11sBBBHHHHHHHI", name, attributes, 0, 0, _TIME, _DATE, _DATE, 0, _TIME, _DATE, cluster, size
    )


def build_fat16(size: int, files: dict[str, bytes], label: str = "EVIDENCE") -> bytes:
    """A FAT16 volume of ``size`` bytes holding ``files`` ({"DIR/NAME.EXT" or "NAME.EXT": data})."""
    total_sectors = size // SECTOR
    root_sectors = ROOT_ENTRIES * 32 // SECTOR
    clusters_guess = total_sectors // SECTORS_PER_CLUSTER
    fat_sectors = (clusters_guess * 2 + 4 + SECTOR - 1) // SECTOR
    data_start = RESERVED + FATS * fat_sectors + root_sectors
    cluster_count = (total_sectors - data_start) // SECTORS_PER_CLUSTER
    if not 4085 <= cluster_count < 65525:
        raise ValueError(f"{size} bytes does not make a FAT16 volume")
    image = bytearray(size)
    fat = [0xFFF8, 0xFFFF] + [0] * cluster_count
    next_cluster = 2

    def allocate(data: bytes) -> int:
        nonlocal next_cluster
        if not data:
            return 0
        count = (len(data) + CLUSTER - 1) // CLUSTER
        first = next_cluster
        for i in range(count):
            cluster = first + i
            fat[cluster] = cluster + 1 if i < count - 1 else 0xFFFF
            offset = (data_start + (cluster - 2) * SECTORS_PER_CLUSTER) * SECTOR
            chunk = data[i * CLUSTER : (i + 1) * CLUSTER]
            image[offset : offset + len(chunk)] = chunk
        next_cluster += count
        return first

    root = [_entry(label.upper().ljust(11)[:11].encode("ascii"), 0x08, 0, 0)]
    folders: dict[str, list[tuple[str, bytes]]] = {}
    for path, data in files.items():
        folder, _, name = path.rpartition("/")
        if folder:
            folders.setdefault(folder, []).append((name, data))
        else:
            root.append(_entry(_short_name(name), 0x20, allocate(data), len(data)))
    for folder, members in folders.items():
        entries = [_entry(_short_name(n), 0x20, allocate(d), len(d)) for n, d in members]
        table_size = (len(entries) + 2) * 32
        first = allocate(bytes(table_size))  # reserve the directory's clusters, filled below
        table = (
            _entry(b".          ", 0x10, first, 0) + _entry(b"..         ", 0x10, 0, 0) + b"".join(entries)
        )
        offset = (data_start + (first - 2) * SECTORS_PER_CLUSTER) * SECTOR
        image[offset : offset + len(table)] = table
        root.append(_entry(_short_name(folder), 0x10, first, 0))
    boot = struct.pack(
        "<3s8sHBHBHHBHHHII",
        b"\xeb\x3c\x90",
        b"VMFORENS",
        SECTOR,
        SECTORS_PER_CLUSTER,
        RESERVED,
        FATS,
        ROOT_ENTRIES,
        total_sectors if total_sectors < 0x10000 else 0,
        0xF8,
        fat_sectors,
        63,
        255,
        0,
        total_sectors if total_sectors >= 0x10000 else 0,
    )
    boot += struct.pack(
        "<BBBI11s8s", 0x80, 0, 0x29, 0x20261123, label.upper().ljust(11)[:11].encode(), b"FAT16   "
    )
    image[: len(boot)] = boot
    image[510:512] = b"\x55\xaa"
    fat_bytes = struct.pack(f"<{len(fat)}H", *fat)
    for copy in range(FATS):
        start = (RESERVED + copy * fat_sectors) * SECTOR
        image[start : start + len(fat_bytes)] = fat_bytes
    root_offset = (RESERVED + FATS * fat_sectors) * SECTOR
    table = b"".join(root)
    image[root_offset : root_offset + len(table)] = table
    return bytes(image)


def with_mbr(volume: bytes, disk_size: int, start_sector: int = 2048) -> bytes:
    """A disk with an MBR partition table holding ``volume`` as its one FAT16 (LBA) partition."""
    disk = bytearray(disk_size)
    sectors = len(volume) // SECTOR
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff", start_sector, sectors)
    disk[446 : 446 + 16] = entry
    disk[510:512] = b"\x55\xaa"
    disk[start_sector * SECTOR : start_sector * SECTOR + len(volume)] = volume
    return bytes(disk)
