"""VHDX reader against qemu-img (fixed, dynamic, log replay) and libvhdi (differencing)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
import pytsk3
import pyvhdi

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io, sha256_of
from tests.images.vhdx_builders import (
    FULLY_PRESENT,
    NOT_PRESENT,
    UNDEFINED,
    UNMAPPED,
    ZERO,
    MiB,
    VhdxBuilder,
    active_data_write_guid,
    build_dirty_vhdx,
    log_entry,
)
from vmforensics.errors import ImageFormatError
from vmforensics.images.open import open_image
from vmforensics.images.vhdx_layout import HEADER, HEADER_OFFSETS, crc32c
from vmforensics.images.vhdx_log import MAX_DESCRIPTORS

KiB = 1024


def read_tsk_file(disk, path: str) -> bytes:
    fs = pytsk3.FS_Info(disk.as_tsk())
    entry = fs.open(path)
    return entry.read_random(0, entry.info.meta.size)


def corrupt(path: Path, offset: int, raw: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(raw)


@pytest.fixture
def patterned_vhdx(tmp_path: Path) -> Path:
    """A 16 MiB dynamic VHDX (1 MiB blocks) with writes that start and end inside blocks."""
    image = tmp_path / "parent.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", image, "16M")
    qemu_io(image, "write -P 0x41 0 64k", "write -P 0x42 1536k 1m", "write -P 0x43 9m 3m", fmt="vhdx")
    return image


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhdx_ext4_matches_qemu_and_reads_files(tmp_path: Path, ext4_raw: Path, subformat: str) -> None:
    image = tmp_path / "disk.vhdx"
    qemu_img("convert", "-f", "raw", "-O", "vhdx", "-o", f"subformat={subformat}", ext4_raw, image)
    with open_image(image) as disk:
        info = disk.info()
        assert info.format == "vhdx" and info.subtype == subformat and info.warnings == ()
        assert_same_bytes(disk, oracle_raw(image, "vhdx", tmp_path / "oracle.raw"))
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100
        assert read_tsk_file(disk, "/big.bin") == hashlib.sha256(b"seed").digest() * 40000


def test_vhdx_unaligned_writes_and_random_reads_match_qemu(tmp_path: Path, patterned_vhdx: Path) -> None:
    oracle = oracle_raw(patterned_vhdx, "vhdx", tmp_path / "oracle.raw").read_bytes()
    rng = random.Random(5)
    with open_image(patterned_vhdx) as disk:
        assert disk.read() == oracle
        for _ in range(300):
            offset = rng.randrange(disk.size)
            length = rng.choice([1, 511, 4096, 70000, 3 << 20])
            assert disk.read_at(offset, length) == oracle[offset : offset + length]
        assert list(disk.extents()) == [(0, 3 << 20), (9 << 20, 3 << 20)]


def header_sequences(path: Path) -> list[int]:
    with path.open("rb") as f:
        out = []
        for offset in (64 * KiB, 128 * KiB):
            f.seek(offset + 8)
            out.append(int.from_bytes(f.read(8), "little"))
        return out


def test_vhdx_damaged_current_header_falls_back_to_the_other(tmp_path: Path, patterned_vhdx: Path) -> None:
    oracle = oracle_raw(patterned_vhdx, "vhdx", tmp_path / "oracle.raw")
    sequences = header_sequences(patterned_vhdx)
    current = (64 * KiB, 128 * KiB)[sequences.index(max(sequences))]
    corrupt(patterned_vhdx, current + 200, b"\x01")
    with open_image(patterned_vhdx) as disk:
        assert any("header is damaged" in w for w in disk.info().warnings)
        assert_same_bytes(disk, oracle)
    with pytest.raises(ImageFormatError, match="header is damaged"):
        open_image(patterned_vhdx, strict=True)
    corrupt(patterned_vhdx, (64 * KiB + 128 * KiB) - current + 200, b"\x01")
    with pytest.raises(ImageFormatError, match="both VHDX headers") as caught:
        open_image(patterned_vhdx)
    assert caught.value.offset == 64 * KiB


def test_vhdx_damaged_region_table_uses_the_copy(tmp_path: Path, patterned_vhdx: Path) -> None:
    oracle = oracle_raw(patterned_vhdx, "vhdx", tmp_path / "oracle.raw")
    corrupt(patterned_vhdx, 192 * KiB + 20, b"\xee")
    with open_image(patterned_vhdx) as disk:
        assert any("region table is damaged" in w for w in disk.info().warnings)
        assert_same_bytes(disk, oracle)


def test_vhdx_block_states_read_as_qemu_reads_them(tmp_path: Path) -> None:
    builder = VhdxBuilder(8 * MiB)
    junk = b"\xa5" * MiB  # data left behind a block that is no longer fully present
    builder.set_block(0, FULLY_PRESENT, bytes(range(256)) * 4096)
    for block, state in ((1, ZERO), (2, UNDEFINED), (3, UNMAPPED), (4, NOT_PRESENT)):
        builder.set_block(block, state, junk)
    builder.set_block(5, FULLY_PRESENT, b"\x5f" * MiB)
    image = tmp_path / "states.vhdx"
    builder.build(image)
    with open_image(image) as disk:
        assert disk.info().subtype == "dynamic"
        assert_same_bytes(disk, oracle_raw(image, "vhdx", tmp_path / "oracle.raw"))
        assert list(disk.extents()) == [(0, MiB), (5 * MiB, MiB)]


def virtual_size(image: Path) -> int:
    return json.loads(qemu_img("info", "--output=json", image))["virtual-size"]


def differencing_child(tmp_path: Path, parent: Path, writes: dict[int, bytes], **locator: str) -> Path:
    builder = VhdxBuilder(virtual_size(parent))
    builder.locator = {
        "parent_linkage": "{" + str(active_data_write_guid(parent)) + "}",
        "relative_path": f".\\{parent.name}",
        "absolute_win32_path": f"\\\\?\\C:\\Hyper-V\\{parent.name}",
    } | locator
    builder.write_sectors(writes)
    child = tmp_path / "child.avhdx"
    builder.build(child)
    return child


CHILD_WRITES = {
    512: b"\x11" * 1024,  # sectors 1-2 of a parent block: a partially present block
    (1 << 20) - 512: b"\x12" * 1024,  # straddles two blocks
    3 << 20: bytes(range(256)) * 4096,  # a whole 1 MiB block: fully present
    (14 << 20) + 4096: b"\x13" * 512,  # a block the parent never allocated
}


def expected_child(parent_raw: bytes, writes: dict[int, bytes]) -> bytes:
    out = bytearray(parent_raw)
    for offset, payload in writes.items():
        out[offset : offset + len(payload)] = payload
    return bytes(out)


def pyvhdi_chain_bytes(child: Path, parent: Path) -> bytes:
    base, top = pyvhdi.file(), pyvhdi.file()
    base.open(str(parent))
    top.open(str(child))
    top.set_parent(base)
    try:
        return top.read_buffer_at_offset(top.media_size, 0)
    finally:
        top.close()
        base.close()


def test_avhdx_differencing_matches_libvhdi_and_the_written_sectors(
    tmp_path: Path, patterned_vhdx: Path
) -> None:
    child = differencing_child(tmp_path, patterned_vhdx, CHILD_WRITES)
    want = expected_child(
        oracle_raw(patterned_vhdx, "vhdx", tmp_path / "parent.raw").read_bytes(), CHILD_WRITES
    )
    assert pyvhdi_chain_bytes(child, patterned_vhdx) == want
    with open_image(child) as disk:
        info = disk.info()
        assert info.subtype == "differencing" and info.warnings == ()
        assert [layer.format for layer in info.chain] == ["vhdx", "vhdx"]
        assert info.identifiers["parent_linkage"].strip("{}") == info.parent.identifiers["data_write_guid"]
        assert disk.read() == want
        assert disk.read_at((1 << 20) - 700, 1400) == want[(1 << 20) - 700 : (1 << 20) + 700]


def test_vhdx_differencing_missing_parent_is_refused_naming_it(tmp_path: Path, patterned_vhdx: Path) -> None:
    child = differencing_child(tmp_path, patterned_vhdx, {0: b"\x01" * 512})
    patterned_vhdx.rename(tmp_path / "moved.vhdx")
    with pytest.raises(ImageFormatError, match=r"parent\.vhdx"):
        open_image(child)


def test_vhdx_differencing_linkage_mismatch_warns_and_strict_refuses(
    tmp_path: Path, patterned_vhdx: Path
) -> None:
    child = differencing_child(
        tmp_path, patterned_vhdx, {0: b"\x01" * 512}, parent_linkage="{" + str(uuid.uuid4()) + "}"
    )
    with open_image(child) as disk:
        assert any("DataWriteGuid" in w for w in disk.info().warnings)
        assert disk.read_at(0, 513) == b"\x01" * 512 + b"\x41"
    with pytest.raises(ImageFormatError, match="DataWriteGuid"):
        open_image(child, strict=True)


def qemu_replayed_copy(image: Path, tmp_path: Path) -> Path:
    """qemu replays a dirty log when it opens an image read-write: do that on a copy."""
    copy = tmp_path / "qemu-replayed.vhdx"
    shutil.copy(image, copy)
    subprocess.run(["qemu-img", "check", "-r", "all", str(copy)], check=True, capture_output=True)
    return oracle_raw(copy, "vhdx", tmp_path / "qemu-replayed.raw")


def test_vhdx_dirty_log_is_replayed_in_memory_without_writing(tmp_path: Path) -> None:
    image, want = build_dirty_vhdx(tmp_path / "dirty.vhdx")
    before = sha256_of(image)
    refused = subprocess.run(["qemu-img", "info", str(image)], capture_output=True, text=True)
    assert (
        refused.returncode != 0 and "log that needs to be replayed" in refused.stderr
    )  # qemu agrees it is dirty
    with open_image(image) as disk:
        info = disk.info()
        assert info.details["log_replayed_entries"] == 2
        assert info.details["log_sequence_numbers"] == [10, 11]
        assert disk.read() == want
        assert_same_bytes(disk, qemu_replayed_copy(image, tmp_path))
        assert list(disk.extents()) == [(0, 2 * MiB)]
    assert sha256_of(image) == before


def test_vhdx_log_without_a_valid_sequence_warns_and_strict_refuses(tmp_path: Path) -> None:
    image, _ = build_dirty_vhdx(tmp_path / "dirty.vhdx")
    corrupt(image, MiB + 4, b"\0\0\0\0")  # entry 10's checksum: 11 has no tail left in its sequence
    corrupt(image, MiB + 2 * 4 * KiB + 2 * 4 * KiB + 4, b"\0\0\0\0")  # and the stale one
    with open_image(image) as disk:
        assert any("no valid sequence" in w for w in disk.info().warnings)
        assert disk.read_at(0, 4096) == bytes(4096)  # the stale on-disk BAT
    with pytest.raises(ImageFormatError, match="no valid sequence"):
        open_image(image, strict=True)


def test_vhdx_truncated_file_raises_with_an_offset(tmp_path: Path, patterned_vhdx: Path) -> None:
    with patterned_vhdx.open("r+b") as f:
        f.truncate(patterned_vhdx.stat().st_size - 2 * MiB)
    with open_image(patterned_vhdx) as disk, pytest.raises(ImageFormatError) as caught:
        disk.read()
    assert caught.value.offset is not None


def test_vhdx_reader_never_writes_the_chain(tmp_path: Path, patterned_vhdx: Path) -> None:
    child = differencing_child(tmp_path, patterned_vhdx, CHILD_WRITES)
    before = sha256_of(child), sha256_of(patterned_vhdx)
    with open_image(child) as disk:
        disk.read()
    assert (sha256_of(child), sha256_of(patterned_vhdx)) == before


def _dirty_with_a_long_log(
    tmp_path: Path, log_size: str, at_in_log: int, zero_descriptors: int = 0
) -> tuple[Path, bytes]:
    """A qemu-made VHDX with a ``log_size`` log (qemu's own option) holding one entry, at
    ``at_in_log`` within the log, that rewrites guest sector 0..4 KiB of an allocated block,
    then (with ``zero_descriptors``) zeroes the block's 4 KiB sectors in turn, round and round."""
    image = tmp_path / "long-log.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", f"block_size=1M,log_size={log_size}", image, "64M")
    qemu_io(image, "write -P 0x41 0 1M", fmt="vhdx")
    blob = bytearray(image.read_bytes())
    host = blob.find(b"\x41" * MiB)  # where qemu stored block 0 (qemu-img map gives no offsets for VHDX)
    assert host > 0 and host % MiB == 0
    headers = [(HEADER.unpack_from(blob, at), at) for at in HEADER_OFFSETS]
    current, where = max(headers, key=lambda h: h[0][2])  # the higher sequence number
    log_length, log_offset = current[8], current[9]
    log_guid = uuid.uuid4().bytes_le
    blob[where + 48 : where + 64] = log_guid
    blob[where + 4 : where + 8] = bytes(4)
    blob[where + 4 : where + 8] = crc32c(bytes(blob[where : where + 4 * KiB])).to_bytes(4, "little")
    zeros = [(host + i % (MiB // (4 * KiB)) * 4 * KiB, 4 * KiB) for i in range(zero_descriptors)]
    entry = log_entry(7, at_in_log, log_guid, [(host, b"\x5a" * 4 * KiB)], zeros, len(blob))
    assert at_in_log + len(entry) <= log_length
    blob[log_offset + at_in_log : log_offset + at_in_log + len(entry)] = entry
    image.write_bytes(bytes(blob))
    zeroed = min(zero_descriptors, MiB // (4 * KiB)) * 4 * KiB
    return image, bytes(zeroed) + (b"\x5a" * 4 * KiB + b"\x41" * (MiB - 4 * KiB))[zeroed:]


def test_a_vhdx_log_longer_than_64_mib_is_replayed_as_qemu_replays_it(tmp_path: Path) -> None:
    """The log's length is what the header declares (here 80 MiB, qemu's log_size): no fixed
    limit refuses it, and an entry 72 MiB into it is found and replayed."""
    image, want = _dirty_with_a_long_log(tmp_path, "80M", 72 * MiB)
    before = sha256_of(image)
    with open_image(image) as disk:
        assert disk.info().details["log_replayed_entries"] == 1
        assert disk.read_at(0, MiB) == want
        assert_same_bytes(disk, qemu_replayed_copy(image, tmp_path))
    assert sha256_of(image) == before


def test_a_vhdx_log_at_the_descriptor_limit_is_replayed(tmp_path: Path) -> None:
    """An entry of a data descriptor and 65,535 zero descriptors (2 MiB of the log) over one
    block, as many as the reader replays: the later zeros win over the logged sector. qemu 7.2
    is no oracle here: it refuses (EINVAL) any entry of more than 126 descriptors, reading each
    descriptor sector into the same buffer, so the expected block comes from the builder."""
    image, want = _dirty_with_a_long_log(tmp_path, "4M", 0, zero_descriptors=MAX_DESCRIPTORS - 1)
    with open_image(image) as disk:
        assert disk.info().details["log_replayed_entries"] == 1
        assert want == bytes(MiB) and disk.read_at(0, MiB) == want
        assert disk.read_at(MiB, MiB) == bytes(MiB)  # the next, unallocated block


def test_a_vhdx_log_entry_of_125_zero_descriptors_reads_as_qemu_replays_it(tmp_path: Path) -> None:
    """The most descriptors one sector holds (126: the data descriptor and 125 zeros over the
    block's first 125 sectors), against qemu's replay."""
    image, want = _dirty_with_a_long_log(tmp_path, "4M", 0, zero_descriptors=125)
    with open_image(image) as disk:
        assert disk.read_at(0, MiB) == want
        assert_same_bytes(disk, qemu_replayed_copy(image, tmp_path))


def test_a_vhdx_log_of_more_descriptors_than_the_limit_is_refused(tmp_path: Path) -> None:
    """Zero descriptors cost the file 32 bytes each and the replay far more: a 16 MiB log's entry
    of 500,000 (valid checksum) is refused with the entry's offset instead of using gigabytes."""
    image, _ = _dirty_with_a_long_log(tmp_path, "16M", 0, zero_descriptors=500_000)
    with pytest.raises(ImageFormatError, match="500001 descriptors, more than the 65536") as caught:
        open_image(image)
    assert caught.value.offset is not None and caught.value.offset >= MiB


def test_a_hostile_vhdx_log_of_overlapping_entries_is_refused_quickly(tmp_path: Path) -> None:
    """Every sector of a 16 MiB log starts an entry as long as the log: each must be
    checksummed whole, so the search's work is bounded (4x the log) and it refuses instead of
    checksumming 4096 x 16 MiB."""
    image, _ = _dirty_with_a_long_log(tmp_path, "16M", 0)
    blob = bytearray(image.read_bytes())
    current = max((HEADER.unpack_from(blob, at) for at in HEADER_OFFSETS), key=lambda h: h[2])
    log_length, log_offset, log_guid = current[8], current[9], current[5]
    for at in range(0, log_length, 4 * KiB):
        struct.pack_into("<4sIII", blob, log_offset + at, b"loge", 0, log_length, 0)
        struct.pack_into("<Q", blob, log_offset + at + 16, 1 + at // (4 * KiB))
        blob[log_offset + at + 32 : log_offset + at + 48] = log_guid
    image.write_bytes(bytes(blob))
    with pytest.raises(ImageFormatError, match="work limit"):
        open_image(image)
