"""VMDK reader against independent oracles: qemu-img convert -O raw, libvmdk (pyvmdk), pytsk3.

Images qemu-img can write are made by qemu-img/qemu-io; COWD, SESparse, VMFS/ZERO/offset
descriptors and the VMware streamOptimized footer are built from the format notes by
tests/images/vmdk_builders.py and read back by qemu-img or libvmdk, never compared with our own output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.conftest import assert_same_bytes, oracle_raw, qemu_img, qemu_io
from tests.images.vmdk_builders import (
    build_cowd,
    build_sesparse,
    move_grain_directory_to_footer,
    patch_descriptor_field,
    read_cid,
    write_descriptor,
)
from vmforensics.errors import ImageFormatError
from vmforensics.images import open_image

pyvmdk = pytest.importorskip("pyvmdk")

SUBFORMATS = [
    ("monolithicSparse", []),
    ("monolithicSparse", ["zeroed_grain=on"]),
    ("monolithicSparse", ["compat6=on", "adapter_type=lsilogic"]),
    ("monolithicFlat", []),
    ("twoGbMaxExtentSparse", []),
    ("twoGbMaxExtentFlat", []),
    ("streamOptimized", []),
]


def convert_to_vmdk(raw: Path, out: Path, subformat: str, *options: str) -> Path:
    opts = ",".join([f"subformat={subformat}", *options])
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", opts, raw, out)
    return out


def assert_allocated_covers_data(disk, raw: Path, block: int = 64 * 1024) -> None:
    """Everything outside extents() must read as zeros in the oracle (tools may skip holes)."""
    covered = list(disk.extents())
    data = raw.read_bytes()
    for start in range(0, len(data), block):
        chunk = data[start : start + block]
        if any(chunk) and not any(o <= start and start + len(chunk) <= o + n for o, n in covered):
            pytest.fail(f"non-zero data at {start} is outside extents() {covered[:8]}")


# --- everything qemu-img writes ------------------------------------------------------------------


@pytest.mark.parametrize(("subformat", "options"), SUBFORMATS, ids=lambda v: "-".join(v) if v else "plain")
def test_qemu_subformat_of_ext4_disk_matches_qemu_raw(tmp_path, ext4_raw, subformat, options):
    vmdk = convert_to_vmdk(ext4_raw, tmp_path / "disk.vmdk", subformat, *options)
    oracle = oracle_raw(vmdk, "vmdk", tmp_path / "oracle.raw")
    with open_image(vmdk) as disk:
        assert_same_bytes(disk, oracle)
        info = disk.info()
        assert info.format == "vmdk" and info.subtype == subformat
        assert info.warnings == ()
        assert info.identifiers["CID"] == f"{read_cid(vmdk):08x}"
        expected_adapter = "lsilogic" if "adapter_type=lsilogic" in options else "ide"
        assert info.details["adapter_type"] == expected_adapter
        assert_allocated_covers_data(disk, oracle)
        if "Sparse" in subformat or subformat == "streamOptimized":
            assert info.allocated < disk.size // 2  # a fresh 64 MiB ext4 is mostly holes


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "twoGbMaxExtentFlat"])
def test_ext4_file_read_through_pytsk3(tmp_path, ext4_raw, subformat):
    pytsk3 = pytest.importorskip("pytsk3")
    vmdk = convert_to_vmdk(ext4_raw, tmp_path / "disk.vmdk", subformat)
    with open_image(vmdk) as disk:
        fs = pytsk3.FS_Info(disk.as_tsk())
        secret = fs.open("/docs/secret.txt")
        assert secret.read_random(0, secret.info.meta.size) == b"the quick brown fox\n" * 100
        big = fs.open("/big.bin")
        content = big.read_random(0, big.info.meta.size)
        assert content == hashlib.sha256(b"seed").digest() * 40000


def test_unaligned_writes_and_partial_last_grain_match_qemu(tmp_path):
    vmdk = tmp_path / "odd.vmdk"
    qemu_img("create", "-f", "vmdk", vmdk, str(3 * 1024 * 1024 + 7 * 512))  # last grain is partial
    qemu_io(
        vmdk, "write -P 0x11 512 1536", "write -P 0x22 65000 70000", "write -P 0x33 3145728 3584", fmt="vmdk"
    )
    oracle = oracle_raw(vmdk, "vmdk", tmp_path / "oracle.raw")
    with open_image(vmdk) as disk:
        assert_same_bytes(disk, oracle, chunk=4096 + 17)  # reads straddling grains
        expected = oracle.read_bytes()
        for offset, length in [(0, 1), (511, 3), (65535, 2), (3145728 - 1, 600), (disk.size - 5, 100)]:
            assert disk.read_at(offset, length) == expected[offset : offset + length]


def test_streamoptimized_with_footer_gd_at_end_matches_qemu(tmp_path, ext4_raw):
    vmdk = convert_to_vmdk(ext4_raw, tmp_path / "stream.vmdk", "streamOptimized")
    move_grain_directory_to_footer(vmdk)
    oracle = oracle_raw(vmdk, "vmdk", tmp_path / "oracle.raw")  # qemu reads the footer too
    with open_image(vmdk) as disk:
        assert_same_bytes(disk, oracle)


def test_streamoptimized_gd_at_end_truncated_footer_is_refused(tmp_path, ext4_raw):
    vmdk = convert_to_vmdk(ext4_raw, tmp_path / "stream.vmdk", "streamOptimized")
    move_grain_directory_to_footer(vmdk)
    with vmdk.open("r+b") as f:
        f.truncate(vmdk.stat().st_size - 512)
    with pytest.raises(ImageFormatError, match="footer") as err:
        open_image(vmdk)
    assert err.value.path == str(vmdk)


def test_renamed_monolithic_sparse_still_opens(tmp_path):
    vmdk = tmp_path / "original.vmdk"
    qemu_img("create", "-f", "vmdk", vmdk, "4M")
    qemu_io(vmdk, "write -P 0x5a 1M 128k", fmt="vmdk")
    renamed = tmp_path / "evidence-item-7.vmdk"
    vmdk.rename(renamed)
    oracle = oracle_raw(renamed, "vmdk", tmp_path / "oracle.raw")
    with open_image(renamed) as disk:
        assert_same_bytes(disk, oracle)
        assert disk.info().warnings == ()


# --- snapshot chains ---------------------------------------------------------------------------------


def make_chain(tmp_path: Path, *, zeroed_grain: bool = False) -> list[Path]:
    """base.vmdk <- base-000001.vmdk <- base-000002.vmdk, each layer written by qemu-io."""
    base = tmp_path / "base.vmdk"
    options = ["-o", "zeroed_grain=on"] if zeroed_grain else []
    qemu_img("create", "-f", "vmdk", *options, base, "4M")
    qemu_io(base, "write -P 0x41 0 1M", "write -P 0x42 3M 512k", fmt="vmdk")
    layers = [base]
    for n, command in enumerate(["write -P 0x61 64k 100k", "write -P 0x62 960k 200k"], start=1):
        child = tmp_path / f"base-{n:06d}.vmdk"
        qemu_img("create", "-f", "vmdk", *options, "-b", layers[-1].name, "-F", "vmdk", child)
        qemu_io(child, command, fmt="vmdk")
        layers.append(child)
    return layers


def test_delta_chain_matches_qemu_and_reports_cids(tmp_path):
    layers = make_chain(tmp_path)
    oracle = oracle_raw(layers[-1], "vmdk", tmp_path / "oracle.raw")
    with open_image(layers[-1]) as disk:
        assert_same_bytes(disk, oracle)
        chain = disk.info().chain
        assert [Path(layer.path).name for layer in chain] == [p.name for p in reversed(layers)]
        for layer, path in zip(chain, reversed(layers), strict=True):
            assert layer.identifiers["CID"] == f"{read_cid(path):08x}"
        assert chain[0].identifiers["parentCID"] == chain[1].identifiers["CID"]
        assert chain[0].details["cid_check"] == "match"
        assert disk.info().all_warnings == []
        assert_allocated_covers_data(disk, oracle)


def test_zeroed_grain_in_delta_hides_parent_data(tmp_path):
    layers = make_chain(tmp_path, zeroed_grain=True)
    qemu_io(layers[-1], "write -z 0 128k", "write -z 3M 64k", fmt="vmdk")  # zeroed-grain entries (GTE 1)
    oracle = oracle_raw(layers[-1], "vmdk", tmp_path / "oracle.raw")
    assert oracle.read_bytes()[: 128 * 1024] == bytes(128 * 1024)
    with open_image(layers[-1]) as disk:
        assert_same_bytes(disk, oracle)


def test_delta_with_wrong_parent_cid_warns_and_strict_refuses(tmp_path):
    base, child, _ = make_chain(tmp_path)
    patch_descriptor_field(child, "parentCID", read_cid(base) ^ 0x1)
    with open_image(child) as disk:
        info = disk.info()
        assert any("parentCID" in w for w in info.warnings)
        assert info.details["cid_check"].startswith("mismatch")
    with pytest.raises(ImageFormatError, match="parentCID") as err:
        open_image(child, strict=True)
    assert err.value.path == str(child)


def test_delta_with_missing_parent_is_refused_naming_it(tmp_path):
    base, _child, grandchild = make_chain(tmp_path)
    base.unlink()
    with pytest.raises(ImageFormatError, match=r"base\.vmdk") as err:
        open_image(grandchild)
    assert "parent" in str(err.value)


def test_delta_naming_itself_as_parent_is_refused(tmp_path):
    _base, child, _ = make_chain(tmp_path)
    blob = child.read_bytes().replace(
        b'parentFileNameHint="base.vmdk"', b'parentFileNameHint="base-000001.vmdk"'
    )
    loop = tmp_path / "base-000001.vmdk"
    loop.write_bytes(blob)
    with pytest.raises(ImageFormatError, match="loops"):
        open_image(loop)


# --- damaged and incomplete evidence ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subformat", "suffix"), [("monolithicFlat", "-flat.vmdk"), ("twoGbMaxExtentSparse", "-s001.vmdk")]
)
def test_missing_extent_file_is_refused_naming_it(tmp_path, subformat, suffix):
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}", vmdk, "4M")
    (tmp_path / f"disk{suffix}").unlink()
    with pytest.raises(ImageFormatError, match=re.escape(f"disk{suffix}")):
        open_image(vmdk)


def test_truncated_sparse_file_fails_on_read_of_missing_grains(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", vmdk, "4M")
    qemu_io(vmdk, "write -P 0x41 0 64k", "write -P 0x42 2M 64k", fmt="vmdk")
    with vmdk.open("r+b") as f:
        f.truncate(vmdk.stat().st_size - 32 * 1024)
    with open_image(vmdk) as disk:
        assert disk.read_at(0, 65536) == b"A" * 65536
        with pytest.raises(ImageFormatError) as err:
            disk.read_at(2 * 1024 * 1024, 65536)
        assert err.value.offset is not None


def test_truncated_flat_extent_warns_then_refuses_the_missing_bytes(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", vmdk, "4M")
    os.truncate(tmp_path / "disk-flat.vmdk", 3 * 1024 * 1024)
    with open_image(vmdk) as disk:
        assert any("disk-flat.vmdk" in w for w in disk.info().warnings)
        assert disk.read_at(0, 4096) == bytes(4096)
        with pytest.raises(ImageFormatError):
            disk.read_at(3 * 1024 * 1024, 4096)
    with pytest.raises(ImageFormatError):
        open_image(vmdk, strict=True)


# --- what qemu-img cannot write: built from the spec, read by qemu-img or libvmdk ------------------


def pattern(seed: int, length: int) -> bytes:
    return (hashlib.sha256(seed.to_bytes(4, "little")).digest() * (length // 32 + 1))[:length]


def test_cowd_delta_over_monolithic_sparse_matches_qemu_and_libvmdk(tmp_path):
    base = tmp_path / "vm.vmdk"
    qemu_img("create", "-f", "vmdk", base, "8M")
    qemu_io(base, "write -P 0x41 0 8M", fmt="vmdk")
    grains = {0: pattern(1, 512), 7: pattern(2, 512), 4095: pattern(3, 300), 4096: pattern(4, 512),
              16383: pattern(5, 512)}  # fmt: skip
    build_cowd(tmp_path / "vm-000001-delta.vmdk", 8 << 20, 1, grains)
    child = write_descriptor(tmp_path / "vm-000001.vmdk", ['RW 16384 VMFSSPARSE "vm-000001-delta.vmdk"'],
                             create_type="vmfsSparse", parent_cid=read_cid(base), parent_hint="vm.vmdk")  # fmt: skip
    oracle = oracle_raw(child, "vmdk", tmp_path / "oracle.raw")
    with open_image(child) as disk:
        assert_same_bytes(disk, oracle)
        assert disk.info().subtype == "vmfsSparse"
        assert disk.info().details["cid_check"] == "match"


def test_standalone_cowd_without_parent_matches_libvmdk(tmp_path):
    grains = {1: pattern(1, 4096), 2: pattern(2, 4096), 300: pattern(3, 4096)}
    build_cowd(tmp_path / "x-delta.vmdk", 4 << 20, 8, grains)
    descriptor = write_descriptor(
        tmp_path / "x.vmdk", ['RW 8192 VMFSSPARSE "x-delta.vmdk"'], create_type="vmfsSparse"
    )
    handle = pyvmdk.handle()
    handle.open(str(descriptor))
    handle.open_extent_data_files()
    expected = handle.read_buffer(handle.get_media_size())
    handle.close()
    for path in (descriptor, tmp_path / "x-delta.vmdk"):  # through the descriptor and opened directly
        with open_image(path) as disk:
            assert disk.read() == expected
            assert list(disk.extents()) == [(4096, 8192), (300 * 4096, 4096)]


def test_sesparse_delta_matches_qemu(tmp_path):
    base = tmp_path / "vm.vmdk"
    qemu_img("create", "-f", "vmdk", base, "40M")
    qemu_io(base, "write -P 0x41 0 40M", fmt="vmdk")
    grains = {0: pattern(1, 4096), 1: pattern(2, 4096), 4095: pattern(3, 4096), 4096: pattern(4, 4096),
              10239: pattern(5, 4096)}  # fmt: skip
    build_sesparse(tmp_path / "vm-000001-sesparse.vmdk", 40 << 20, grains, zero={5, 4097}, unmapped={9})
    child = write_descriptor(tmp_path / "vm-000001.vmdk", ['RW 81920 SESPARSE "vm-000001-sesparse.vmdk"'],
                             create_type="seSparse", parent_cid=read_cid(base), parent_hint="vm.vmdk")  # fmt: skip
    oracle = oracle_raw(child, "vmdk", tmp_path / "oracle.raw")
    expected = oracle.read_bytes()
    assert expected[5 * 4096 : 6 * 4096] == bytes(4096) and expected[8 * 4096 : 9 * 4096] == b"A" * 4096
    assert expected[9 * 4096 : 10 * 4096] == bytes(4096)  # unmapped reads as zeros, not the parent
    with open_image(child) as disk:
        assert_same_bytes(disk, oracle)
        assert disk.info().subtype == "seSparse"


def flat_files(tmp_path: Path) -> tuple[Path, Path]:
    first = tmp_path / "disk-flat.vmdk"
    first.write_bytes(pattern(7, 4096) + pattern(8, 1 << 20))  # data starts 8 sectors in
    second = tmp_path / "disk-f002.vmdk"
    second.write_bytes(pattern(9, 2 << 20))
    return first, second


@pytest.mark.parametrize("create_type", ["vmfs", "vmfsThin", "vmfsPreallocated"])
def test_vmfs_flat_extents_with_start_offsets_match_qemu(tmp_path, create_type):
    flat_files(tmp_path)
    ours = write_descriptor(tmp_path / "disk.vmdk", ['RW 2048 VMFS "disk-flat.vmdk" 8', 'RW 4096 VMFS "disk-f002.vmdk"'],
                            create_type=create_type)  # fmt: skip
    # qemu accepts start offsets only on FLAT lines and no vmfsThin/-Preallocated createType:
    # the same extents described as FLAT are its input.
    twin = write_descriptor(tmp_path / "twin.vmdk", ['RW 2048 FLAT "disk-flat.vmdk" 8', 'RW 4096 FLAT "disk-f002.vmdk" 0'],
                            create_type="twoGbMaxExtentFlat")  # fmt: skip
    oracle = oracle_raw(twin, "vmdk", tmp_path / "oracle.raw")
    with open_image(ours) as disk:
        assert_same_bytes(disk, oracle)
        assert disk.info().subtype == create_type
        assert [e["file_offset"] for e in disk.info().details["extents"]] == [4096, 0]


def test_mixed_extent_list_with_zero_flat_and_sparse_extents(tmp_path):
    flat_files(tmp_path)
    sparse_desc = tmp_path / "sp.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", sparse_desc, "1M")
    qemu_io(sparse_desc, "write -P 0x77 64k 300k", fmt="vmdk")
    lines = ['RW 2048 FLAT "disk-flat.vmdk" 8', "RW 1024 ZERO", 'RW 2048 SPARSE "sp-s001.vmdk"',
             'RDONLY 4096 VMFS "disk-f002.vmdk"']  # fmt: skip
    mixed = write_descriptor(tmp_path / "mixed.vmdk", lines, create_type="custom")
    # The oracle is assembled from pieces qemu-img reads on their own (qemu skips ZERO lines).
    first = oracle_raw(write_descriptor(tmp_path / "o1.vmdk", [lines[0]], create_type="monolithicFlat"), "vmdk",
                       tmp_path / "o1.raw")  # fmt: skip
    sparse = oracle_raw(sparse_desc, "vmdk", tmp_path / "o2.raw")
    last = oracle_raw(write_descriptor(tmp_path / "o3.vmdk", ['RW 4096 FLAT "disk-f002.vmdk" 0'],
                                       create_type="monolithicFlat"), "vmdk", tmp_path / "o3.raw")  # fmt: skip
    expected = tmp_path / "expected.raw"
    expected.write_bytes(first.read_bytes() + bytes(1024 * 512) + sparse.read_bytes() + last.read_bytes())
    with open_image(mixed) as disk:
        assert_same_bytes(disk, expected)
        kinds = [e["type"] for e in disk.info().details["extents"]]
        assert kinds == ["FLAT", "ZERO", "SPARSE", "VMFS"]
        assert (1 << 20, 512 * 1024) not in list(disk.extents())


def test_descriptor_in_another_directory_cannot_reach_outside_files(tmp_path):
    outside = tmp_path / "secret-flat.vmdk"
    outside.write_bytes(b"x" * 512 * 8)
    case = tmp_path / "case"
    case.mkdir()
    desc = write_descriptor(case / "d.vmdk", [f'RW 8 FLAT "{outside}" 0'], create_type="monolithicFlat")
    with pytest.raises(ImageFormatError, match=r"secret-flat\.vmdk"):
        open_image(desc)
    shutil.copy(outside, case / "secret-flat.vmdk")  # the base name beside the descriptor is used
    with open_image(desc) as disk:
        assert disk.read() == b"x" * 4096


@contextlib.contextmanager
def few_file_descriptors() -> Iterator[None]:
    """The process may open only 96 more files than it has open now (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 96, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _split_disk_written_by_qemu(tmp_path: Path) -> tuple[Path, dict[int, bytes]]:
    """A 320 GiB twoGbMaxExtentSparse disk (160 extent files) with data qemu wrote in the first,
    a middle and the last extent."""
    image = tmp_path / "split.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "320G")
    writes = {0: b"\x41", 160 << 30: b"\x42", (320 << 30) - (64 << 10): b"\x43"}
    qemu_io(image, *(f"write -P 0x{v.hex()} {at} 64k" for at, v in writes.items()), fmt="vmdk")
    assert len(list(tmp_path.glob("split-s*.vmdk"))) == 160
    return image, {at: value * (64 << 10) for at, value in writes.items()}


def test_a_split_vmdk_of_more_extent_files_than_the_process_may_open_reads(tmp_path):
    """Extent files are held in a pool and opened again when read, so 160 extents open and read
    where only 96 more files may be open (main opened them all at once: EMFILE)."""
    image, written = _split_disk_written_by_qemu(tmp_path)
    with few_file_descriptors(), open_image(image) as disk:
        for _ in range(2):  # again, after every extent was closed and reopened
            for at, data in written.items():
                assert disk.read_at(at, len(data)) == data
                if at:
                    assert disk.read_at(at - 4096, 4096) == bytes(4096)
        assert [a for a, _ in disk.extents()] == sorted(written)


def test_an_extent_file_replaced_while_the_image_is_open_is_refused(tmp_path):
    image, written = _split_disk_written_by_qemu(tmp_path)
    with open_image(image) as disk:
        assert disk.read_at(0, 4096) == written[0][:4096]
        for at in range(2 << 30, 320 << 30, 2 << 30):  # every other extent: the first is closed
            disk.read_at(at, 512)
        first = tmp_path / "split-s001.vmdk"
        shutil.copy(first, tmp_path / "copy.vmdk")
        os.replace(tmp_path / "copy.vmdk", first)  # the same bytes, another file
        with pytest.raises(ImageFormatError, match="no longer the file the image was opened with"):
            disk.read_at(0, 4096)
