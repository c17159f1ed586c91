"""VDI reader against qemu-img (dynamic, static) and, for what qemu cannot write (differencing
images, header 0.0), images built from VDICore.h and read by dissect.hypervisor as a second reader."""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path

import pytest
from dissect.hypervisor.disk.vdi import VDI

from tests.images.conftest import assert_same_bytes, qemu_img
from tests.images.new_formats import qemu_data_ranges, read_tsk_file
from tests.images.test_read_paths import _check_spans
from tests.images.vdi_builders import FREE, ZERO, build_vdi, header_of
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image
from vmforensics.images import vdi_layout as v

MiB = 1 << 20


def test_vdi_dynamic_of_mixed_data_text_and_holes_matches_qemu(base_raw: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", base_raw, image)
    with open_image(image) as disk:
        info = disk.info()
        assert (info.format, info.subtype, info.warnings) == ("vdi", "dynamic", ())
        assert info.details["version"] == "1.1"
        assert info.identifiers["uuid"] == str(header_of(image).uuid_create)
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=31)
        assert list(disk.extents()) == qemu_data_ranges(image, "vdi")


def test_vdi_static_matches_qemu_and_reads_as_one_run(base_raw: Path, tmp_path: Path) -> None:
    image = tmp_path / "fixed.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", "-o", "static=on", base_raw, image)
    with open_image(image) as disk:
        assert disk.info().subtype == "fixed"
        assert disk._linear is not None  # every block in place: one pread per read
        assert_same_bytes(disk, base_raw)
        _check_spans(disk, base_raw, seed=32)


def test_vdi_ext4_file_is_read_with_pytsk3(tmp_path: Path, ext4_raw: Path) -> None:
    image = tmp_path / "fs.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", ext4_raw, image)
    with open_image(image) as disk:
        assert read_tsk_file(disk, "/docs/secret.txt") == b"the quick brown fox\n" * 100


def dissect_bytes(child: Path, parent: Path | None = None, block: int = MiB) -> bytes:
    """What dissect.hypervisor reads, one block per call (its reads of several blocks at once take
    them contiguously from the first block's place, so they are not used)."""
    with child.open("rb") as fh, (parent or child).open("rb") as pfh:
        parent_stream = VDI(pfh).open() if parent is not None else None
        stream = VDI(fh, parent=parent_stream).open()
        out = io.BytesIO()
        for offset in range(0, stream.size, block):
            stream.seek(offset)
            out.write(stream.read(min(block, stream.size - offset)))
        return out.getvalue()


CHILD_BLOCKS = {1: b"\x11" * MiB, 4: ZERO, 7: bytes(range(256)) * 2048 + b"tail", 39: b"\x13" * 4096}


def expected_child(parent_raw: bytes) -> bytes:
    out = bytearray(parent_raw)
    for index, payload in CHILD_BLOCKS.items():
        block = bytes(MiB) if payload == ZERO else payload.ljust(MiB, b"\0")  # type: ignore[union-attr]
        out[index * MiB : (index + 1) * MiB] = block
    return bytes(out)


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][0] + out[-1][1], start + length) - out[-1][0])
        else:
            out.append((start, length))
    return out


@pytest.fixture
def vdi_parent(base_raw: Path, tmp_path: Path) -> Path:
    vm = tmp_path / "vm"
    vm.mkdir()
    parent = vm / "disk1.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", base_raw, parent)
    return parent


def make_child(path: Path, parent: Path, **overrides) -> uuid.UUID:
    header = header_of(parent)
    options = {
        "image_type": v.ImageType.DIFF,
        "uuid_linkage": header.uuid_create,
        "uuid_parent_modify": header.uuid_modify,
    } | overrides
    return build_vdi(path, header.disk_size, CHILD_BLOCKS, **options)


