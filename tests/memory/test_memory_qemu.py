"""QEMU migration streams from a real QEMU (TCG) guest, against QEMU's own ELF dump of the same
paused guest (dump-guest-memory): every page, the PCI hole of a 4 GiB guest, and the converted
images read back by Volatility 3's layers and scanned by its banners plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.memory.qemu_guest import BANNER, BANNER_ADDRESS, Guest, available
from tests.memory.volatility import banners, layer, segments
from vmforensics.memory import GuestMemory, convert, open_memory

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")
PAGE = 4096


class Saved(NamedTuple):
    stream: Path  # the QEVM stream (migrate to a file)
    dump: Path  # QEMU's ELF dump of the same paused guest


def save(folder: Path, memory_mib: int, banner_address: int = BANNER_ADDRESS) -> Saved:
    guest = Guest(folder, memory_mib=memory_mib, banner_address=banner_address)
    try:
        guest.pause()
        guest.dump_elf(folder / "guest.elf")
        guest.migrate_to(folder / "guest.qevm")
    finally:
        guest.close()
    return Saved(folder / "guest.qevm", folder / "guest.elf")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    yield save(tmp_path_factory.mktemp("qemu-small"), 64)


def read(reader, address: int, length: int) -> bytes:
    """Bytes at a guest-physical address; Volatility layers pad what they do not map with zeros."""
    if isinstance(reader, GuestMemory):
        return reader.read(address, length)
    return reader.read(address, length, pad=True)


def compare(ours, theirs, ranges) -> int:
    pages = 0
    for start, length in ranges:
        for address in range(start, start + length, 1 << 20):
            step = min(1 << 20, start + length - address)
            assert read(ours, address, step) == read(theirs, address, step), hex(address)
            pages += step // PAGE
    return pages


def test_every_page_of_the_stream_equals_qemus_elf_dump(small: Saved) -> None:
    dump = layer(small.dump, "elf")
    with open_memory(small.stream) as ours:
        assert (
            list(ours.ranges()) == segments(dump) == [(0, 64 << 20), (0x100000000 - (256 << 10), 256 << 10)]
        )
        assert compare(ours, dump, ours.ranges()) == (64 << 20) // PAGE + 64
        assert ours.read(BANNER_ADDRESS, len(BANNER)) == BANNER
        info = ours.info()
    assert info.format == "qemu"
    assert info.details["machine"].startswith("pc-i440fx-")
    assert info.cpu_count == 1


def test_conversions_read_back_by_volatility_equal_the_elf_dump(small: Saved, tmp_path: Path) -> None:
    dump = layer(small.dump, "elf")
    with open_memory(small.stream) as ours:
        for fmt in ("raw", "elf", "lime"):
            out = tmp_path / f"guest.{fmt}"
            result = convert(ours, out, fmt)
            converted = layer(out, fmt)
            assert compare(converted, dump, segments(dump)) == (64 << 20) // PAGE + 64, fmt
            if fmt != "raw":  # zero pages are skipped: far smaller than the guest
                assert result.size < 8 << 20
    assert (tmp_path / "guest.raw").stat().st_size == 1 << 32  # pc.bios ends at 4 GiB
    assert (tmp_path / "guest.raw").stat().st_blocks * 512 < 8 << 20  # sparse


def test_volatility_finds_the_banner_in_the_converted_elf_at_its_guest_address(
    small: Saved, tmp_path: Path
) -> None:
    with open_memory(small.stream) as ours:
        convert(ours, tmp_path / "guest.elf", "elf")
    found = banners(tmp_path / "guest.elf")
    assert (BANNER_ADDRESS, BANNER.decode().strip()) in [(o, b.strip()) for o, b in found]
    assert found == banners(small.dump)


def test_4_gib_guest_has_the_pci_hole_where_qemus_dump_has_it(tmp_path: Path) -> None:
    above = 0x100000000 + 0x100000  # the banner lies above 4 GiB, past the 1 GiB PCI hole
    saved = save(tmp_path, 4096, banner_address=above)
    dump = layer(saved.dump, "elf")
    with open_memory(saved.stream) as ours:
        assert list(ours.ranges()) == segments(dump)
        assert ours.ranges() == ((0, 3 << 30), (0x100000000 - (256 << 10), 256 << 10), (4 << 30, 1 << 30))
        assert ours.read(above, len(BANNER)) == BANNER
        assert compare(ours, dump, ours.ranges()) == (4 << 30) // PAGE + 64
