"""VMware saved memory against Volatility 3's VMware layer, page by page, and its conversions
opened again by Volatility (ELF, LiME and raw layers) and scanned by its banners plugin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.interop.vmware_state import BANNER, BANNER_PHYSICAL, REGIONS, write_memory_state
from tests.memory import builders as b
from tests.memory.volatility import banners, layer, segments
from vmforensics.errors import MemoryFormatError
from vmforensics.memory import convert, open_memory
from vmforensics.memory.vmware_layout import MAGICS

PAGE = 4096
#: 3 GiB below the PCI hole, the rest from 4 GiB: what a 4 GiB guest's region table says (pages).
PCI_HOLE_REGIONS = ((0, 0, 0xC0000), (0x100000, 0xC0000, 0x40000))


def sparse_vmem(path: Path, pages: int, planted: dict[int, bytes]) -> None:
    """A .vmem of ``pages`` pages, sparse, with ``planted`` bytes at page numbers."""
    with path.open("wb") as handle:
        handle.truncate(pages * PAGE)
        for page, data in planted.items():
            handle.seek(page * PAGE)
            handle.write(data)


def same_pages(ours, theirs, ranges) -> int:
    """Compare every page of ``ranges`` through both readers; returns the pages compared."""
    pages = 0
    for start, length in ranges:
        for address in range(start, start + length, 1 << 20):
            step = min(1 << 20, start + length - address)
            assert ours.read(address, step) == theirs.read(address, step, pad=True), hex(address)
            pages += step // PAGE
    return pages


@pytest.mark.parametrize("magic", MAGICS, ids=[m.hex() for m in MAGICS])
def test_every_magic_maps_like_volatilitys_vmware_layer(tmp_path: Path, magic: bytes) -> None:
    state, vmem = tmp_path / "vm.vmss", tmp_path / "vm.vmem"
    write_memory_state(state, vmem)
    data = bytearray(state.read_bytes())
    data[:4] = magic
    state.write_bytes(bytes(data))
    theirs = layer(vmem, "vmware")
    with open_memory(state) as ours:
        assert list(ours.ranges()) == segments(theirs)
        assert same_pages(ours, theirs, ours.ranges()) == 1024
        assert ours.read(BANNER_PHYSICAL, len(BANNER)) == BANNER
        assert ours.info().details["magic"] == magic.hex()


def test_pci_hole_above_3_gib_is_unmapped_as_in_volatility(tmp_path: Path) -> None:
    state, vmem = tmp_path / "big.vmsn", tmp_path / "big.vmem"
    planted = {0: b"first page", 0xBFFFF: b"last page below the hole", 0xC0000: b"first page above 4 GiB"}
    sparse_vmem(vmem, 0x100000, planted)
    state.write_bytes(b.vmware_state(MAGICS[2], [("memory", b.regions_tags(PCI_HOLE_REGIONS))]))
    theirs = layer(vmem, "vmware")
    with open_memory(vmem) as ours:  # opened by the .vmem: its .vmsn is found beside it
        assert list(ours.ranges()) == segments(theirs) == [(0, 3 << 30), (4 << 30, 1 << 30)]
        for page in (0, 0xBFFFF, 0x100000, 0x13FFFF):
            assert ours.read(page * PAGE, PAGE) == theirs.read(page * PAGE, PAGE)
        assert ours.read(0x100000 * PAGE, 22) == b"first page above 4 GiB"
        assert ours.read(0xC0000000, 16) == bytes(16)  # the hole reads as zeros, as in the raw image
        out = tmp_path / "big.raw"
        result = convert(ours, out, "raw")
    assert result.size == 5 << 30 and out.stat().st_size == 5 << 30
    assert os.stat(out).st_blocks * 512 < 1 << 20  # three planted pages: the rest are holes
    with out.open("rb") as raw:
        raw.seek(4 << 30)
        assert raw.read(22) == b"first page above 4 GiB"


def test_conversions_read_back_through_volatilitys_layers_page_by_page(tmp_path: Path) -> None:
    state, vmem = tmp_path / "vm.vmsn", tmp_path / "vm.vmem"
    write_memory_state(state, vmem)
    theirs = layer(vmem, "vmware")
    with open_memory(state) as ours:
        for fmt in ("raw", "elf", "lime"):
            out = tmp_path / f"vm.{fmt}"
            convert(ours, out, fmt)
            converted = layer(out, fmt)
            if fmt != "raw":
                assert segments(converted) == segments(theirs)
            assert same_pages(converted, theirs, segments(theirs)) == 1024


def test_banner_of_converted_raw_and_elf_equals_volatilitys_own_vmware_layer(tmp_path: Path) -> None:
    # a small gap instead of the 4 GiB one keeps the raw image (and Volatility's scan of it) small
    regions = ((0, 0, 512), (0x600, 512, 512))
    state, vmem = tmp_path / "vm.vmss", tmp_path / "vm.vmem"
    write_memory_state(state, vmem, regions)
    physical = (0x600 + 3) * PAGE + 0x10
    expected = banners(vmem)
    assert [offset for offset, _ in expected] == [physical]
    with open_memory(state) as ours:
        for fmt in ("raw", "elf"):
            out = tmp_path / f"vm.{fmt}"
            convert(ours, out, fmt)
            assert banners(out) == expected, fmt


def test_embedded_memory_with_regions_is_read_from_the_state_file(tmp_path: Path) -> None:
    """Older Workstation / ESXi < 5 checkpoints keep memory in the state file (a long "Memory"
    tag); Volatility 3 cannot read them, so the planted bytes are the oracle: region offsets count
    from the tag's data, as Volatility 2 reads them."""
    memory = bytearray(8 * PAGE)
    memory[5 * PAGE : 5 * PAGE + 6] = b"page 5"
    groups = [
        ("memory", b.regions_tags([(0, 0, 4), (0x10, 4, 4)]) + b.long_tag("Memory", bytes(memory), 0, 0))
    ]
    state = tmp_path / "old.vmsn"
    state.write_bytes(b.vmware_state(MAGICS[1], groups))
    with open_memory(state) as ours:
        assert ours.ranges() == ((0, 4 * PAGE), (0x10 * PAGE, 4 * PAGE))
        assert ours.read((0x10 + 1) * PAGE, 6) == b"page 5"
        assert ours.info().details["memory"] == "embedded"


