"""Shared checks for the VDI, Parallels, QED, qcow1 and ASIF tests: qemu-img map as an oracle of
what is stored, and a pytsk3 read of a file inside the disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytsk3

from tests.images.conftest import qemu_img


def qemu_data_ranges(image: Path, fmt: str) -> list[tuple[int, int]]:
    """The ranges qemu-img map says this image itself stores data for (depth 0), merged."""
    ranges: list[tuple[int, int]] = []
    for m in json.loads(qemu_img("map", "-f", fmt, "--output=json", image)):
        if not (m["data"] and m["depth"] == 0):
            continue
        if ranges and ranges[-1][0] + ranges[-1][1] == m["start"]:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + m["length"])
        else:
            ranges.append((m["start"], m["length"]))
    return ranges


def read_tsk_file(disk, path: str) -> bytes:
    fs = pytsk3.FS_Info(disk.as_tsk())
    entry = fs.open(path)
    return entry.read_random(0, entry.info.meta.size)
