"""qcow2 reader against qemu-img convert -O raw (byte for byte) and libqcow as a second reader."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images.qcow2 import Qcow2Image

MiB = 1 << 20


def mixed_raw(path: Path, size: int = 4 * MiB, seed: int = 1) -> Path:
    """A raw disk of compressible text, incompressible noise and holes, in 64 KiB pieces."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        for start in range(0, size, 64 << 10):
            choice = rng.random()
            if choice < 0.4:
                f.write((f"block {start:#x} of the evidence\n".encode() * 4096)[: 64 << 10])
            elif choice < 0.7:
                f.write(rng.randbytes(64 << 10))
            else:
                f.write(bytes(64 << 10))
    return path


def check_against_qemu(image: Path, tmp_path: Path) -> None:
    expected = oracle_raw(image, "qcow2", tmp_path / f"{image.stem}.oracle.raw")
    with open_image(image) as disk:
        assert isinstance(disk, Qcow2Image)
        assert_same_bytes(disk, expected)
        assert disk.info().warnings == ()


def write_pattern(image: Path) -> None:
    qemu_io(
        image,
        "write -P 0x41 0 64k",
        "write -P 0x42 100k 300k",
        "write -P 0x43 1M 1536",
        "write -P 0x44 3M 1M",
        fmt="qcow2",
    )


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_qcow2_v2_and_v3_with_scattered_writes_match_qemu(tmp_path: Path, compat: str) -> None:
    image = tmp_path / f"compat{compat}.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"compat={compat}", image, "5M")
    write_pattern(image)
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.info().details["version"] == (2 if compat == "0.10" else 3)


def test_qcow2_zero_clusters_written_with_write_zeroes_read_as_zeros(tmp_path: Path) -> None:
    image = tmp_path / "z.qcow2"
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "2M")
    qemu_io(base, "write -P 0x77 0 2M", fmt="qcow2")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", image, "2M")
    qemu_io(image, "write -z 64k 128k", "write -P 0x12 1M 64k", fmt="qcow2")
    check_against_qemu(image, tmp_path)


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_qcow2_compressed_clusters_match_qemu(tmp_path: Path, compression: str) -> None:
    raw = mixed_raw(tmp_path / "src.raw")
    image = tmp_path / f"{compression}.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"compression_type={compression}", raw, image)
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.info().details["compression_type"] == compression


def test_qcow2_compressed_image_agrees_with_libqcow(tmp_path: Path) -> None:
    pyqcow = pytest.importorskip("pyqcow")
    raw = mixed_raw(tmp_path / "src.raw", seed=7)
    image = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compat=0.10", raw, image)
    theirs = pyqcow.file()
    theirs.open(str(image))
    try:
        with open_image(image) as disk:
            assert disk.size == theirs.get_media_size()
            rng = random.Random(3)
            spans = [(0, disk.size)] + [
                (rng.randrange(disk.size), rng.randrange(1, 200_000)) for _ in range(50)
            ]
            for offset, length in spans:
                length = min(length, disk.size - offset)
                theirs.seek(offset)
                assert disk.read_at(offset, length) == theirs.read(length), f"differs at {offset}+{length}"
    finally:
        theirs.close()


def test_qcow2_extended_l2_partial_subcluster_writes_over_a_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "3M")
    qemu_io(base, "write -P 0x55 0 3M", fmt="qcow2")
    image = tmp_path / "ext.qcow2"
    qemu_img(
        "create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", "-b", base, "-F", "qcow2", image
    )
    qemu_io(
        image,
        "write -P 0x61 2k 2k",  # one 2 KiB subcluster in the middle of a cluster
        "write -P 0x62 70k 5000",  # spans three subclusters, partially
        "write -z 130k 4k",  # zero subclusters over backing data
        "write -P 0x63 1M 64k",  # a whole cluster
        fmt="qcow2",
    )
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.info().details["extended_l2"] is True
        assert disk.read_at(0, 2048) == b"\x55" * 2048  # unallocated subcluster: from the backing file
        assert disk.read_at(130 << 10, 4096) == bytes(4096)


def test_qcow2_extended_l2_without_backing_file(tmp_path: Path) -> None:
    image = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", image, "4M")
    write_pattern(image)
    check_against_qemu(image, tmp_path)


@pytest.mark.parametrize("cluster_size", ["512", "2M"])
def test_qcow2_smallest_and_largest_cluster_sizes(tmp_path: Path, cluster_size: str) -> None:
    image = tmp_path / f"cs{cluster_size}.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", image, "5M")
    write_pattern(image)
    check_against_qemu(image, tmp_path)
    raw = mixed_raw(tmp_path / "src.raw", size=3 * MiB)
    compressed = tmp_path / f"cs{cluster_size}c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", raw, compressed)
    check_against_qemu(compressed, tmp_path)