def test_version_0_long_tags_use_4_byte_sizes(tmp_path: Path) -> None:
    memory = b"A" * PAGE + b"B" * PAGE
    groups = [("memory", b.long_tag("Memory", memory, version=0) + b.tag("after", 7))]
    state = tmp_path / "v0.vmss"
    state.write_bytes(b.vmware_state(MAGICS[0], groups))
    with open_memory(state) as ours:
        assert ours.ranges() == ((0, 2 * PAGE),)
        assert ours.read(PAGE - 1, 2) == b"AB"


def test_cpu_group_registers_and_vcpu_count_are_reported(tmp_path: Path) -> None:
    state, vmem = tmp_path / "vm.vmss", tmp_path / "vm.vmem"
    write_memory_state(state, vmem)
    cpu = (
        b.tag("rip", 0xFFFFFFFF81000000, 0, size=8)
        + b.tag("rip", 0x1234, 1, size=8)
        + b.tag("CR64", 0x1AB000, 0, 3, size=8)
    )
    groups = [
        ("Checkpoint", b.tag("numVCPUs", 2)),
        ("cpu", cpu),
        ("memory", b.regions_tags(REGIONS)),
    ]
    state.write_bytes(b.vmware_state(MAGICS[2], groups))
    with open_memory(state) as ours:
        info = ours.info()
    assert info.cpu_count == 2
    assert info.registers == {0: {"rip": 0xFFFFFFFF81000000, "CR64[3]": 0x1AB000}, 1: {"rip": 0x1234}}


def test_vmem_without_its_state_file_is_refused(tmp_path: Path) -> None:
    vmem = tmp_path / "lonely.vmem"
    vmem.write_bytes(bytes(PAGE))
    with pytest.raises(MemoryFormatError, match="not a saved memory state"):
        open_memory(vmem)


def test_state_file_without_its_vmem_says_which_file_to_put_beside_it(tmp_path: Path) -> None:
    state = tmp_path / "vm-Snapshot1.vmsn"
    write_memory_state(state, tmp_path / "elsewhere.vmem")
    with pytest.raises(MemoryFormatError, match=r"put vm-Snapshot1\.vmem beside"):
        open_memory(state)


def test_region_beyond_the_vmem_is_refused(tmp_path: Path) -> None:
    state, vmem = tmp_path / "vm.vmss", tmp_path / "vm.vmem"
    write_memory_state(state, vmem, ((0, 0, 512), (0x100000, 512, 4096)))
    vmem.write_bytes(bytes(1024 * PAGE))
    with pytest.raises(MemoryFormatError, match="beyond the") as raised:
        open_memory(state)
    data = state.read_bytes()  # the offset is region 1's regionSize value in the state file
    assert raised.value.path == str(state)
    assert data[raised.value.offset : raised.value.offset + 4] == (4096).to_bytes(4, "little")
    assert data.rfind(b"regionSize", 0, raised.value.offset) > data.rfind(
        b"regionPageNum", 0, raised.value.offset
    )


def test_compressed_embedded_memory_is_refused(tmp_path: Path) -> None:
    groups = [("memory", b.long_tag("Memory", bytes(PAGE), memory_size=2 * PAGE))]
    state = tmp_path / "c.vmss"
    state.write_bytes(b.vmware_state(MAGICS[3], groups))
    with pytest.raises(MemoryFormatError, match="compressed"):
        open_memory(state)


def test_snapshot_without_memory_group_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "nomem.vmsn"
    state.write_bytes(b.vmware_state(MAGICS[2], [("Checkpoint", b.tag("version", 8))]))
    with pytest.raises(MemoryFormatError, match="no memory group"):
        open_memory(state)
