"""Parallels reader against qemu-img (expanding images, version 2 as qemu writes them and version 1
rewritten from them, which qemu still reads) and, for .hdd bundles (DiskDescriptor.xml, split
parts, snapshots), bundles around qemu-written parts read by dissect.hypervisor as a second reader."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from dissect.hypervisor.disk.hdd import HDD

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from tests.images.new_formats import qemu_data_ranges, read_tsk_file
from tests.images.parallels_builders import NULL, descriptor, to_version_1
from tests.images.test_read_paths import SIZE, _check_spans
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images import parallels_layout as p

MiB = 1 << 20
BASE = p.DEFAULT_TOP_GUID
SNAP1 = "{11111111-2222-4333-8444-555555555555}"
SNAP2 = "{66666666-7777-4888-8999-aaaaaaaaaaaa}"


def test_parallels_expanding_of_mixed_data_text_and_holes_matches_qemu(
    base_raw: Path, tmp_path: Path
) -> None:
    image = tmp_path / "disk.hds"
    qemu_img("convert", "-f", "raw", "-O", "parallels", base_raw, image)
    with open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("parallels", "expanding", ())
        assert info.details["parts"][0]["signature"] == "WithouFreSpacExt"
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=41)
        assert list(disk.extents()) == qemu_data_ranges(image, "parallels")


def test_parallels_version_1_image_matches_qemu(base_raw: Path, tmp_path: Path) -> None:
    image = tmp_path / "old.hds"
    qemu_img("convert", "-f", "raw", "-O", "parallels", "-o", "cluster_size=64k", base_raw, image)
    to_version_1(image)
    oracle = oracle_raw(image, "parallels", tmp_path / "old.raw")  # qemu reads version 1 too
    with open_image(image) as disk:
        assert disk.info().details["parts"][0]["signature"] == "WithoutFreeSpace"
        assert_same_bytes(disk, oracle)
        _check_spans(disk, oracle, seed=42)


def test_parallels_ext4_file_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "fs.hds"
    qemu_img("convert", "-f", "raw", "-O", "parallels", ext4_raw, image)
    with open_image(image) as disk:
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100


def dissect_bytes(bundle: Path, guid: str) -> bytes:
    """What dissect.hypervisor reads, one MiB-aligned MiB per call (one read of the whole disk
    mixes up its snapshot layers)."""
    stream = HDD(bundle).open(guid)
    out = bytearray()
    for offset in range(0, stream.size, MiB):
        stream.seek(offset)
        out += stream.read(min(MiB, stream.size - offset))
    return bytes(out)


def snapshot_part(path: Path, size: int, *writes: str) -> None:
    """A snapshot's image: empty, then written through qemu-io (only those clusters allocated)."""
    qemu_img("create", "-f", "parallels", path, str(size))
    qemu_io(path, *writes, fmt="parallels")


@pytest.fixture
def bundle(base_raw: Path, tmp_path: Path) -> Path:
    """disk.hdd/ with a base and two snapshots on top, as Parallels Desktop lays it out."""
    hdd = tmp_path / "vm.pvm" / "disk.hdd"
    hdd.mkdir(parents=True)
    names = {g: f"disk.hdd.0.{g}.hds" for g in (BASE, SNAP1, SNAP2)}
    qemu_img("convert", "-f", "raw", "-O", "parallels", base_raw, hdd / names[BASE])
    snapshot_part(hdd / names[SNAP1], SIZE, "write -P 0x51 1m 3m", "write -P 0x52 20m 64k")
    snapshot_part(hdd / names[SNAP2], SIZE, "write -P 0x61 2m 512k", "write -P 0x62 39m 1m")
    sectors = SIZE // 512
    images = [(g, "Compressed", names[g]) for g in (BASE, SNAP1, SNAP2)]
    (hdd / p.DESCRIPTOR_NAME).write_text(
        descriptor([(0, sectors, images)], [(BASE, NULL), (SNAP1, BASE), (SNAP2, SNAP1)], top=SNAP2)
    )
    return hdd