def build_chain(tmp_path: Path) -> Path:
    """raw (2 MiB) <- qcow2 (3 MiB) <- qcow2 (4 MiB), a write in each layer, overlapping."""
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", base, "2M")
    qemu_io(base, "write -P 0x10 0 2M", fmt="raw")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", mid, "3M")
    qemu_io(mid, "write -P 0x20 64k 64k", "write -P 0x21 1984k 128k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", top, "4M")
    qemu_io(top, "write -P 0x30 96k 64k", "write -P 0x31 3M 4k", "write -z 0 4k", fmt="qcow2")
    return top


def test_qcow2_backing_chain_of_three_with_raw_base_shorter_than_the_disk(tmp_path: Path) -> None:
    top = build_chain(tmp_path)
    check_against_qemu(top, tmp_path)
    with open_image(top) as disk:
        chain = disk.info().chain
        assert [layer.format for layer in chain] == ["qcow2", "qcow2", "raw"]
        assert chain[0].identifiers == {"backing_file": "mid.qcow2", "backing_format": "qcow2"}
        assert disk.read_at(2 * MiB + 512 * 1024, 16) == bytes(16)  # past the raw base: zeros


def test_qcow2_missing_backing_file_is_refused_naming_it(tmp_path: Path) -> None:
    top = build_chain(tmp_path)
    (tmp_path / "base.raw").unlink()
    with pytest.raises(ImageFormatError, match=r"base\.raw"):
        open_image(top)


def test_qcow2_backing_file_named_by_absolute_path_is_found_beside_the_image(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    base = origin / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0x5a 0 1M", fmt="qcow2")
    top = origin / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.resolve(), "-F", "qcow2", top)
    moved = tmp_path / "evidence"
    shutil.move(origin, moved)
    with open_image(moved / "top.qcow2") as disk:
        assert disk.parent is not None and disk.parent.path == str(moved / "base.qcow2")
        assert disk.read_at(0, 4) == b"\x5a" * 4


def test_qcow2_internal_snapshots_are_listed_and_the_current_state_is_read(tmp_path: Path) -> None:
    image = tmp_path / "snap.qcow2"
    qemu_img("create", "-f", "qcow2", image, "2M")
    qemu_io(image, "write -P 0x01 0 1M", fmt="qcow2")
    qemu_img("snapshot", "-c", "before-incident", image)
    qemu_io(image, "write -P 0x02 512k 1M", fmt="qcow2")
    qemu_img("snapshot", "-c", "after", image)
    check_against_qemu(image, tmp_path)
    listing = subprocess.run(["qemu-img", "snapshot", "-l", image], capture_output=True, text=True).stdout
    with open_image(image) as disk:
        snapshots = disk.info().details["snapshots"]
    assert [s["name"] for s in snapshots] == ["before-incident", "after"]
    for snap in snapshots:
        assert snap["vm_state_size"] == 0 and snap["vm_clock_nsec"] == 0
        assert f"{snap['id']} " in listing and snap["name"] in listing
        assert snap["date"].startswith("20")


@pytest.mark.parametrize("encryption", ["luks", "aes"])
def test_qcow2_encrypted_image_is_refused_clearly(tmp_path: Path, encryption: str) -> None:
    image = tmp_path / "enc.qcow2"
    options = f"encrypt.format={encryption},encrypt.key-secret=s0"
    if encryption == "luks":  # QEMU benchmarks PBKDF2 first; its CPU-time probe fails now and then
        options += ",encrypt.iter-time=10"
    command = ["qemu-img", "create", "-f", "qcow2", "--object", "secret,id=s0,data=x", "-o", options]
    for _attempt in range(3):
        done = subprocess.run([*command, str(image), "1M"], capture_output=True, text=True)
        if "Unable to get accurate CPU usage" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr
    with pytest.raises(ImageFormatError, match=f"encrypted \\({encryption.upper()}"):
        open_image(image)


def test_qcow2_external_data_file_is_read_and_its_absence_refused(tmp_path: Path) -> None:
    image = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'ext.data'}", image, "2M")
    qemu_io(image, "write -P 0x66 64k 200k", "write -P 0x67 1M 4k", fmt="qcow2")
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.info().identifiers["data_file"] == str(tmp_path / "ext.data")
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ImageFormatError, match=r"ext\.data"):
        open_image(image)


