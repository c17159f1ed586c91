"""VHD reader against qemu-img (fixed, dynamic) and libvhdi (differencing, built from the spec)."""

from __future__ import annotations

import hashlib
import itertools
import random
import shutil
import tracemalloc
from pathlib import Path

import pytest
import pytsk3
import pyvhdi

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io, sha256_of
from tests.images.vhd_builders import build_differencing_vhd, footer_of
from vmforensics.errors import ImageFormatError
from vmforensics.images.bitmap import SectorRuns
from vmforensics.images.open import open_image


def read_tsk_file(disk, path: str) -> bytes:
    fs = pytsk3.FS_Info(disk.as_tsk())
    entry = fs.open(path)
    return entry.read_random(0, entry.info.meta.size)


def footer_size(path: Path) -> int:
    return int.from_bytes(footer_of(path)[48:56], "big")


@pytest.fixture
def patterned_vhd(tmp_path: Path) -> Path:
    """A 16 MiB dynamic VHD with writes that start and end inside blocks and sectors."""
    image = tmp_path / "parent.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", image, "16M")
    qemu_io(image, "write -P 0x41 0 64k", "write -P 0x42 1536k 1m", "write -P 0x43 9m 3m", fmt="vpc")
    return image


def test_vhd_dynamic_ext4_matches_qemu_and_reads_a_file(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", ext4_raw, image)
    with open_image(image) as disk:
        assert disk.info().subtype == "dynamic" and disk.info().warnings == ()
        assert_same_bytes(disk, oracle_raw(image, "vpc", tmp_path / "oracle.raw"))
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100


def test_vhd_fixed_size_is_the_footer_size_not_the_file_size(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "fixed.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", ext4_raw, image)
    oracle = oracle_raw(image, "vpc", tmp_path / "oracle.raw")
    with open_image(image) as disk:
        assert disk.info().subtype == "fixed"
        assert disk.size == footer_size(image) == image.stat().st_size - 512
        # qemu may count the footer as data: only the footer's current size is guest data
        assert oracle.stat().st_size in (disk.size, disk.size + 512)
        with oracle.open("r+b") as f:
            f.truncate(disk.size)
        assert_same_bytes(disk, oracle)
        assert read_tsk_file(disk, "/big.bin") == hashlib.sha256(b"seed").digest() * 40000


def test_vhd_dynamic_unaligned_writes_and_random_reads_match_qemu(
    tmp_path: Path, patterned_vhd: Path
) -> None:
    oracle = oracle_raw(patterned_vhd, "vpc", tmp_path / "oracle.raw").read_bytes()
    rng = random.Random(4)
    with open_image(patterned_vhd) as disk:
        assert_same_bytes(disk, tmp_path / "oracle.raw")
        for _ in range(300):
            offset = rng.randrange(disk.size)
            length = rng.choice([1, 511, 4096, 70000, 3 << 20])
            assert disk.read_at(offset, length) == oracle[offset : offset + length]
        assert list(disk.extents()) == [(0, 4 << 20), (8 << 20, 4 << 20)]


def expected_child(parent_raw: bytes, writes: dict[int, bytes]) -> bytes:
    out = bytearray(parent_raw)
    for offset, payload in writes.items():
        out[offset : offset + len(payload)] = payload
    return bytes(out)


# libvhdi reads a partly set VHD bitmap byte wrongly (it tests ``byte >> (7 - bit)`` without masking),
# so writes compared with it cover whole bitmap bytes (8 sectors); see the sector-granular test below.
CHILD_WRITES = {
    0: b"\x11" * 4096,  # the first 8 sectors of a parent block, the rest from the parent
    8192: b"\x12" * 8192,
    (2 << 20) - 4096: b"\x13" * 8192,  # straddles two blocks
    6 << 20: bytes(range(256)) * (8 << 10),  # a whole 2 MiB block (6..8 MiB)
    14 << 20: b"\x14" * 4096,  # a block the parent never allocated
}


def pyvhdi_chain_bytes(child: Path, parent: Path) -> bytes:
    base = pyvhdi.file()
    base.open(str(parent))
    top = pyvhdi.file()
    top.open(str(child))
    top.set_parent(base)
    try:
        return top.read_buffer_at_offset(top.media_size, 0)
    finally:
        top.close()
        base.close()


def test_vhd_differencing_matches_libvhdi_and_the_written_sectors(
    tmp_path: Path, patterned_vhd: Path
) -> None:
    child = tmp_path / "child.vhd"
    build_differencing_vhd(child, patterned_vhd, CHILD_WRITES)
    parent_raw = oracle_raw(patterned_vhd, "vpc", tmp_path / "parent.raw").read_bytes()
    want = expected_child(parent_raw, CHILD_WRITES)
    assert pyvhdi_chain_bytes(child, patterned_vhd) == want  # the fixture is what libvhdi reads
    with open_image(child) as disk:
        info = disk.info()
        assert info.subtype == "differencing" and info.warnings == ()
        assert info.identifiers["parent_unique_id"] == disk.parent.info().identifiers["unique_id"]
        assert [layer.format for layer in info.chain] == ["vhd", "vhd"]
        assert disk.read() == want
        assert disk.read_at((2 << 20) - 600, 1200) == want[(2 << 20) - 600 : (2 << 20) + 600]


def test_vhd_differencing_sector_granular_bitmap_reads_each_sector(
    tmp_path: Path, patterned_vhd: Path
) -> None:
    writes = {512: b"\x21" * 512, 1536: b"\x22" * 1024, (1 << 20) + 3584: b"\x23" * 1024}
    child = tmp_path / "child.vhd"
    build_differencing_vhd(child, patterned_vhd, writes)
    parent_raw = oracle_raw(patterned_vhd, "vpc", tmp_path / "parent.raw").read_bytes()
    want = expected_child(parent_raw, writes)
    with open_image(child) as disk:
        assert disk.read_at(0, 2 << 20) == want[: 2 << 20]


def test_vhd_differencing_falls_back_to_the_absolute_locator(tmp_path: Path, patterned_vhd: Path) -> None:
    child = tmp_path / "child.vhd"
    build_differencing_vhd(
        child, patterned_vhd, {0: b"\x01" * 512}, relative_locator="..\\elsewhere\\gone.vhd",
        absolute_locator=f"D:\\Hyper-V\\{patterned_vhd.name}",
    )  # fmt: skip
    with open_image(child) as disk:
        assert disk.parent is not None and Path(disk.parent.path).name == patterned_vhd.name
        assert disk.read_at(0, 513) == b"\x01" * 512 + b"\x41"


def test_vhd_differencing_missing_parent_is_refused_naming_it(tmp_path: Path, patterned_vhd: Path) -> None:
    child = tmp_path / "child.vhd"
    build_differencing_vhd(child, patterned_vhd, {0: b"\x01" * 512})
    patterned_vhd.unlink()
    with pytest.raises(ImageFormatError, match=r"parent\.vhd"):
        open_image(child)


def test_vhd_differencing_parent_id_mismatch_warns_and_strict_refuses(
    tmp_path: Path, patterned_vhd: Path
) -> None:
    child = tmp_path / "child.vhd"
    build_differencing_vhd(child, patterned_vhd, {0: b"\x01" * 512}, parent_unique_id=b"\x99" * 16)
    with open_image(child) as disk:
        assert any("unique id" in w for w in disk.info().warnings)
        assert disk.read_at(0, 513) == b"\x01" * 512 + b"\x41"  # still readable
    with pytest.raises(ImageFormatError, match="unique id"):
        open_image(child, strict=True)


def corrupt(path: Path, offset: int, raw: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(raw)


def test_vhd_bad_footer_checksum_warns_and_strict_refuses(tmp_path: Path) -> None:
    image = tmp_path / "fixed.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", image, "4M")
    corrupt(image, image.stat().st_size - 512 + 64, b"\0\0\0\1")
    with open_image(image) as disk:
        assert any("checksum" in w for w in disk.info().warnings)
        assert disk.size == footer_size(image)
    with pytest.raises(ImageFormatError, match="checksum"):
        open_image(image, strict=True)


def test_vhd_damaged_trailing_footer_uses_the_copy_at_offset_0(tmp_path: Path, patterned_vhd: Path) -> None:
    oracle = oracle_raw(patterned_vhd, "vpc", tmp_path / "oracle.raw")
    corrupt(patterned_vhd, patterned_vhd.stat().st_size - 512 + 40, b"\xff" * 8)  # original size field
    with open_image(patterned_vhd) as disk:
        assert any("copy at offset 0" in w for w in disk.info().warnings)
        assert_same_bytes(disk, oracle)


def test_vhd_bad_dynamic_header_checksum_warns(tmp_path: Path, patterned_vhd: Path) -> None:
    corrupt(patterned_vhd, 512 + 36, b"\0\0\0\0")
    with open_image(patterned_vhd) as disk:
        assert any("dynamic header checksum" in w for w in disk.info().warnings)
    with pytest.raises(ImageFormatError, match="dynamic header checksum"):
        open_image(patterned_vhd, strict=True)


def test_vhd_truncated_file_raises_with_an_offset(tmp_path: Path, patterned_vhd: Path) -> None:
    with patterned_vhd.open("r+b") as f:
        f.truncate(patterned_vhd.stat().st_size // 2)
    with open_image(patterned_vhd) as disk:  # the footer copy at offset 0 still describes it
        assert any("truncated" in w for w in disk.info().warnings)
        with pytest.raises(ImageFormatError) as caught:
            disk.read()
        assert caught.value.offset is not None


def test_vhd_reader_never_writes_the_image(tmp_path: Path, patterned_vhd: Path) -> None:
    child = tmp_path / "child.vhd"
    build_differencing_vhd(child, patterned_vhd, CHILD_WRITES)
    before = sha256_of(child), sha256_of(patterned_vhd)
    with open_image(child) as disk:
        disk.read()
    assert (sha256_of(child), sha256_of(patterned_vhd)) == before


def test_vhd_stream_without_a_name_opens_a_fixed_image(tmp_path: Path) -> None:
    image = tmp_path / "fixed.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", image, "4M")
    qemu_io(image, "write -P 0x5a 1000 3000", fmt="vpc")
    copy = tmp_path / "copy.bin"
    shutil.copy(image, copy)
    with copy.open("rb") as f, open_image(f) as disk:
        assert disk.read_at(1000, 3000) == b"\x5a" * 3000


@pytest.mark.parametrize("msb_first", [True, False])
def test_an_alternating_sector_bitmap_of_a_1_gib_block_is_read_lazily(msb_first: bool) -> None:
    """A VHD may declare 1 GiB blocks (VHDX 256 MiB), whose 256 KiB bitmap, alternating, once
    became two million Python objects (96 MiB, seconds) per block: now only the span read is
    decoded. The runs are checked bit by bit against the bitmap itself."""
    sectors = (1 << 30) // 512
    bitmap = bytearray(b"\x55" * (sectors // 8))
    rng = random.Random(5)
    for at in rng.sample(range(len(bitmap)), 200):
        bitmap[at] = rng.choice((0, 0xFF, rng.randrange(256)))
    tracemalloc.start()
    try:
        runs = SectorRuns(bytes(bitmap), sectors, 512, msb_first=msb_first)
        for _ in range(50):
            start = rng.randrange(sectors * 512 - 70000)
            end = start + rng.randrange(1, 70000)
            pieces = list(runs.spans(start, end))
            assert pieces[0][0] == start and pieces[-1][1] == end
            for (_, stop, _), (following, _, _) in itertools.pairwise(pieces):
                assert stop == following
            for first, stop, present in pieces:
                for sector in range(first // 512, -(-stop // 512)):
                    bit = 7 - sector % 8 if msb_first else sector % 8
                    assert bool(bitmap[sector // 8] >> bit & 1) == present
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"{peak} bytes"
    assert not runs.full and not runs.empty
