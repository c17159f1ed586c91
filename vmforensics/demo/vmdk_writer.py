"""Writes a monolithicSparse VMDK (hosted sparse extent with an embedded descriptor) for the demo.

Only grains holding non-zero bytes are stored, as VMware Workstation does.
"""

from __future__ import annotations

import struct
from pathlib import Path

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains
GTES_PER_GT = 512
DESCRIPTOR_SECTORS = 20


def write_monolithic_sparse(
    path: Path, disk: bytes, *, cid: int = 0x1A2B3C4D, adapter: str = "lsilogic"
) -> None:
    capacity = len(disk) // SECTOR
    grain = GRAIN_SECTORS * SECTOR
    grains = (capacity + GRAIN_SECTORS - 1) // GRAIN_SECTORS
    tables = (grains + GTES_PER_GT - 1) // GTES_PER_GT
    gd_sector = 1 + DESCRIPTOR_SECTORS
    gd_sectors = (tables * 4 + SECTOR - 1) // SECTOR
    gt_sector = gd_sector + gd_sectors
    gt_sectors = tables * GTES_PER_GT * 4 // SECTOR
    overhead = -(-(gt_sector + gt_sectors) // GRAIN_SECTORS) * GRAIN_SECTORS
    descriptor = (
        '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\n'
        f'CID={cid:08x}\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n'
        f'# Extent description\nRW {capacity} SPARSE "{path.name}"\n\n'
        "# The Disk Data Base\n#DDB\n\n"
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.geometry.cylinders = "{min(capacity // (16 * 63), 16383)}"\n'
        'ddb.geometry.heads = "16"\nddb.geometry.sectors = "63"\n'
        'ddb.virtualHWVersion = "14"\n'
    ).encode()
    header = struct.pack(
        "<4sIIQQQQIQQQBccccH",
        b"KDMV",
        1,
        1,
        capacity,
        GRAIN_SECTORS,
        1,
        DESCRIPTOR_SECTORS,
        GTES_PER_GT,
        0,
        gd_sector,
        overhead,
        0,
        b"\n",
        b" ",
        b"\r",
        b"\n",
        0,
    )
    table = [0] * (tables * GTES_PER_GT)
    payload = bytearray()
    next_sector = overhead
    for index in range(grains):
        chunk = disk[index * grain : (index + 1) * grain]
        if chunk.count(0) == len(chunk):
            continue
        table[index] = next_sector
        payload += chunk.ljust(grain, b"\0")
        next_sector += GRAIN_SECTORS
    directory = [gt_sector + t * (GTES_PER_GT * 4 // SECTOR) for t in range(tables)]
    out = bytearray(overhead * SECTOR)
    out[: len(header)] = header
    out[SECTOR : SECTOR + len(descriptor)] = descriptor
    gd = struct.pack(f"<{tables}I", *directory)
    out[gd_sector * SECTOR : gd_sector * SECTOR + len(gd)] = gd
    gt = struct.pack(f"<{len(table)}I", *table)
    out[gt_sector * SECTOR : gt_sector * SECTOR + len(gt)] = gt
    with path.open("xb") as f:
        f.write(out)
        f.write(payload)
