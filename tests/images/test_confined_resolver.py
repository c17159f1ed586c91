"""open_image follows extents, parents and backing files only beneath the image's folder tree (or
roots the caller allows), through no symbolic link, to regular files only; loops and depth are
refused for every format; header-derived limits scale with the image (VHDX made by qemu-img).

The "examiner's files" used as bait are files these tests create outside the image's folder.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest

from tests.deadline import within
from tests.images.conftest import qemu_img, qemu_io
from tests.images.vhdx_builders import crc32c_into, gbytes
from tests.images.vmdk_builders import write_descriptor
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images.base import MAX_CHAIN_DEPTH

MiB = 1 << 20


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    """tmp/examiner/passwd (bait, 1 MiB of 'E') and tmp/store/vm/ (the image's folder)."""
    examiner = tmp_path / "examiner"
    examiner.mkdir()
    (examiner / "passwd").write_bytes(b"E" * MiB)
    vm = tmp_path / "store" / "vm"
    vm.mkdir(parents=True)
    return {"examiner": examiner, "vm": vm}


def qcow2_backed_by(image: Path, backing: str, fmt: str = "raw") -> Path:
    """A qcow2 whose header names ``backing`` verbatim (written unsafely: nothing is resolved)."""
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_img("rebase", "-u", "-b", backing, "-F", fmt, "-f", "qcow2", image)
    return image


def test_qcow2_backing_file_dot_dot_into_the_examiners_files_is_refused_naming_it(case) -> None:
    reference = "../../examiner/passwd"
    top = qcow2_backed_by(case["vm"] / "disk.qcow2", reference)
    with pytest.raises(ImageFormatError) as caught:
        open_image(top)
    message = str(caught.value)
    assert repr(reference) in message and "outside the image's folder tree" in message
    assert str(case["examiner"] / "passwd") in message


def test_qcow2_backing_file_outside_opens_when_its_root_is_allowed_explicitly(case) -> None:
    top = qcow2_backed_by(case["vm"] / "disk.qcow2", "../../examiner/passwd")
    with open_image(top, allowed_roots=[case["examiner"]]) as disk:
        assert disk.parent is not None and disk.read_at(0, 4) == b"EEEE"


def test_qcow2_absolute_backing_path_to_the_examiners_file_is_not_opened(case) -> None:
    top = qcow2_backed_by(case["vm"] / "disk.qcow2", str(case["examiner"] / "passwd"))
    with pytest.raises(ImageFormatError, match="passwd"):
        open_image(top)


def test_an_absolute_backing_path_inside_the_folder_tree_is_opened_as_named(case) -> None:
    (case["vm"] / "base").mkdir()
    base = case["vm"] / "base" / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0x42 0 64k", fmt="qcow2")
    top = qcow2_backed_by(case["vm"] / "top.qcow2", str(base), fmt="qcow2")
    with open_image(top) as disk:
        assert disk.parent is not None and disk.parent.path == str(base)
        assert disk.read_at(0, 2) == b"BB"


def test_vmdk_flat_extent_dot_dot_into_the_examiners_files_is_refused(case) -> None:
    reference = "../../examiner/passwd"
    desc = write_descriptor(
        case["vm"] / "disk.vmdk", [f'RW 2048 FLAT "{reference}" 0'], create_type="monolithicFlat"
    )
    with pytest.raises(ImageFormatError) as caught:
        open_image(desc)
    assert repr(reference) in str(caught.value) and "outside" in str(caught.value)


def test_vmdk_parent_hint_through_a_directory_symlink_in_the_folder_is_refused(case) -> None:
    os.symlink(case["examiner"], case["vm"] / "etcdir")
    (case["examiner"] / "base.vmdk").write_bytes(b"")  # would be the parent if the link were followed
    (case["vm"] / "child-flat.vmdk").write_bytes(bytes(MiB))
    desc = write_descriptor(
        case["vm"] / "child.vmdk",
        ['RW 2048 FLAT "child-flat.vmdk" 0'],
        create_type="monolithicFlat",
        parent_cid=0x1234,
        parent_hint="etcdir/base.vmdk",
    )
    with pytest.raises(ImageFormatError, match="symbolic link") as caught:
        open_image(desc)
    assert "'etcdir/base.vmdk'" in str(caught.value)


def test_vmdk_extent_that_is_a_symlink_to_the_examiners_file_is_refused(case) -> None:
    os.symlink(case["examiner"] / "passwd", case["vm"] / "disk-flat.vmdk")
    desc = write_descriptor(
        case["vm"] / "disk.vmdk", ['RW 2048 FLAT "disk-flat.vmdk" 0'], create_type="monolithicFlat"
    )
    with pytest.raises(ImageFormatError, match="symbolic link"):
        open_image(desc)


def test_a_fifo_named_as_an_extent_is_refused_without_blocking(case) -> None:
    os.mkfifo(case["vm"] / "disk-flat.vmdk")
    desc = write_descriptor(
        case["vm"] / "disk.vmdk", ['RW 2048 FLAT "disk-flat.vmdk" 0'], create_type="monolithicFlat"
    )
    with pytest.raises(ImageFormatError, match="FIFO"):
        within(20, lambda: open_image(desc), "open_image blocked")


def test_a_fifo_opened_as_the_image_itself_is_refused_without_blocking(case) -> None:
    os.mkfifo(case["vm"] / "disk.qcow2")
    with pytest.raises(ImageFormatError, match="FIFO"):
        within(20, lambda: open_image(case["vm"] / "disk.qcow2"), "open_image blocked")


def test_a_character_device_named_as_an_extent_is_refused_and_never_read(case) -> None:
    os.mknod(case["vm"] / "zero-flat.vmdk", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    desc = write_descriptor(
        case["vm"] / "disk.vmdk", ['RW 2048 FLAT "zero-flat.vmdk" 0'], create_type="monolithicFlat"
    )
    with pytest.raises(ImageFormatError, match="character device"):
        open_image(desc)


def test_qcow2_backing_loop_is_refused(case) -> None:
    a, b = case["vm"] / "a.qcow2", case["vm"] / "b.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    qcow2_backed_by(b, "a.qcow2", fmt="qcow2")
    qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "-f", "qcow2", a)
    with pytest.raises(ImageFormatError, match="loops back"):
        open_image(a)


def test_qcow2_backing_itself_is_refused(case) -> None:
    a = qcow2_backed_by(case["vm"] / "a.qcow2", "a.qcow2", fmt="qcow2")
    with pytest.raises(ImageFormatError, match="loops back"):
        open_image(a)


def test_a_loop_through_a_hard_link_under_another_name_is_refused(case) -> None:
    a = case["vm"] / "a.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    os.link(a, case["vm"] / "other-name.qcow2")
    qemu_img("rebase", "-u", "-b", "other-name.qcow2", "-F", "qcow2", "-f", "qcow2", a)
    with pytest.raises(ImageFormatError, match="loops back"):
        open_image(a)


def test_a_chain_deeper_than_the_limit_is_refused_not_a_recursion_error(case) -> None:
    blob = bytearray(
        (qcow2_backed_by(case["vm"] / "seed.qcow2", "layer-0000.qcow2", fmt="qcow2")).read_bytes()
    )
    name_at, name_len = struct.unpack_from(">QI", blob, 8)
    for index in range(MAX_CHAIN_DEPTH + 2):  # layer-i is backed by layer-(i+1): a chain without end
        blob[name_at : name_at + name_len] = f"layer-{index + 1:04d}.qcow2".encode()
        (case["vm"] / f"layer-{index:04d}.qcow2").write_bytes(blob)
    with pytest.raises(ImageFormatError, match=f"deeper than {MAX_CHAIN_DEPTH}"):
        open_image(case["vm"] / "layer-0000.qcow2")


def test_a_chain_as_deep_as_the_limit_opens(case) -> None:
    seed = qcow2_backed_by(case["vm"] / "seed.qcow2", "layer-0000.qcow2", fmt="qcow2")
    blob = bytearray(seed.read_bytes())
    name_at, name_len = struct.unpack_from(">QI", blob, 8)
    layers = MAX_CHAIN_DEPTH - 1
    for index in range(layers):
        blob[name_at : name_at + name_len] = f"layer-{index + 1:04d}.qcow2".encode()
        (case["vm"] / f"layer-{index:04d}.qcow2").write_bytes(blob)
    qemu_img("create", "-f", "qcow2", case["vm"] / f"layer-{layers:04d}.qcow2", "1M")
    qemu_io(case["vm"] / f"layer-{layers:04d}.qcow2", "write -P 0x61 0 4k", fmt="qcow2")
    with open_image(case["vm"] / "layer-0000.qcow2") as disk:
        assert len(disk.info().chain) == MAX_CHAIN_DEPTH and disk.read_at(0, 3) == b"aaa"


def test_qcow2_v3_header_of_104_bytes_is_an_image_format_error(case) -> None:
    full = qemu_img("create", "-f", "qcow2", case["vm"] / "full.qcow2", "1M") and (case["vm"] / "full.qcow2")
    raw = bytearray(full.read_bytes()[:104])
    struct.pack_into(">I", raw, 100, 112)  # header_length says 112, the file ends at 104
    (case["vm"] / "short.qcow2").write_bytes(raw)
    with pytest.raises(ImageFormatError, match="past the end"):
        open_image(case["vm"] / "short.qcow2")


def qemu_span(image: Path, fmt: str, start_mib: int, count_mib: int, out: Path) -> bytes:
    """``count_mib`` MiB of guest bytes from ``start_mib`` MiB according to qemu-img dd (whose
    ``count`` counts from the start of the disk, skipped blocks included)."""
    qemu_img(
        "dd",
        "-f",
        fmt,
        "-O",
        "raw",
        "bs=1M",
        f"skip={start_mib}",
        f"count={start_mib + count_mib}",
        f"if={image}",
        f"of={out}",
    )
    return out.read_bytes()


@pytest.mark.parametrize(("size", "block"), [("16T", "2M"), ("8T", "1M"), ("64T", "8M")])
def test_qemu_made_vhdx_with_a_bat_over_64_mib_opens_and_reads_like_qemu(
    case, tmp_path: Path, size: str, block: str
) -> None:
    image = case["vm"] / f"big-{size}.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", f"block_size={block}", image, size)
    end = int(json.loads(qemu_img("info", "--output=json", image))["virtual-size"])
    last = end // MiB - 16
    qemu_io(image, f"write -P 0x5a {last * MiB + 12345} 3M", "write -P 0x11 512 4k", fmt="vhdx")
    with open_image(image) as disk:
        assert disk.size == end and disk.info().details["block_size"] == int(block[:-1]) * MiB
        assert disk.read_at(0, 16 * MiB) == qemu_span(image, "vhdx", 0, 16, tmp_path / "head.raw")
        assert disk.read_at(last * MiB, 16 * MiB) == qemu_span(image, "vhdx", last, 16, tmp_path / "tail.raw")
        assert disk.read_at(last * MiB + 12345, 4) == b"\x5a" * 4


