"""open_image across formats: detection by magic, raw, pytsk3 through as_tsk, custom openers, extents."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

MiB = 1 << 20

#: (our format name, qemu-img format, qemu-img -o options) for every format open_image knows.
FORMATS = {
    "qcow2": ("qcow2", "qcow2", ""),
    "vmdk": ("vmdk", "vmdk", "subformat=monolithicSparse"),
    "vmdk-stream": ("vmdk", "vmdk", "subformat=streamOptimized"),
    "vhd": ("vhd", "vpc", "subformat=dynamic"),
    "vhdx": ("vhdx", "vhdx", "subformat=dynamic"),
    "raw": ("raw", "raw", ""),
}


def needs_reader(fmt: str) -> None:
    """Skip while another engineer's reader for ``fmt`` has not landed yet."""
    if importlib.util.find_spec(f"vmforensics.images.{fmt}") is None:
        pytest.skip(f"vmforensics.images.{fmt} is not there yet")


def convert(raw: Path, kind: str, out: Path) -> Path:
    ours, qemu_fmt, options = FORMATS[kind]
    needs_reader(ours)
    qemu_img("convert", "-O", qemu_fmt, *(["-o", options] if options else []), raw, out)
    return out


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "vhd", "vhdx"])
def test_format_is_detected_by_magic_not_by_extension(tmp_path: Path, kind: str) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"evidence" * 65536)
    misleading = tmp_path / "disk.raw"  # a name that lies about the format
    convert(raw, kind, tmp_path / "real")
    shutil.move(tmp_path / "real", misleading)
    with open_image(misleading) as disk:
        assert disk.format_name == FORMATS[kind][0]
        assert disk.read_at(0, 16) == b"evidence" * 2


def test_raw_file_named_like_a_qcow2_opens_as_raw(tmp_path: Path) -> None:
    raw = tmp_path / "looks.qcow2"
    raw.write_bytes(bytes(range(256)) * 4096)
    with open_image(raw) as disk:
        assert disk.format_name == "raw"
        assert_same_bytes(disk, raw)
        assert list(disk.extents()) == [(0, raw.stat().st_size)]
        info = disk.info()
        assert (info.format, info.size, info.allocated, info.parent) == ("raw", 1 << 20, 1 << 20, None)


def test_reading_follows_seek_tell_and_short_reads_at_the_end(tmp_path: Path) -> None:
    image = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 0x61 1040384 8k", fmt="qcow2")
    with open_image(image) as disk:
        assert disk.seek(-10, io.SEEK_END) == disk.size - 10
        assert disk.read(100) == b"a" * 10
        assert disk.read(100) == b""
        assert disk.tell() == disk.size


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "vmdk-stream", "vhd", "vhdx", "raw"])
def test_ext4_inside_each_format_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path, kind: str) -> None:
    pytsk3 = pytest.importorskip("pytsk3")
    image = convert(ext4_raw, kind, tmp_path / f"disk.{kind}")
    with open_image(image) as disk:
        fs = pytsk3.FS_Info(disk.as_tsk())
        secret = fs.open("/docs/secret.txt")
        assert secret.read_random(0, secret.info.meta.size) == b"the quick brown fox\n" * 100
        big = fs.open("/big.bin")
        assert big.read_random(0, big.info.meta.size) == (tmp_path / "big.bin").read_bytes()


def build_chain(directory: Path) -> Path:
    directory.mkdir()
    base = directory / "base.raw"
    base.write_bytes(b"B" * MiB)
    mid = directory / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "2M")
    qemu_io(mid, "write -P 0x4d 512k 1M", fmt="qcow2")
    top = directory / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
    qemu_io(top, "write -P 0x54 0 64k", "write -P 0x55 1856k 64k", fmt="qcow2")
    return top


def test_an_opener_over_in_memory_files_reads_a_whole_chain(tmp_path: Path) -> None:
    top = build_chain(tmp_path / "chain")
    expected = oracle_raw(top, "qcow2", tmp_path / "oracle.raw")
    archive = {f"case/{p.name}": p.read_bytes() for p in top.parent.iterdir()}
    opened: list[str] = []

    def from_archive(name: str) -> io.BytesIO:
        opened.append(name)
        if name not in archive:
            raise FileNotFoundError(name)
        return io.BytesIO(archive[name])

    with open_image("case/top.qcow2", opener=from_archive) as disk:
        assert_same_bytes(disk, expected)
        assert [layer.path for layer in disk.info().chain] == [
            "case/top.qcow2",
            "case/mid.qcow2",
            "case/base.raw",
        ]
    assert opened == ["case/top.qcow2", "case/mid.qcow2", "case/base.raw"]


def test_an_opener_that_lacks_the_parent_is_refused_naming_it(tmp_path: Path) -> None:
    top = build_chain(tmp_path / "chain")
    archive = {p.name: p.read_bytes() for p in top.parent.iterdir() if p.name != "base.raw"}

    def from_archive(name: str) -> io.BytesIO:
        if name not in archive:
            raise FileNotFoundError(name)
        return io.BytesIO(archive[name])

    with pytest.raises(ImageFormatError, match=r"base\.raw"):
        open_image("top.qcow2", opener=from_archive)


def test_an_open_file_object_is_read_and_not_closed(tmp_path: Path) -> None:
    top = build_chain(tmp_path / "chain")
    expected = oracle_raw(top, "qcow2", tmp_path / "oracle.raw")
    with top.open("rb") as handle:
        with open_image(handle) as disk:  # the parent is found next to handle.name
            assert_same_bytes(disk, expected)
        assert not handle.closed


def qemu_data_ranges(image: Path) -> list[tuple[int, int]]:
    """Guest ranges qemu-img map reports as holding data anywhere in the chain, merged."""
    mapping = json.loads(qemu_img("map", "--output=json", image))
    merged: list[tuple[int, int]] = []
    for entry in mapping:
        if not entry["data"]:
            continue
        start, length = entry["start"], entry["length"]
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((start, length))
    return merged


def test_extents_cover_qemus_data_ranges_and_everything_else_reads_zero(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0x01 0 128k", "write -P 0x02 2M 64k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top, "6M")
    qemu_io(top, "write -P 0x03 64k 128k", "write -P 0x04 5M 4k", fmt="qcow2")
    with open_image(top) as disk:
        extents = list(disk.extents())
        assert extents == [(0, 192 << 10), (2 * MiB, 64 << 10), (5 * MiB, 64 << 10)]
        assert extents == qemu_data_ranges(top)
        holes_start = 0
        for start, length in [*extents, (disk.size, 0)]:
            assert disk.read_at(holes_start, start - holes_start) == bytes(start - holes_start)
            holes_start = start + length
