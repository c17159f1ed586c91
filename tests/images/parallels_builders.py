"""Parallels .hdd bundles (DiskDescriptor.xml, split parts, snapshots) around images qemu-img
writes, and version-1 ("WithoutFreeSpace") images made from qemu's version-2 ones; qemu-img
writes neither."""

from __future__ import annotations

import struct
from pathlib import Path

from vmforensics.images import parallels_layout as p

NULL = p.NULL_GUID


def to_version_1(image: Path) -> None:
    """Rewrite a qemu (version 2) image as version 1: the old signature, BAT entries in sectors."""
    blob = bytearray(image.read_bytes())
    header = p.Header.parse(bytes(blob[: p.HEADER.size]))
    assert header.magic == p.MAGIC_V2 and header.nb_sectors < 1 << 32
    blob[:16] = p.MAGIC_V1
    for i in range(header.bat_entries):
        at = p.BAT_OFFSET + 4 * i
        (entry,) = struct.unpack_from("<I", blob, at)
        struct.pack_into("<I", blob, at, entry * header.tracks)
    image.write_bytes(bytes(blob))


def descriptor(
    storages: list[tuple[int, int, list[tuple[str, str, str]]]],
    shots: list[tuple[str, str]],
    *,
    top: str | None = None,
    disk_sectors: int | None = None,
) -> str:
    """A DiskDescriptor.xml (docs/interop/prl-xml.txt): storages as (start, end, [(guid, type,
    file)]) in sectors, snapshots as (guid, parent guid)."""
    end = max(s[1] for s in storages)
    parts = []
    for start, stop, images in storages:
        body = "".join(
            f"      <Image>\n        <GUID>{g}</GUID>\n        <Type>{t}</Type>\n        <File>{f}</File>\n"
            "      </Image>\n"
            for g, t, f in images
        )
        parts.append(
            f"    <Storage>\n      <Start>{start}</Start>\n      <End>{stop}</End>\n"
            f"      <Blocksize>2048</Blocksize>\n{body}    </Storage>\n"
        )
    shot_xml = "".join(
        f"    <Shot>\n      <GUID>{g}</GUID>\n      <ParentGUID>{parent}</ParentGUID>\n    </Shot>\n"
        for g, parent in shots
    )
    top_xml = f"    <TopGUID>{top}</TopGUID>\n" if top else ""
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n<Parallels_disk_image Version=\"1.0\">\n"
        f"  <Disk_Parameters>\n    <Disk_size>{disk_sectors or end}</Disk_size>\n"
        "    <Cylinders>0</Cylinders>\n    <PhysicalSectorSize>512</PhysicalSectorSize>\n"
        "    <Heads>16</Heads>\n    <Sectors>32</Sectors>\n    <Padding>0</Padding>\n"
        "    <UID>{00000000-1111-2222-3333-444444444444}</UID>\n    <Name>disk</Name>\n"
        "  </Disk_Parameters>\n"
        f"  <StorageData>\n{''.join(parts)}  </StorageData>\n"
        f"  <Snapshots>\n{top_xml}{shot_xml}  </Snapshots>\n</Parallels_disk_image>\n"
    )
