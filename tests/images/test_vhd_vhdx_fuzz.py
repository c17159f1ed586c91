"""Damaged VHD and VHDX images: mutated structures may only raise ImageFormatError, and quickly."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.images.conftest import qemu_img, qemu_io
from tests.images.vhd_builders import build_differencing_vhd
from tests.images.vhdx_builders import (
    MiB,
    VhdxBuilder,
    active_data_write_guid,
    build_dirty_vhdx,
)
from vmforensics.errors import ImageFormatError
from vmforensics.images.open import open_image

KiB = 1024


class Seed(NamedTuple):
    """A small valid image, where its structures lie, and which checksums cover them."""

    name: str
    path: Path  # where it lives, so a differencing seed finds its parent beside it
    image: bytes
    regions: list[tuple[int, int]]
    checksums: list[tuple[str, int, int]]  # (kind, offset, length) to recompute after mutating

    def __repr__(self) -> str:
        return f"Seed({self.name})"


def vhd_seed(name: str, path: Path) -> Seed:
    image = path.read_bytes()
    footer = len(image) - 512
    regions = [(footer, 512)]
    checksums = [("vhd-footer", footer, 512)]
    if image.startswith(b"conectix"):
        table, entries = struct.unpack_from(">QI", image, 512 + 16)
        regions += [(0, 512), (512, 1024), (table, min(entries * 4, 512))]
        checksums += [("vhd-footer", 0, 512), ("vhd-dynamic", 512, 1024)]
        first = next(
            (e for (e,) in struct.iter_unpack(">I", image[table : table + entries * 4]) if e != 0xFFFFFFFF),
            None,
        )
        if first is not None:
            regions.append((first * 512, 512))
    return Seed(name, path, image, regions, checksums)


def vhdx_seed(name: str, path: Path) -> Seed:
    image = path.read_bytes()
    regions = [(64 * KiB, 128), (128 * KiB, 128), (192 * KiB, 96), (256 * KiB, 96)]
    checksums = [("crc", 64 * KiB, 4 * KiB), ("crc", 128 * KiB, 4 * KiB), ("crc", 192 * KiB, 64 * KiB)]
    checksums.append(("crc", 256 * KiB, 64 * KiB))
    for index in range(struct.unpack_from("<I", image, 192 * KiB + 8)[0]):
        offset = struct.unpack_from("<Q", image, 192 * KiB + 16 + 32 * index + 16)[0]
        regions += [(offset, 256), (offset + 64 * KiB, 256)]
    log_offset = struct.unpack_from("<Q", image, 64 * KiB + 72)[0]
    if image[log_offset : log_offset + 4] == b"loge":
        at = 0
        while image[log_offset + at : log_offset + at + 4] == b"loge":
            length = struct.unpack_from("<I", image, log_offset + at + 8)[0]
            regions.append((log_offset + at, 4 * KiB))
            checksums.append(("crc", log_offset + at, length))
            at += length
    return Seed(name, path, image, regions, checksums)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    work = tmp_path_factory.mktemp("vhd-seeds")
    dynamic, fixed, vhdx = work / "dynamic.vhd", work / "fixed.vhd", work / "dynamic.vhdx"
    qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", dynamic, "4M")
    qemu_io(dynamic, "write -P 0x41 0 64k", "write -P 0x42 2100k 100k", fmt="vpc")
    qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", fixed, "1M")
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", vhdx, "4M")
    qemu_io(vhdx, "write -P 0x41 0 64k", "write -P 0x42 2100k 100k", fmt="vhdx")
    child_vhd = work / "child.vhd"
    build_differencing_vhd(child_vhd, dynamic, {4096: b"\x01" * 4096, 3 << 20: b"\x02" * 512})
    builder = VhdxBuilder(4 * MiB)
    builder.locator = {
        "parent_linkage": "{" + str(active_data_write_guid(vhdx)) + "}",
        "relative_path": vhdx.name,
    }
    builder.write_sectors({512: b"\x03" * 1024, 3 << 20: b"\x04" * MiB})
    child_vhdx = work / "child.avhdx"
    builder.build(child_vhdx)
    dirty, _ = build_dirty_vhdx(work / "dirty.vhdx")
    seeds = [vhd_seed("vhd-dynamic", dynamic), vhd_seed("vhd-fixed", fixed), vhd_seed("vhd-child", child_vhd)]
    seeds += [vhdx_seed(n, p) for n, p in (("vhdx", vhdx), ("avhdx", child_vhdx), ("vhdx-dirty", dirty))]
    child = seeds[-2]
    sb = struct.unpack_from("<Q", child.image, 3 * MiB + 8 * builder.chunk_ratio)[0] >> 20 << 20
    child.regions.append((sb, 64))
    return seeds


INTERESTING = [
    0,
    1,
    2,
    3,
    6,
    7,
    0x7F,
    0x80,
    0xFF,
    511,
    512,
    4096,
    1 << 20,
    1 << 31,
    (1 << 32) - 1,
    1 << 40,
    (1 << 63),
]

mutation = st.tuples(
    st.integers(0, 1 << 16),  # which region (modulo)
    st.integers(0, 1 << 16),  # where in it (modulo)
    st.one_of(
        st.binary(min_size=1, max_size=8),
        st.builds(
            lambda v, w, e: (v & ((1 << (8 * w)) - 1)).to_bytes(w, e),
            st.sampled_from(INTERESTING),
            st.sampled_from([1, 2, 4, 8]),
            st.sampled_from(["little", "big"]),
        ),
    ),
)


def mutate(seed: Seed, mutations: list[tuple[int, int, bytes]], fix_checksums: bool) -> bytes:
    image = bytearray(seed.image)
    for which, where, raw in mutations:
        offset, length = seed.regions[which % len(seed.regions)]
        at = offset + where % max(1, length)
        image[at : at + len(raw)] = raw
    del image[len(seed.image) :]
    if fix_checksums:
        for kind, offset, length in seed.checksums:
            part = image[offset : offset + length]
            if len(part) < length:
                continue
            if kind == "crc":
                part[4:8] = bytes(4)
                image[offset + 4 : offset + 8] = struct.pack("<I", google_crc32c.value(bytes(part)))
            else:
                field = 64 if kind == "vhd-footer" else 36
                part[field : field + 4] = bytes(4)
                image[offset + field : offset + field + 4] = struct.pack(">I", ~sum(part) & 0xFFFFFFFF)
    return bytes(image)


def exercise(seed: Seed, image: bytes, probes: list[int]) -> None:
    stream = io.BytesIO(image)
    stream.name = str(seed.path)
    try:
        with open_image(stream) as disk:
            disk.info()
            for _, _ in zip(range(10_000), disk.extents(), strict=False):
                pass
            size = disk.size
            for offset in [0, size // 2, max(0, size - 4096), *(p % max(1, size) for p in probes)]:
                disk.read_at(offset, 256 * KiB)
    except ImageFormatError as exc:
        assert exc.reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, 5),
    mutations=st.lists(mutation, min_size=1, max_size=4),
    fix_checksums=st.booleans(),
    probes=st.lists(st.integers(0, 1 << 62), max_size=3),
)
def test_mutated_vhd_and_vhdx_raise_only_image_format_errors(
    seeds: list[Seed],
    which: int,
    mutations: list[tuple[int, int, bytes]],
    fix_checksums: bool,
    probes: list[int],
) -> None:
    seed = seeds[which]
    exercise(seed, mutate(seed, mutations, fix_checksums), probes)


@pytest.mark.parametrize("cut", [0.02, 0.1, 0.3, 0.6, 0.9, 0.999])
def test_truncated_vhd_and_vhdx_raise_only_image_format_errors(seeds: list[Seed], cut: float) -> None:
    for seed in seeds:
        exercise(seed, seed.image[: int(len(seed.image) * cut)], [12345, 3 << 20])


def test_the_seeds_open_cleanly(seeds: list[Seed]) -> None:
    """Without mutations every seed opens without warnings (so the mutations are what fails)."""
    for seed in seeds:
        with open_image(seed.path) as disk:
            assert disk.info().all_warnings == [], seed.name
