"""qcow version 1 reader against qemu-img (plain, compressed, backing chains) and libqcow."""

from __future__ import annotations

import struct
from pathlib import Path

import pyqcow
import pytest

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from tests.images.new_formats import qemu_data_ranges, read_tsk_file
from tests.images.test_read_paths import _check_spans
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

MiB = 1 << 20


def libqcow_bytes(image: Path) -> bytes:
    handle = pyqcow.file()
    handle.open(str(image))
    try:
        return handle.read_buffer_at_offset(handle.media_size, 0)
    finally:
        handle.close()


def test_qcow1_of_mixed_data_text_and_holes_matches_qemu_and_libqcow(base_raw: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow"
    qemu_img("convert", "-f", "raw", "-O", "qcow", base_raw, image)
    with open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("qcow1", "qcow1", ())
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=51)
        assert list(disk.extents()) == qemu_data_ranges(image, "qcow")
    assert libqcow_bytes(image) == base_raw.read_bytes()


@pytest.fixture
def compressed_qcow1(tmp_path: Path) -> Path:
    """Compressed clusters among plain ones and holes. qemu 7.2's ``convert -c -O qcow`` exits 1
    without a message, so clusters are compressed one by one with qemu-io ``write -c``."""
    image = tmp_path / "c.qcow"
    qemu_img("create", "-f", "qcow", image, "1M")
    writes = [f"write -c -P {0x20 + i} {i * 8}k 4k" for i in range(40)]  # every other 4 KiB cluster
    writes += ["write -P 0x7e 600k 64k", "write -c -P 0x7f 1020k 4k"]
    qemu_io(image, *writes, fmt="qcow")
    return image


def test_qcow1_compressed_clusters_match_qemu_and_libqcow(compressed_qcow1: Path, tmp_path: Path) -> None:
    oracle = oracle_raw(compressed_qcow1, "qcow", tmp_path / "c.raw")
    assert libqcow_bytes(compressed_qcow1) == oracle.read_bytes()
    with open_image(compressed_qcow1) as disk:
        assert_same_bytes(disk, oracle)
        _check_spans(disk, oracle, seed=53)
        assert list(disk.extents()) == qemu_data_ranges(compressed_qcow1, "qcow")


def test_qcow1_ext4_file_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "fs.qcow"
    qemu_img("convert", "-f", "raw", "-O", "qcow", ext4_raw, image)
    with open_image(image) as disk:
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100


def test_qcow1_child_over_its_backing_file_matches_qemu(base_raw: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow"
    qemu_img("convert", "-f", "raw", "-O", "qcow", base_raw, base)
    child = tmp_path / "child.qcow"
    qemu_img("create", "-f", "qcow", "-b", base.name, "-F", "qcow", child)
    qemu_io(child, "write -P 0x5a 3m 70k", "write -P 0xa5 31m 2m", "write -P 0x11 1000 10", fmt="qcow")
    oracle = oracle_raw(child, "qcow", tmp_path / "child.raw")
    with open_image(child) as disk:
        info = disk.info()
        assert [layer.format for layer in info.chain] == ["qcow1", "qcow1"]
        assert info.details["backing_file"] == base.name
        _check_spans(disk, oracle, seed=52)


def test_qcow1_missing_backing_file_is_refused_naming_it(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow"
    qemu_img("create", "-f", "qcow", base, "1M")
    child = tmp_path / "child.qcow"
    qemu_img("create", "-f", "qcow", "-b", base.name, "-F", "qcow", child)
    base.unlink()
    with pytest.raises(ImageFormatError, match=r"base\.qcow"):
        open_image(child)


def patched(image: Path, offset: int, fmt: str, value: int) -> Path:
    blob = bytearray(image.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    image.write_bytes(bytes(blob))
    return image


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (32, ">B", 30, "cluster_bits"),
        (33, ">B", 40, "l2_bits"),
        (36, ">I", 1, "AES-encrypted"),
        (36, ">I", 7, "unknown qcow encryption"),
        (24, ">Q", 1 << 63, "absurd"),
        (24, ">Q", 1 << 60, "L1 table of .* runs past the end"),  # 2**39 entries: never read
    ],
)
def test_qcow1_damaged_header_is_refused(
    tmp_path: Path, offset: int, fmt: str, value: int, reason: str
) -> None:
    image = tmp_path / "bad.qcow"
    qemu_img("create", "-f", "qcow", image, "1M")
    patched(image, offset, fmt, value)
    with pytest.raises(ImageFormatError, match=reason):
        open_image(image)


def test_qcow1_corrupt_compressed_cluster_is_refused_on_read(compressed_qcow1: Path) -> None:
    with open_image(compressed_qcow1) as disk:
        entry = disk._entry(0)
    offset = entry & ((1 << (63 - 12)) - 1)
    blob = bytearray(compressed_qcow1.read_bytes())
    blob[offset : offset + 16] = b"\xff" * 16
    compressed_qcow1.write_bytes(bytes(blob))
    with open_image(compressed_qcow1) as disk, pytest.raises(ImageFormatError, match="compressed cluster"):
        disk.read_at(0, 4096)


@pytest.mark.parametrize(
    ("qemu_fmt", "ours"), [("qcow", "qcow1"), ("vdi", "vdi"), ("qed", "qed"), ("parallels", "parallels")]
)
def test_qcow2_over_a_backing_file_of_a_new_format_matches_qemu(
    base_raw: Path, tmp_path: Path, qemu_fmt: str, ours: str
) -> None:
    base = tmp_path / f"base.{qemu_fmt}"
    qemu_img("convert", "-f", "raw", "-O", qemu_fmt, base_raw, base)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", qemu_fmt, top)
    qemu_io(top, "write -P 0x77 5m 1m", fmt="qcow2")
    oracle = oracle_raw(top, "qcow2", tmp_path / "top.raw")
    with open_image(top) as disk:
        assert [layer.format for layer in disk.info().chain] == ["qcow2", ours]
        _check_spans(disk, oracle, seed=54)
