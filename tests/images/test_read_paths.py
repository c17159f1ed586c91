"""Every read path (one stored run read directly, runs of grains/clusters/blocks, holes, produced
bytes, parent reads) returns the oracle's bytes, for spans that start and end anywhere.

Images are made by qemu-img from a raw disk of random data with holes, and a child layer is
written through qemu-io; ``qemu-img convert -O raw`` gives the expected bytes.
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import pytest

from tests.images.conftest import oracle_raw, qemu_img, qemu_io
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

MiB = 1 << 20
SIZE = 40 * MiB
LENGTHS = [1, 511, 4096, 65535, 65537, MiB + 7, 9 * MiB]

#: name -> (qemu-img format, creation options, chain child's options)
FORMATS = {
    "vmdk-sparse": ("vmdk", "subformat=monolithicSparse"),
    "vmdk-stream": ("vmdk", "subformat=streamOptimized"),
    "vhdx": ("vhdx", "subformat=dynamic,block_size=1M"),
    "vhd": ("vpc", "subformat=dynamic,force_size=on"),
    "vhd-fixed": ("vpc", "subformat=fixed,force_size=on"),
    "qcow2": ("qcow2", "cluster_size=4k"),
}


@pytest.fixture(scope="module")
def base_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random data, text and holes in 256 KiB pieces, so runs start and stop inside tables."""
    path = tmp_path_factory.mktemp("paths") / "base.raw"
    rng = random.Random(5)
    with path.open("wb") as f:
        f.truncate(SIZE)
        for start in range(0, SIZE, 256 * 1024):
            pick = rng.random()
            if pick < 0.5:
                f.seek(start)
                f.write(rng.randbytes(256 * 1024))
            elif pick < 0.7:
                f.seek(start)
                f.write(b"compressible text " * (256 * 1024 // 18) + b"x" * (256 * 1024 % 18))
    return path


def _spans(size: int, seed: int, count: int = 40) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    spans = [(0, size), (size - 1, 10), (size - 4096, 4096)]
    for _ in range(count):
        offset = rng.randrange(size)
        if rng.random() < 0.5:
            offset &= ~4095
        spans.append((offset, rng.choice(LENGTHS)))
    return spans


def _check_spans(disk, oracle: Path, seed: int) -> None:
    want_all = oracle.read_bytes()
    for offset, length in _spans(disk.size, seed):
        want = want_all[offset : offset + length]
        assert disk.read_at(offset, length) == want, f"read_at({offset}, {length})"
        buf = bytearray(length)
        got = disk.readinto_at(memoryview(buf), offset)
        assert bytes(buf[:got]) == want, f"readinto_at({offset}, {length})"


@pytest.mark.parametrize("name", FORMATS)
def test_spans_anywhere_match_qemu(name: str, base_raw: Path, tmp_path: Path) -> None:
    fmt, options = FORMATS[name]
    image = tmp_path / f"disk.{name}"
    qemu_img("convert", "-f", "raw", "-O", fmt, "-o", options, base_raw, image)
    with open_image(image) as disk:
        _check_spans(disk, base_raw, seed=len(name))


@pytest.mark.parametrize("name", ["vmdk-sparse", "vhd", "qcow2"])
def test_spans_through_a_file_object_without_descriptor_match_qemu(
    name: str, base_raw: Path, tmp_path: Path
) -> None:
    """Over an opener whose files have no OS descriptor (archives, transports): the seek+read path."""
    fmt, options = FORMATS[name]
    image = tmp_path / f"disk.{name}"
    qemu_img("convert", "-f", "raw", "-O", fmt, "-o", options, base_raw, image)
    with open_image(io.BytesIO(image.read_bytes())) as disk:
        _check_spans(disk, base_raw, seed=7)


@pytest.mark.parametrize(("fmt", "options"), [("qcow2", "cluster_size=4k"), ("vmdk", "")])
def test_spans_of_a_child_layer_over_its_parent_match_qemu(
    fmt: str, options: str, base_raw: Path, tmp_path: Path
) -> None:
    base = tmp_path / f"base.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, base_raw, base)
    child = tmp_path / f"child.{fmt}"
    extra = ["-o", options] if options else []
    qemu_img("create", "-f", fmt, *extra, "-b", base.name, "-F", fmt, child)
    qemu_io(child, "write -P 0x5a 3m 70k", "write -P 0xa5 31m 2m", "write -z 12m 1m", fmt=fmt)
    oracle = oracle_raw(child, fmt, tmp_path / "child.raw")
    with open_image(child) as disk:
        _check_spans(disk, oracle, seed=11)


def test_vmdk_directory_entries_sharing_a_grain_table_count_once(base_raw: Path, tmp_path: Path) -> None:
    """A corrupt (or crafted) grain directory pointing twice at one table: reads follow it, as qemu
    does, but the table's grains are counted once and the sharing is reported."""
    image = tmp_path / "shared.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", base_raw, image)
    table_span = 32 * MiB  # 512 grains of 64 KiB
    mapped = json.loads(qemu_img("map", "--output=json", image))
    in_first_table = sum(
        min(m["start"] + m["length"], table_span) - m["start"]
        for m in mapped
        if m["data"] and m["start"] < table_span
    )
    blob = bytearray(image.read_bytes())
    gd_sector = struct.unpack_from("<Q", blob, 56)[0]
    gd_at = gd_sector * 512
    first = struct.unpack_from("<I", blob, gd_at)[0]
    assert first and struct.unpack_from("<I", blob, gd_at + 4)[0]
    struct.pack_into("<I", blob, gd_at + 4, first)  # the second 32 MiB now maps through table 0
    image.write_bytes(bytes(blob))
    oracle = oracle_raw(image, "vmdk", tmp_path / "shared.raw")
    with open_image(image) as disk:
        _check_spans(disk, oracle, seed=3)
        info = disk.info()
        assert info.allocated == in_first_table
        assert all(o + n <= table_span for o, n in disk.extents())
        assert any("reuses grain table" in w for w in info.warnings)
    with open_image(image, strict=True) as disk, pytest.raises(ImageFormatError, match="reuses grain table"):
        disk.info()