def expected_bundle(bundle: Path, base_raw: Path) -> bytes:
    """The base's bytes, overlaid with each snapshot's stored clusters as qemu reads them."""
    want = bytearray(base_raw.read_bytes())
    for guid in (SNAP1, SNAP2):
        part = bundle / f"disk.hdd.0.{guid}.hds"
        content = oracle_raw(part, "parallels", bundle.parent / f"{guid}.raw").read_bytes()
        for start, length in qemu_data_ranges(part, "parallels"):
            want[start : start + length] = content[start : start + length]
    return bytes(want)


def test_parallels_bundle_descriptor_reads_the_snapshots_as_layers(bundle: Path, base_raw: Path) -> None:
    want = expected_bundle(bundle, base_raw)
    assert dissect_bytes(bundle, SNAP2) == want  # the fixture is what a second reader reads
    with open_image(bundle / p.DESCRIPTOR_NAME) as disk:
        info = disk.info()
        assert (info.format, info.subtype) == ("parallels", "bundle")
        assert [layer.identifiers["snapshot_guid"] for layer in info.chain] == [SNAP2, SNAP1, BASE]
        assert info.all_warnings == []
        assert str(bundle / f"disk.hdd.0.{SNAP2}.hds") in info.files
        assert disk.read(disk.size) == want
        oracle = bundle.parent / "want.raw"
        oracle.write_bytes(want)
        _check_spans(disk, oracle, seed=43)


def test_parallels_descriptor_no_longer_opens_as_a_raw_disk_of_its_text(bundle: Path) -> None:
    with open_image(bundle / p.DESCRIPTOR_NAME) as disk:
        assert disk.format_name == "parallels" and disk.size == SIZE


def test_parallels_part_opened_alone_warns_that_it_belongs_to_a_bundle(bundle: Path) -> None:
    with open_image(bundle / f"disk.hdd.0.{SNAP1}.hds") as disk:
        assert any("one part of a Parallels bundle" in w for w in disk.info().warnings)


def test_parallels_split_bundle_joins_its_parts_and_a_plain_part(base_raw: Path, tmp_path: Path) -> None:
    hdd = tmp_path / "split.hdd"
    hdd.mkdir()
    raw = base_raw.read_bytes()
    cuts = [0, 16 * MiB, 30 * MiB, SIZE]
    storages = []
    for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
        piece = tmp_path / f"piece{i}.raw"
        piece.write_bytes(raw[start:stop])
        if i == 1:  # the middle part is a plain (raw) image
            name, kind = f"split.hdd.{i}.{BASE}.hdd", "Plain"
            (hdd / name).write_bytes(raw[start:stop])
        else:
            name, kind = f"split.hdd.{i}.{BASE}.hds", "Compressed"
            qemu_img("convert", "-f", "raw", "-O", "parallels", piece, hdd / name)
        storages.append((start // 512, stop // 512, [(BASE, kind, name)]))
    (hdd / p.DESCRIPTOR_NAME).write_text(descriptor(storages, [(BASE, NULL)]))
    assert dissect_bytes(hdd, BASE) == raw
    with open_image(hdd / p.DESCRIPTOR_NAME) as disk:
        assert [part["type"] for part in disk.info().details["parts"]] == [
            "Compressed",
            "Plain",
            "Compressed",
        ]
        assert disk.info().warnings == ()
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=44)


def test_parallels_bundle_missing_a_part_is_refused_naming_it(bundle: Path) -> None:
    (bundle / f"disk.hdd.0.{SNAP1}.hds").unlink()
    with pytest.raises(ImageFormatError, match=f"disk.hdd.0.{SNAP1}.hds"):
        open_image(bundle / p.DESCRIPTOR_NAME)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda x: x.replace("<?xml version='1.0' encoding='UTF-8'?>", '<!DOCTYPE d [<!ENTITY e "x">]>'),
            "document type",
        ),
        (
            lambda x: x.replace("<Type>Compressed</Type>", "<Type>Encrypted</Type>", 1),
            "not Compressed or Plain",
        ),
        (
            lambda x: x.replace(f"<ParentGUID>{NULL}</ParentGUID>", f"<ParentGUID>{SNAP2}</ParentGUID>"),
            "loops",
        ),
        (
            lambda x: x.replace(
                "<TopGUID>", "<TopGUID>{99999999-0000-4000-8000-000000000000}<!--", 1
            ).replace("</TopGUID>", "--></TopGUID>", 1),
            "no snapshot",
        ),
        (lambda x: x.replace("<End>", "<End>-", 1), "negative"),
        (lambda x: x.replace("<Start>0</Start>", "<Start>zero</Start>"), "not a number"),
        (lambda x: x.replace("</Parallels_disk_image>", ""), "not well-formed"),
    ],
)
def test_parallels_hostile_descriptor_is_refused(bundle: Path, edit, reason: str) -> None:
    path = bundle / p.DESCRIPTOR_NAME
    path.write_text(edit(path.read_text()))
    with pytest.raises(ImageFormatError, match=reason):
        open_image(path)