def test_vdi_differencing_finds_its_parent_by_uuid_among_siblings(
    vdi_parent: Path, base_raw: Path, tmp_path: Path
) -> None:
    decoy = vdi_parent.with_name("another.vdi")  # a sibling VDI with another UUID is passed over
    build_vdi(decoy, 40 * MiB, {0: b"decoy"})
    child = vdi_parent.with_name("child.vdi")
    make_child(child, vdi_parent)
    want = expected_child(base_raw.read_bytes())
    assert dissect_bytes(child, vdi_parent) == want  # the fixture is what a second reader reads
    with open_image(child) as disk:
        info = disk.info()
        assert info.subtype == "differencing" and info.all_warnings == []
        assert info.identifiers["parent_uuid"] == info.parent.identifiers["uuid"]
        assert [layer.path for layer in info.chain] == [str(child), str(vdi_parent)]
        assert disk.read(len(want)) == want
        assert disk.read_at(4 * MiB, MiB) == bytes(MiB)  # a zero block hides the parent's data
        stored = [(i * MiB, MiB) for i, payload in CHILD_BLOCKS.items() if payload != ZERO]
        assert list(disk.extents()) == merged(qemu_data_ranges(vdi_parent, "vdi") + stored)


def test_vdi_snapshot_named_by_its_parents_uuid_is_found_first(vdi_parent: Path, base_raw: Path) -> None:
    middle = vdi_parent.with_name(f"{{{uuid.uuid4()}}}.vdi")
    middle_uuid = make_child(middle, vdi_parent)
    top = vdi_parent.with_name("top.vdi")
    build_vdi(top, 40 * MiB, {2: b"\x22" * MiB}, image_type=v.ImageType.DIFF, uuid_linkage=middle_uuid)
    middle.rename(vdi_parent.with_name(f"{{{middle_uuid}}}.vdi"))
    want = bytearray(expected_child(base_raw.read_bytes()))
    want[2 * MiB : 3 * MiB] = b"\x22" * MiB
    with open_image(top) as disk:
        assert [layer.format for layer in disk.info().chain] == ["vdi", "vdi", "vdi"]
        assert disk.info().details["parent_path"].endswith(f"{{{middle_uuid}}}.vdi")
        assert disk.read(disk.size) == bytes(want)


VBOX = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
  <Machine uuid="{{8a6f1c1e-0000-4000-8000-000000000001}}" name="vm" snapshotFolder="Snapshots">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{{{parent}}}" location="{location}" format="VDI" type="Normal">
          <HardDisk uuid="{{{child}}}" location="Snapshots/{{{child}}}.vdi" format="VDI"/>
        </HardDisk>
      </HardDisks>
    </MediaRegistry>
  </Machine>
