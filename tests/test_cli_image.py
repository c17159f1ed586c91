"""``vmforensics image info|ls|cat`` on real images built by qemu-img, mkfs and debugfs/mtools."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.images import conftest as image_oracles
from tests.images.conftest import qemu_img, qemu_io
from vmforensics import cli
from vmforensics.cli import image as image_cli
from vmforensics.errors import ImageFormatError, UsageError

MiB = 1 << 20

ext4_raw = image_oracles.ext4_raw  # the image tests' ext4 file-system fixture


def run(*argv: str | Path) -> int:
    """Parse like the ``vmforensics`` command does and call the handler."""
    parser = argparse.ArgumentParser(prog="vmforensics")
    image_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["image", *map(str, argv)])
    return args.handler(args)


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x01" * MiB)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", top, "2M")
    qemu_io(top, "write -P 0x02 0 64k", fmt="qcow2")
    return top


def test_info_names_format_size_allocation_and_the_chain(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("info", chain) == 0
    out = capsys.readouterr().out
    assert "format     qcow2 v3" in out
    assert "size       2097152 bytes (2.0 MiB)" in out
    assert f"[0] {chain}" in out and f"[1] {chain.parent / 'base.raw'}  raw" in out
    assert "backing_file: base.raw" in out and "warnings:  none" in out


def test_info_json_has_the_whole_chain(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("info", chain, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["size"], info["allocated"]) == ("qcow2", 2 * MiB, 64 << 10)
    assert info["chain"] == [str(chain), str(chain.parent / "base.raw")]
    assert info["parent"]["format"] == "raw" and info["parent"]["size"] == MiB


def test_info_reports_warnings_and_strict_turns_them_into_errors(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with chain.open("r+b") as f:  # set the dirty bit, as a crashed QEMU leaves it
        f.seek(79)
        f.write(b"\x01")
    assert run("info", chain) == 0
    assert "dirty bit set" in capsys.readouterr().out
    with pytest.raises(ImageFormatError, match="dirty"):
        run("info", chain, "--strict")


def write_mbr(disk: Path, partitions: list[tuple[int, int, int]]) -> None:
    """A DOS partition table: (type, first sector, sector count) per primary partition."""
    table = bytearray(512)
    for index, (kind, start, count) in enumerate(partitions):
        struct.pack_into(
            "<B3sB3sII", table, 446 + 16 * index, 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", start, count
        )
    table[510:512] = b"\x55\xaa"
    with disk.open("r+b") as f:
        f.write(table)


@pytest.fixture
def partitioned(tmp_path: Path, ext4_raw: Path) -> Path:
    """A qcow2 disk with an MBR: partition 1 FAT (HELLO.TXT), partition 2 the ext4 file system."""
    fat = tmp_path / "fat.raw"
    with fat.open("wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["mkfs.fat", str(fat)], check=True, capture_output=True)
    hello = tmp_path / "HELLO.TXT"
    hello.write_bytes(b"hello from FAT\n")
    subprocess.run(["mcopy", "-i", str(fat), str(hello), "::HELLO.TXT"], check=True, capture_output=True)
    disk = tmp_path / "disk.raw"
    fat_start, ext_start = 2048, 2048 + 8 * MiB // 512
    with disk.open("wb") as out:
        out.truncate((ext_start * 512) + ext4_raw.stat().st_size)
        out.seek(fat_start * 512)
        out.write(fat.read_bytes())
        out.seek(ext_start * 512)
        with ext4_raw.open("rb") as src:
            shutil.copyfileobj(src, out)
    write_mbr(disk, [(0x06, fat_start, 8 * MiB // 512), (0x83, ext_start, ext4_raw.stat().st_size // 512)])
    image = tmp_path / "disk.qcow2"
    qemu_img("convert", "-O", "qcow2", disk, image)
    return image


def test_ls_and_cat_a_file_system_without_partition_table(
    tmp_path: Path,
    ext4_raw: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    image = tmp_path / "fs.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", ext4_raw, image)
    assert run("ls", image) == 0
    listing = capsysbinary.readouterr().out.decode()
    assert any(line.startswith("d ") and line.endswith(" docs") for line in listing.splitlines())
    assert any(line.startswith("r ") and line.endswith(" big.bin") for line in listing.splitlines())
    assert run("ls", image, "/docs") == 0
    assert f"r {2000:>12} secret.txt" in capsysbinary.readouterr().out.decode()
    assert run("cat", image, "/docs/secret.txt") == 0
    assert capsysbinary.readouterr().out == b"the quick brown fox\n" * 100
    assert run("cat", image, "/big.bin") == 0
    assert capsysbinary.readouterr().out == (tmp_path / "big.bin").read_bytes()


def test_partition_table_first_file_system_by_default_or_the_one_asked_for(
    partitioned: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert run("cat", partitioned, "/HELLO.TXT") == 0
    assert capsysbinary.readouterr().out == b"hello from FAT\n"
    assert run("cat", partitioned, "/docs/secret.txt", "--partition", "2") == 0
    assert capsysbinary.readouterr().out == b"the quick brown fox\n" * 100
    assert run("ls", partitioned, "/", "--partition", "2") == 0
    assert b"big.bin" in capsysbinary.readouterr().out
    with pytest.raises(UsageError, match="--partition 3 does not exist"):
        run("ls", partitioned, "--partition", "3")


def test_cat_refuses_directories_and_missing_paths(tmp_path: Path, ext4_raw: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        run("cat", ext4_raw, "/docs")
    with pytest.raises(UsageError, match="not found"):
        run("cat", ext4_raw, "/docs/nothing.txt")
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(MiB))
    with pytest.raises(ImageFormatError, match="no file system"):
        run("ls", blank)


def test_the_vmforensics_command_runs_image_info(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["image", "info", str(chain)]) == 0
    assert "qcow2" in capsys.readouterr().out
    (chain.parent / "base.raw").unlink()
    assert cli.main(["image", "info", str(chain)]) == 1
    assert "base.raw" in capsys.readouterr().err
