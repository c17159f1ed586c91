"""QED reader against qemu-img: plain images, backing chains, zeroed clusters, damaged headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from tests.images.new_formats import qemu_data_ranges, read_tsk_file
from tests.images.test_read_paths import _check_spans
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

MiB = 1 << 20


@pytest.mark.parametrize("cluster", ["4k", "64k"])
def test_qed_of_mixed_data_text_and_holes_matches_qemu(base_raw: Path, tmp_path: Path, cluster: str) -> None:
    image = tmp_path / "disk.qed"
    qemu_img("convert", "-f", "raw", "-O", "qed", "-o", f"cluster_size={cluster}", base_raw, image)
    with open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("qed", "qed", ())
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=21)
        assert list(disk.extents()) == qemu_data_ranges(image, "qed")


def test_qed_ext4_file_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "fs.qed"
    qemu_img("convert", "-f", "raw", "-O", "qed", ext4_raw, image)
    with open_image(image) as disk:
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100


@pytest.mark.parametrize("backing_fmt", ["qed", "raw"])
def test_qed_child_over_its_backing_file_with_zeroed_clusters_matches_qemu(
    base_raw: Path, tmp_path: Path, backing_fmt: str
) -> None:
    base = tmp_path / f"base.{backing_fmt}"
    qemu_img("convert", "-f", "raw", "-O", backing_fmt, base_raw, base)
    child = tmp_path / "child.qed"
    qemu_img("create", "-f", "qed", "-o", "cluster_size=4k", "-b", base.name, "-F", backing_fmt, child)
    qemu_io(child, "write -P 0x5a 3m 70k", "write -P 0xa5 31m 2m", "write -z 12m 1m", fmt="qed")
    oracle = oracle_raw(child, "qed", tmp_path / "child.raw")
    with open_image(child) as disk:
        info = disk.info()
        assert [layer.format for layer in info.chain] == ["qed", "qed" if backing_fmt == "qed" else "raw"]
        assert info.all_warnings == []  # a raw backing file is named raw by the header: no probe, no warning
        assert info.details["backing_file"] == base.name
        _check_spans(disk, oracle, seed=22)
        assert disk.read_at(12 * MiB, MiB) == bytes(MiB)  # zeroed over the parent's data


def test_qed_missing_backing_file_is_refused_naming_it(tmp_path: Path) -> None:
    base = tmp_path / "base.qed"
    qemu_img("create", "-f", "qed", base, "1M")
    child = tmp_path / "child.qed"
    qemu_img("create", "-f", "qed", "-b", base.name, "-F", "qed", child)
    base.unlink()
    with pytest.raises(ImageFormatError, match=r"base\.qed"):
        open_image(child)


def patched(image: Path, offset: int, fmt: str, value: int) -> Path:
    blob = bytearray(image.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    image.write_bytes(bytes(blob))
    return image


@pytest.fixture
def small_qed(tmp_path: Path) -> Path:
    image = tmp_path / "small.qed"
    qemu_img("create", "-f", "qed", "-o", "cluster_size=4k", image, "1M")
    qemu_io(image, "write -P 0x41 0 12k", fmt="qed")
    return image


def test_qed_marked_as_needing_a_check_warns_and_strict_refuses(small_qed: Path) -> None:
    patched(small_qed, 16, "<Q", 0x02)
    with open_image(small_qed) as disk:
        assert any("consistency check" in w for w in disk.info().warnings)
        assert disk.read_at(0, 4) == b"AAAA"
    with pytest.raises(ImageFormatError, match="consistency check"):
        open_image(small_qed, strict=True)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (4, "<I", 3000, "cluster size"),
        (8, "<I", 3, "table size"),
        (16, "<Q", 0x10, "unknown QED feature"),
        (40, "<Q", 12345, "L1 table offset"),
        (48, "<Q", 1 << 62, "image size"),
    ],
)
def test_qed_damaged_header_is_refused_with_its_offset(
    small_qed: Path, offset: int, fmt: str, value: int, reason: str
) -> None:
    patched(small_qed, offset, fmt, value)
    with pytest.raises(ImageFormatError, match=reason) as caught:
        open_image(small_qed)
    assert caught.value.offset == offset


def test_qed_misaligned_data_cluster_is_refused_with_the_offset_of_its_l2_entry(tmp_path: Path) -> None:
    image = tmp_path / "bad.qed"
    qemu_img("create", "-f", "qed", "-o", "cluster_size=4k", image, "1M")
    qemu_io(image, "write -P 0x41 0 4k", fmt="qed")
    blob = bytearray(image.read_bytes())
    (l1,) = struct.unpack_from("<Q", blob, 40)  # the QED header's l1_table_offset
    (l2,) = struct.unpack_from("<Q", blob, l1)
    (data,) = struct.unpack_from("<Q", blob, l2)
    struct.pack_into("<Q", blob, l2, data + 512)
    image.write_bytes(bytes(blob))
    with (
        open_image(image) as disk,
        pytest.raises(ImageFormatError, match="misaligned data cluster") as caught,
    ):
        disk.read_at(0, 4096)
    assert caught.value.offset == l2