def test_a_vhdx_whose_bat_would_run_past_the_end_of_the_file_is_refused_before_allocating(case) -> None:
    image = case["vm"] / "big.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=2M", image, "16T")
    blob = bytearray(image.read_bytes())
    bat_guid = gbytes("2DC27766-F623-4200-9D64-115E9BFD4A08")
    for table_at in (192 * 1024, 256 * 1024):  # both region table copies: move the BAT near the end
        table = bytearray(blob[table_at : table_at + 64 * 1024])
        count = struct.unpack_from("<I", table, 8)[0]
        for entry in range(16, 16 + 32 * count, 32):
            if table[entry : entry + 16] == bat_guid:
                struct.pack_into("<Q", table, entry + 16, len(blob) - 8 * MiB)
        crc32c_into(table)
        blob[table_at : table_at + 64 * 1024] = table
    image.write_bytes(blob)
    with pytest.raises(ImageFormatError, match=r"BAT of .* runs past the end"):
        open_image(image)


def test_a_callers_opener_takes_responsibility_and_is_not_confined(case) -> None:
    top = qcow2_backed_by(case["vm"] / "disk.qcow2", "../../examiner/passwd")
    asked: list[str] = []

    def opener(path: str):
        asked.append(path)
        return open(path, "rb")

    with open_image(top, opener=opener) as disk:
        assert disk.read_at(0, 1) == b"E"
    assert asked[-1].endswith("examiner/passwd")


def test_a_relative_image_path_in_a_subfolder_finds_its_extent(case, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", case["vm"] / "d.vmdk", "1M")
    monkeypatch.chdir(case["vm"].parent)
    with open_image("vm/d.vmdk") as disk:
        assert disk.size == MiB and disk.info().files == ("vm/d.vmdk", "vm/d-flat.vmdk")