def set_incompatible_bits(image: Path, bits: int) -> None:
    with image.open("r+b") as f:
        f.seek(72)
        value = int.from_bytes(f.read(8), "big") | bits
        f.seek(72)
        f.write(value.to_bytes(8, "big"))


@pytest.mark.parametrize(("bit", "word"), [(0, "dirty"), (1, "corrupt")])
def test_qcow2_dirty_or_corrupt_bit_warns_and_strict_refuses(tmp_path: Path, bit: int, word: str) -> None:
    image = tmp_path / "flag.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 0x11 0 4k", fmt="qcow2")
    set_incompatible_bits(image, 1 << bit)
    with open_image(image) as disk:
        assert any(word in w for w in disk.info().warnings)
        assert disk.read_at(0, 4) == b"\x11" * 4
    with pytest.raises(ImageFormatError, match=word):
        open_image(image, strict=True)


def test_qcow2_unknown_incompatible_feature_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "future.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    set_incompatible_bits(image, 1 << 9)
    with pytest.raises(ImageFormatError, match="unknown incompatible qcow2 features: bit 9"):
        open_image(image)


def test_qcow2_allocated_bytes_and_extents_follow_the_l2_tables(tmp_path: Path) -> None:
    image = tmp_path / "alloc.qcow2"
    qemu_img("create", "-f", "qcow2", image, "8M")
    qemu_io(image, "write -P 0x01 0 64k", "write -P 0x02 1M 128k", "write -z 2M 64k", fmt="qcow2")
    with open_image(image) as disk:
        assert list(disk.extents()) == [(0, 64 << 10), (MiB, 128 << 10)]
        assert disk.info().allocated == 192 << 10


def test_ext4_inside_a_qcow2_chain_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path) -> None:
    pytsk3 = pytest.importorskip("pytsk3")
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", ext4_raw, base)  # compressed base layer
    changed = tmp_path / "changed.raw"
    shutil.copyfile(ext4_raw, changed)
    note = tmp_path / "note.txt"
    note.write_text("written after the base image was taken\n")
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {note} docs/note.txt", str(changed)], check=True, capture_output=True
    )
    full = tmp_path / "full.qcow2"
    qemu_img("convert", "-O", "qcow2", changed, full)
    top = tmp_path / "top.qcow2"  # an overlay of full, rebased onto base: keeps only what differs
    qemu_img("create", "-f", "qcow2", "-b", full.name, "-F", "qcow2", top)
    qemu_img("rebase", "-b", base.name, "-F", "qcow2", top)
    full.unlink()
    check_against_qemu(top, tmp_path)
    with open_image(top) as disk:
        assert disk.parent is not None and disk.info().allocated < disk.parent.info().allocated
        fs = pytsk3.FS_Info(disk.as_tsk())
        secret = fs.open("/docs/secret.txt")
        assert secret.read_random(0, secret.info.meta.size) == b"the quick brown fox\n" * 100
        added = fs.open("/docs/note.txt")
        assert added.read_random(0, added.info.meta.size) == note.read_bytes()
        big = fs.open("/big.bin")
        assert big.read_random(0, big.info.meta.size) == (tmp_path / "big.bin").read_bytes()


def test_qcow2_clusters_stored_out_of_guest_order_read_back_in_order(tmp_path: Path) -> None:
    image = tmp_path / "reverse.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    writes = [f"write -P {0x10 + n} {n * 64}k 64k" for n in reversed(range(8))]  # last guest cluster first
    qemu_io(image, *writes, "write -z 192k 64k", "write -P 0x7f 256k 4k", fmt="qcow2")
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.read_at(60 << 10, 8 << 10) == b"\x10" * 4096 + b"\x11" * 4096


def test_qcow2_zstd_without_the_zstandard_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = mixed_raw(tmp_path / "src.raw", size=MiB)
    image = tmp_path / "zstd.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, image)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    with open_image(image) as disk:
        assert disk.info().details["compression_type"] == "zstd"  # the metadata is still readable
        with pytest.raises(ImageFormatError, match=r"pip install vmforensics\[zstd\]"):
            disk.read_at(0, disk.size)


def test_qcow2_compressed_cluster_ending_the_file_mid_sector(tmp_path: Path) -> None:
    """The last guest cluster is compressed and its data are the last bytes of the file."""
    raw = tmp_path / "src.raw"
    raw.write_bytes(bytes(960 << 10) + (b"the last cluster compresses well\n" * 2000)[: 64 << 10])
    image = tmp_path / "tail.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", raw, image)
    check_against_qemu(image, tmp_path)
    with open_image(image) as disk:
        assert disk.read_at(disk.size - 4096, 4096) == raw.read_bytes()[-4096:]