</VirtualBox>
"""


def snapshot_layout(vdi_parent: Path, location: str) -> Path:
    """A VirtualBox VM folder: the base disk renamed, its .vbox, and Snapshots/{uuid}.vdi."""
    snapshots = vdi_parent.parent / "Snapshots"
    snapshots.mkdir()
    renamed = vdi_parent.with_name("Disk One.vdi")  # no sibling of the child, found through the registry
    vdi_parent.rename(renamed)
    child_uuid = uuid.uuid4()
    child = snapshots / f"{{{child_uuid}}}.vdi"
    make_child(child, renamed, uuid_create=child_uuid)
    parent_uuid = header_of(renamed).uuid_create
    (vdi_parent.parent / "vm.vbox").write_text(
        VBOX.format(parent=parent_uuid, child=child_uuid, location=location)
    )
    return child


def test_vdi_snapshot_in_the_snapshots_folder_finds_its_parent_through_the_vbox(
    vdi_parent: Path, base_raw: Path
) -> None:
    vm = vdi_parent.parent
    child = snapshot_layout(vdi_parent, "Disk One.vdi")
    with open_image(child, allowed_roots=[vm]) as disk:
        assert disk.info().parent.path == str(vm / "Disk One.vdi")
        assert disk.read(disk.size) == expected_child(base_raw.read_bytes())


def test_vdi_parent_above_the_image_folder_needs_allowed_roots(vdi_parent: Path) -> None:
    child = snapshot_layout(vdi_parent, "Disk One.vdi")
    with pytest.raises(ImageFormatError, match="needs its parent with UUID") as caught:
        open_image(child)
    assert "allowed_roots" in caught.value.reason


def test_vdi_missing_parent_is_refused_naming_its_uuid(tmp_path: Path) -> None:
    linkage = uuid.uuid4()
    child = tmp_path / "child.vdi"
    build_vdi(child, 4 * MiB, {0: b"x"}, image_type=v.ImageType.DIFF, uuid_linkage=linkage)
    with pytest.raises(ImageFormatError, match=f"needs its parent with UUID {linkage}") as caught:
        open_image(child)
    assert caught.value.offset == 72 + 352


def test_vdi_parent_modified_after_the_snapshot_warns_and_strict_refuses(vdi_parent: Path) -> None:
    child = vdi_parent.with_name("child.vdi")
    make_child(child, vdi_parent, uuid_parent_modify=uuid.uuid4())
    with open_image(child) as disk:
        assert any("was modified" in w for w in disk.info().warnings)
    with pytest.raises(ImageFormatError, match="was modified"):
        open_image(child, strict=True)


def test_vdi_header_version_0_0_reads_its_blocks(tmp_path: Path) -> None:
    """Built from VDIHEADER0 (no sample of VirtualBox 1.x is at hand): the map follows the header
    and the data follows the map, with no offsets in the header."""
    image = tmp_path / "old.vdi"
    build_vdi(image, 3 * MiB + 512, {0: b"\x01" * MiB, 3: b"\x03" * 512}, version=v.VERSION_0_0)
    with open_image(image) as disk:
        info = disk.info()
        assert (info.subtype, info.details["version"]) == ("dynamic", "0.0")
        assert info.details["blocks_offset"] == 72 + v.HEADER_0.size
        assert disk.read(disk.size) == b"\x01" * MiB + bytes(2 * MiB) + b"\x03" * 512


def test_vdi_extra_block_data_is_skipped(tmp_path: Path) -> None:
    image = tmp_path / "extra.vdi"
    build_vdi(image, 2 * MiB, {0: b"\x01" * MiB, 1: b"\x02" * MiB}, block_extra=512)
    with open_image(image) as disk:
        assert disk.read(disk.size) == b"\x01" * MiB + b"\x02" * MiB


def test_vdi_zero_and_free_blocks_of_a_base_image_read_as_zeros(tmp_path: Path) -> None:
    image = tmp_path / "holes.vdi"
    build_vdi(image, 4 * MiB, {0: ZERO, 1: FREE, 2: b"\x07" * MiB})
    assert dissect_bytes(image) == bytes(2 * MiB) + b"\x07" * MiB + bytes(MiB)
    with open_image(image) as disk:
        assert disk.read(disk.size) == bytes(2 * MiB) + b"\x07" * MiB + bytes(MiB)
        assert list(disk.extents()) == [(2 * MiB, MiB)]


def patched(path: Path, offset: int, fmt: str, value: int) -> Path:
    blob = bytearray(path.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (68, 0x00020000, "unsupported VDI header version 2.0"),
        (72, 100, "header size 100 is too small"),
        (76, 9, "unknown VDI image type 9"),
        (72 + 304, 3000, "invalid VDI block size"),
        (72 + 312, 0x10000000, "block map of 268435456 entries .* runs past the end"),  # never read
    ],
)
def test_vdi_damaged_header_is_refused(tmp_path: Path, offset: int, value: int, reason: str) -> None:
    image = tmp_path / "bad.vdi"
    build_vdi(image, 4 * MiB, {0: b"x"})
    patched(image, offset, "<I", value)
    with pytest.raises(ImageFormatError, match=reason):
        open_image(image)


def test_vdi_block_beyond_the_end_of_the_file_is_refused_on_read(tmp_path: Path) -> None:
    image = tmp_path / "short.vdi"
    build_vdi(image, 4 * MiB, {0: b"x"})
    patched(image, 512, "<I", 1000)  # block 0 now claims stored block 1000
    with open_image(image) as disk, pytest.raises(ImageFormatError, match="truncated"):
        disk.read_at(0, 4096)


def test_vdi_parent_is_found_when_the_image_is_named_by_a_relative_path(
    vdi_parent: Path, base_raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = vdi_parent.parent
    child = snapshot_layout(vdi_parent, "Disk One.vdi")
    monkeypatch.chdir(vm.parent)
    relative = Path(vm.name) / "Snapshots" / child.name
    with open_image(relative, allowed_roots=[vm]) as disk:
        assert disk.info().parent.path == f"{vm.name}/Disk One.vdi"
        assert disk.read(disk.size) == expected_child(base_raw.read_bytes())
