"""Damaged qcow2 images: mutated headers and tables may only raise ImageFormatError, quickly and small."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images.conftest import qemu_img, qemu_io
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images import qcow2_layout as q
from vmforensics.images.base import MAX_ALLOCATION

MiB = 1 << 20


class Seed(NamedTuple):
    """A small valid image (and its backing file), with where its metadata lies."""

    name: str
    image: bytes
    regions: list[tuple[int, int]]
    parent: bytes | None

    def __repr__(self) -> str:  # keeps hypothesis' failure reports readable
        return f"Seed({self.name})"


def metadata_regions(image: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the header, the L1 table, every L2 table and the snapshot table."""
    header = q.decode_header(image[:112])
    cluster = 1 << header.cluster_bits
    regions = [(0, 512), (header.l1_table_offset, header.l1_size * 8)]
    for (entry,) in struct.iter_unpack(
        ">Q", image[header.l1_table_offset : header.l1_table_offset + header.l1_size * 8]
    ):
        if entry & q.L1_OFFSET_MASK:
            regions.append((entry & q.L1_OFFSET_MASK, cluster))
    if header.nb_snapshots:
        regions.append((header.snapshots_offset, 256))
    return regions


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    """Small images of each kind (plain, compressed, extended L2, snapshots, chained), as bytes."""
    work = tmp_path_factory.mktemp("qcow2-seeds")
    raw = work / "src.raw"
    rng = random.Random(5)
    raw.write_bytes(
        b"".join(rng.choice([b"text " * 13107 + b"t", rng.randbytes(65536), bytes(65536)]) for _ in range(16))
    )
    made = []
    plain = work / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", plain, "1M")
    qemu_io(plain, "write -P 0x41 0 12k", "write -z 64k 8k", "write -P 0x42 300k 20k", fmt="qcow2")
    qemu_img("snapshot", "-c", "snap", plain)
    made.append(plain)
    for name, options in [("zlib", "cluster_size=4k,compat=0.10"), ("zstd", "compression_type=zstd")]:
        out = work / f"{name}.qcow2"
        qemu_img("convert", "-c", "-O", "qcow2", "-o", options, raw, out)
        made.append(out)
    ext = work / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=16k", ext, "1M")
    qemu_io(ext, "write -P 0x43 1k 1k", "write -z 4k 2k", "write -P 0x44 40k 9k", fmt="qcow2")
    made.append(ext)
    child = work / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", "-o", "cluster_size=4k", child)
    qemu_io(child, "write -P 0x45 8k 8k", fmt="qcow2")
    seeds = []
    for path in made:
        image = path.read_bytes()
        seeds.append(Seed(path.stem, image, metadata_regions(image), None))
    child_bytes = child.read_bytes()
    seeds.append(Seed("child", child_bytes, metadata_regions(child_bytes), plain.read_bytes()))
    return seeds


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
@given(seed=st.integers(0, 4), mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_qcow2_metadata_raises_only_image_format_errors(
    seeds: list[Seed],
    tmp_path: Path,
    seed: int,
    mutations: list[tuple[int, int, int]],
) -> None:
    image, regions, parent = seeds[seed].image, seeds[seed].regions, seeds[seed].parent
    mutated = bytearray(image)
    for which, where, xor in mutations:
        start, length = regions[which % len(regions)]
        position = start + where % max(1, length)
        if position < len(mutated):
            mutated[position] ^= xor
    path = tmp_path / "mutated.qcow2"
    path.write_bytes(mutated)
    if parent is not None:
        (tmp_path / "plain.qcow2").write_bytes(parent)
    tracemalloc.start()
    try:
        exercise(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_ALLOCATION, f"peak allocation {peak} bytes"


def patched(image: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (4, ">I", 4, "unsupported qcow2 version"),
        (20, ">I", 31, "cluster_bits"),
        (20, ">I", 8, "cluster_bits"),
        (36, ">I", 0xFFFFFFFF, "L1 table of 4294967295 entries .* runs past the end"),
        (36, ">I", 4 << 20, "L1 table of 4194304 entries .* runs past the end"),
        (40, ">Q", 12345, "not cluster-aligned"),
        (24, ">Q", 1 << 63, "virtual size"),
        (60, ">I", 1 << 30, "snapshots exceed"),
        (100, ">I", 4096 + 5, "header length"),
        (32, ">I", 7, "encrypted"),
        (104, ">B", 9, "compression type"),
    ],
)
def test_absurd_header_fields_are_refused_before_any_large_allocation(
    seeds: list[Seed],
    tmp_path: Path,
    offset: int,
    fmt: str,
    value: int,
    reason: str,
) -> None:
    path = tmp_path / "bad.qcow2"
    path.write_bytes(patched(seeds[0].image, offset, fmt, value))
    with pytest.raises(ImageFormatError, match=reason) as caught:
        exercise_strictly(path)
    assert caught.value.path == str(path)


def exercise_strictly(path: Path) -> None:
    with open_image(path) as disk:
        disk.read_at(0, min(disk.size, MiB))


def test_a_data_cluster_past_the_end_of_the_file_reads_zeros_with_a_warning(
    seeds: list[Seed], tmp_path: Path
) -> None:
    image = seeds[0].image
    header = q.decode_header(image[:112])
    l2_offset = struct.unpack_from(">Q", image, header.l1_table_offset)[0] & q.L1_OFFSET_MASK
    first = struct.unpack_from(">Q", image, l2_offset)[0]
    assert first & q.L2_OFFSET_MASK  # the first cluster holds 0x41s
    path = tmp_path / "far.qcow2"
    path.write_bytes(patched(image, l2_offset, ">Q", (first & ~q.L2_OFFSET_MASK) | (1 << 40)))
    with open_image(path) as disk:
        assert disk.read_at(0, 4096) == bytes(4096)
        assert any("past the end" in w for w in disk.info().warnings)
    with pytest.raises(ImageFormatError, match="past the end"), open_image(path, strict=True) as disk:
        disk.read_at(0, 4096)


def test_a_garbage_compressed_cluster_is_an_image_format_error(seeds: list[Seed], tmp_path: Path) -> None:
    image = bytearray(seeds[1].image)
    header = q.decode_header(bytes(image[:112]))
    l2_offset = struct.unpack_from(">Q", image, header.l1_table_offset)[0] & q.L1_OFFSET_MASK
    for index in range(1 << (header.cluster_bits - 3)):
        entry = struct.unpack_from(">Q", image, l2_offset + 8 * index)[0]
        if entry & q.L2_COMPRESSED:
            host = entry & ((1 << (62 - (header.cluster_bits - 8))) - 1)
            image[host : host + 64] = b"\xff" * 64
            break
    else:
        pytest.fail("the seed image has no compressed cluster")
    path = tmp_path / "garbage.qcow2"
    path.write_bytes(image)
    with pytest.raises(ImageFormatError, match="compressed cluster"), open_image(path) as disk:
        disk.read_at(index << header.cluster_bits, 512)
