"""Damaged VDI, QED, Parallels (images and descriptors), qcow1 and ASIF files: mutated headers,
tables and XML may only raise ImageFormatError, quickly and without large allocations."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images.asif_builders import build_asif
from tests.images.conftest import qemu_img, qemu_io
from tests.images.parallels_builders import NULL, descriptor
from tests.images.vdi_builders import ZERO, build_vdi, header_of
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images import parallels_layout as p
from vmforensics.images import vdi_layout as v
from vmforensics.images.base import MAX_ALLOCATION

MiB = 1 << 20


class Seed(NamedTuple):
    """A small valid file, where its metadata lies, and the files beside it (parents, parts)."""

    name: str
    image: bytes
    regions: list[tuple[int, int]]
    beside: dict[str, bytes]

    def __repr__(self) -> str:
        return f"Seed({self.name})"


def _u32(blob: bytes, at: int, fmt: str = "<I") -> int:
    return struct.unpack_from(fmt, blob, at)[0]


def _u64(blob: bytes, at: int, fmt: str = "<Q") -> int:
    return struct.unpack_from(fmt, blob, at)[0]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    work = tmp_path_factory.mktemp("new-format-seeds")
    rng = random.Random(7)
    raw = work / "src.raw"
    raw.write_bytes(
        b"".join(rng.choice([rng.randbytes(65536), bytes(65536), b"text " * 13107 + b"t"]) for _ in range(32))
    )
    made: list[Seed] = []

    vdi = work / "d.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", raw, vdi)
    blob = vdi.read_bytes()
    h = header_of(vdi)
    made.append(Seed("vdi", blob, [(0, 512), (h.blocks_offset, h.blocks * 4)], {}))
    child = work / "child.vdi"
    build_vdi(child, h.disk_size, {0: b"\x11" * MiB, 1: ZERO}, image_type=v.ImageType.DIFF,
              uuid_linkage=h.uuid_create, uuid_parent_modify=h.uuid_modify)  # fmt: skip
    cblob = child.read_bytes()
    made.append(Seed("vdi-diff", cblob, [(0, 512), (512, 16)], {"parent.vdi": blob}))

    qed = work / "d.qed"
    qemu_img("convert", "-f", "raw", "-O", "qed", "-o", "cluster_size=4k", raw, qed)
    blob = qed.read_bytes()
    cluster, table = _u32(blob, 4), _u32(blob, 8)
    l1 = _u64(blob, 40)
    regions = [(0, 512), (l1, cluster * table)]
    regions += [(_u64(blob, l1 + 8 * i), cluster * table) for i in range(4) if _u64(blob, l1 + 8 * i)]
    made.append(Seed("qed", blob, regions, {}))
    qchild = work / "c.qed"
    qemu_img("create", "-f", "qed", "-o", "cluster_size=4k", "-b", "d.qed", "-F", "qed", qchild)
    qemu_io(qchild, "write -P 0x45 8k 8k", fmt="qed")
    made.append(Seed("qed-child", qchild.read_bytes(), [(0, 4096)], {"d.qed": blob}))

    hds = work / "d.hds"
    qemu_img("convert", "-f", "raw", "-O", "parallels", "-o", "cluster_size=64k", raw, hds)
    blob = hds.read_bytes()
    made.append(Seed("parallels", blob, [(0, 64 + 4 * _u32(blob, 32))], {}))
    part = "disk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
    text = descriptor(
        [(0, len(raw.read_bytes()) // 512, [(p.DEFAULT_TOP_GUID, "Compressed", part)])],
        [(p.DEFAULT_TOP_GUID, NULL)],
    )
    made.append(Seed("descriptor", text.encode(), [(0, len(text))], {part: blob}))

    qcow = work / "d.qcow"
    qemu_img("convert", "-f", "raw", "-O", "qcow", raw, qcow)
    blob = qcow.read_bytes()
    l1 = _u64(blob, 40, ">Q")
    regions = [(0, 48), (l1, 8)]
    l2 = _u64(blob, l1, ">Q")
    if l2:
        regions.append((l2, 4096))
    made.append(Seed("qcow1", blob, regions, {}))
    cq = work / "c.qcow"
    qemu_img("create", "-f", "qcow", cq, "1M")
    qemu_io(cq, *[f"write -c -P {i + 1} {i * 8}k 4k" for i in range(16)], fmt="qcow")
    blob = cq.read_bytes()
    l1 = _u64(blob, 40, ">Q")
    made.append(Seed("qcow1-compressed", blob, [(0, 48), (l1, 8), (_u64(blob, l1, ">Q"), 4096)], {}))

    asif = work / "d.asif"
    build_asif(asif, 8 * MiB, {0: b"a" * 4096, 3: rng.randbytes(32 << 10), 200: b"z"}, chunk_size=32 << 10,
               max_size=256 * MiB, metadata={"internal metadata": {"stable uuid": str(uuid.uuid4())}})  # fmt: skip
    blob = asif.read_bytes()
    chunk = 32 << 10
    made.append(Seed("asif", blob, [(0, 108), (chunk, 64), (2 * chunk, 64), (3 * chunk, chunk * 4)], {}))
    return made


def exercise(path: Path) -> None:
    """Everything an analyst does with an image; must end in data or an ImageFormatError."""
    try:
        with open_image(path) as disk:
            disk.info()
            extents = []
            for extent in disk.extents():
                extents.append(extent)
                if len(extents) > 64:
                    break
            disk.read_at(0, min(disk.size, MiB))
            for start, length in extents:
                disk.read_at(start, min(length, 64 << 10))
            disk.read_at(max(0, disk.size - 4096), 4096)
    except ImageFormatError as exc:
        assert exc.reason


mutation = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 255))


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "250")),
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 9), mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_metadata_of_the_new_formats_raises_only_image_format_errors(
    seeds: list[Seed], tmp_path: Path, seed: int, mutations: list[tuple[int, int, int]]
) -> None:
    chosen = seeds[seed % len(seeds)]
    mutated = bytearray(chosen.image)
    for which, where, xor in mutations:
        start, length = chosen.regions[which % len(chosen.regions)]
        position = start + where % max(1, length)
        if position < len(mutated):
            mutated[position] ^= xor
    folder = tmp_path / chosen.name
    folder.mkdir(exist_ok=True)
    for name, content in chosen.beside.items():
        (folder / name).write_bytes(content)
    path = folder / ("DiskDescriptor.xml" if chosen.name == "descriptor" else "mutated")
    path.write_bytes(bytes(mutated))
    tracemalloc.start()
    try:
        exercise(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_ALLOCATION, f"peak allocation {peak} bytes"


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "250")) // 2, deadline=5000)
@given(text=st.text(alphabet="<>/?!=\"' abcdefgGUIDStartEndImageTypeFileShot{}-0123456789", max_size=400))
def test_arbitrary_text_in_a_descriptor_position_raises_only_image_format_errors(
    tmp_path_factory, text: str
) -> None:
    folder = tmp_path_factory.mktemp("xml")
    path = folder / "DiskDescriptor.xml"
    path.write_text(f"<?xml version='1.0'?><Parallels_disk_image>{text}</Parallels_disk_image>")
    exercise(path)