def test_parallels_image_file_outside_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    path = bundle / p.DESCRIPTOR_NAME
    outside = tmp_path / "elsewhere.hds"
    qemu_img("create", "-f", "parallels", outside, "1M")
    path.write_text(path.read_text().replace(f"disk.hdd.0.{SNAP2}.hds", "../../elsewhere.hds"))
    with pytest.raises(ImageFormatError, match=r"elsewhere\.hds"):
        open_image(path)


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [(28, 0, "cluster size"), (32, 0x40000000, "BAT of 1073741824 entries .* runs past the end")],
)
def test_parallels_damaged_header_is_refused(tmp_path: Path, offset: int, value: int, reason: str) -> None:
    image = tmp_path / "bad.hds"
    qemu_img("create", "-f", "parallels", image, "8M")
    blob = bytearray(image.read_bytes())
    struct.pack_into("<I", blob, offset, value)
    image.write_bytes(bytes(blob))
    with pytest.raises(ImageFormatError, match=reason):
        open_image(image)


def test_parallels_image_in_use_warns(tmp_path: Path) -> None:
    image = tmp_path / "open.hds"
    qemu_img("create", "-f", "parallels", image, "8M")
    blob = bytearray(image.read_bytes())
    struct.pack_into("<I", blob, 44, p.IN_USE)
    image.write_bytes(bytes(blob))
    with open_image(image) as disk:
        assert any("not closed cleanly" in w for w in disk.info().warnings)


def test_parallels_descriptor_declaring_an_unknown_encoding_is_read_as_utf8(
    bundle: Path, base_raw: Path
) -> None:
    """Found by the fuzz suite: expat raised LookupError for encoding='TTF-8'."""
    path = bundle / p.DESCRIPTOR_NAME
    path.write_text(path.read_text().replace("encoding='UTF-8'", "encoding='TTF-8'"))
    with open_image(path) as disk:
        assert disk.read_at(0, 4096) == expected_bundle(bundle, base_raw)[:4096]


def test_parallels_descriptor_naming_too_many_files_is_refused_before_opening_them(tmp_path: Path) -> None:
    hdd = tmp_path / "big.hdd"
    hdd.mkdir()
    guids = [f"{{{i:08x}-0000-4000-8000-000000000000}}" for i in range(100)]
    shots = [(g, guids[i - 1] if i else NULL) for i, g in enumerate(guids)]
    storages = [(i * 8, (i + 1) * 8, [(g, "Compressed", f"p{i}.{g}.hds") for g in guids]) for i in range(50)]
    (hdd / p.DESCRIPTOR_NAME).write_text(descriptor(storages, shots, top=guids[-1]))
    with pytest.raises(ImageFormatError, match="5000 files, more than the 4096"):
        open_image(hdd / p.DESCRIPTOR_NAME)
