"""QEVM streams built to the letter of QEMU's migration/savevm.c and ram.c for the cases this
QEMU does not write on its own: configuration subsections (newer QEMU), pages sent twice, and
record kinds that are refused rather than guessed (XBZRLE, compressed pages), and mapped-ram
streams (QEMU 9.0+; this QEMU 7.2 cannot write them, so they are built from ram.c's layout)."""

from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

import pytest

from tests.memory import builders as b
from vmforensics.errors import MemoryFormatError
from vmforensics.memory import open_memory
from vmforensics.memory.libvirt_save import HEADER, MAGIC

PAGE = 4096
MiB = 1 << 20


def page(fill: bytes) -> bytes:
    return (fill * PAGE)[:PAGE]


def write(tmp_path: Path, data: bytes, name: str = "vm.qevm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_configuration_subsections_of_newer_qemu_are_read(tmp_path: Path) -> None:
    subsections = (
        b.subsection("configuration/target-page-bits", struct.pack(">I", 12))
        + b.capabilities("events", "zero-blocks")
        + b.subsection("configuration/uuid", bytes(range(16)))
    )
    stream = b.qevm(
        [("pc.ram", 4 * MiB)], [("pc.ram", 0, page(b"A")), ("pc.ram", PAGE, None)], subsections=subsections
    )
    with open_memory(write(tmp_path, stream)) as memory:
        details = memory.info().details
        assert details["capabilities"] == ["events", "zero-blocks"]
        assert details["uuid"] == bytes(range(16)).hex()
        assert memory.read(0, 2) == b"AA" and memory.read(PAGE, 4) == bytes(4)


def test_unknown_configuration_subsection_is_refused_with_its_offset(tmp_path: Path) -> None:
    stream = b.qevm([("pc.ram", MiB)], [], subsections=b.subsection("configuration/new-thing", b"\0" * 4))
    with pytest.raises(
        MemoryFormatError, match="unknown configuration subsection 'configuration/new-thing'"
    ) as raised:
        open_memory(write(tmp_path, stream))
    assert raised.value.offset == 8 + 1 + 4 + len("pc-i440fx-7.2")


@pytest.mark.parametrize("capability", ["multifd", "xbzrle", "postcopy-ram", "compress"])
def test_capabilities_that_move_ram_elsewhere_are_refused(tmp_path: Path, capability: str) -> None:
    stream = b.qevm([("pc.ram", MiB)], [], subsections=b.capabilities(capability))
    with pytest.raises(MemoryFormatError, match=f"capability {capability}"):
        open_memory(write(tmp_path, stream))


def test_xbzrle_page_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    stream = b.qevm([("pc.ram", MiB)], [("pc.ram", 0, b"")], extra_flags=b.XBZRLE)
    with pytest.raises(MemoryFormatError, match="XBZRLE"):
        open_memory(write(tmp_path, stream))


def test_a_page_sent_twice_keeps_its_last_copy(tmp_path: Path) -> None:
    records = [
        ("pc.ram", 0, page(b"1")),
        ("pc.ram", PAGE, page(b"2")),
        ("pc.ram", 0, page(b"3")),
        ("pc.ram", PAGE, None),
    ]
    with open_memory(write(tmp_path, b.qevm([("pc.ram", MiB)], records))) as memory:
        assert memory.read(0, PAGE) == page(b"3")
        assert memory.read(PAGE, PAGE) == bytes(PAGE)  # re-sent as a zero page


def test_a_block_claiming_a_terabyte_with_pages_out_of_order_is_refused_before_any_page_table(
    tmp_path: Path,
) -> None:
    """Out-of-order pages are resolved with a table of 8 bytes a page; a block list that lies about
    its size must not make that table (2 GiB here) for a stream of a few records."""
    stream = b.qevm(
        [("pc.ram", 1 << 40)], [("pc.ram", PAGE, page(b"1")), ("pc.ram", 0, None)], complete=False
    )
    path = write(tmp_path, stream)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryFormatError, match="holds 2 page records: the stream is incomplete"):
            open_memory(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


@pytest.mark.parametrize("sweeps", [1, 5, 70])
def test_sweeps_of_resent_pages_keep_each_pages_last_copy(tmp_path: Path, sweeps: int) -> None:
    """A live save: every page once in order (stored in stretches of 64 pages), then ``sweeps``
    ascending sweeps over a few random pages, each stored (its own bytes) or zero. 1 and 5 sweeps
    are laid over the first one row by row; 70 cost more row visits than a table of the pages,
    which resolves them instead. The oracle is the last record of each page, kept in a dict."""
    pages, rng = 4096, random.Random(sweeps)
    last: dict[int, bytes | None] = {}
    records = []
    for sweep in range(sweeps + 1):
        chosen = range(pages) if sweep == 0 else sorted(rng.sample(range(pages), rng.randint(1, 12)))
        for number in chosen:
            zero = (number // 64) % 2 if sweep == 0 else rng.random() < 0.4
            data = None if zero else page(bytes([1 + sweep % 200, number % 256]))
            records.append(("pc.ram", number * PAGE, data))
            last[number] = data
    stream = b.qevm([("pc.ram", pages * PAGE)], records, complete=False)
    with open_memory(write(tmp_path, stream)) as memory:
        image = memory.read(0, pages * PAGE)
        stored = memory.extents.stored
    expected = b"".join(data or bytes(PAGE) for _, data in sorted(last.items()))
    assert image == expected
    assert stored == PAGE * sum(1 for data in last.values() if data is not None)


def test_zero_page_with_a_fill_byte_is_refused(tmp_path: Path) -> None:
    stream = bytearray(b.qevm([("pc.ram", MiB)], [("pc.ram", 0, None)]))
    fill = stream.index(b"\x06pc.ram", 60) + 7
    stream[fill] = 0x5A
    with pytest.raises(MemoryFormatError, match="filled with 0x5a"):
        open_memory(write(tmp_path, bytes(stream)))


def test_page_for_an_unlisted_block_is_refused(tmp_path: Path) -> None:
    stream = b.qevm([("pc.ram", MiB)], [("vga.vram", 0, page(b"v"))])
    with pytest.raises(MemoryFormatError, match=r"'vga\.vram', which the block list does not name"):
        open_memory(write(tmp_path, stream))


def test_page_beyond_its_block_is_refused(tmp_path: Path) -> None:
    stream = b.qevm([("pc.ram", MiB)], [("pc.ram", MiB, page(b"x"))])
    with pytest.raises(MemoryFormatError, match=r"beyond block 'pc\.ram'"):
        open_memory(write(tmp_path, stream))


def test_truncated_stream_is_refused_with_the_offset(tmp_path: Path) -> None:
    stream = b.qevm([("pc.ram", MiB)], [("pc.ram", 0, page(b"A")), ("pc.ram", PAGE, page(b"B"))])
    cut = stream[: len(stream) - 100 - PAGE]
    with pytest.raises(MemoryFormatError, match="ends inside") as raised:
        open_memory(write(tmp_path, cut))
    assert raised.value.offset is not None and raised.value.offset <= len(cut)


def test_device_section_before_ram_is_refused(tmp_path: Path) -> None:
    stream = bytearray(b.qevm([("pc.ram", MiB)], []))
    at = stream.index(b"\x03ram")
    stream[at : at + 4] = b"\x03rtc"
    with pytest.raises(MemoryFormatError, match="section 'rtc' comes before RAM"):
        open_memory(write(tmp_path, bytes(stream)))


def test_machine_without_a_known_ram_placement_is_refused(tmp_path: Path) -> None:
    stream = b.qevm([("ram0", MiB)], [("ram0", 0, page(b"r"))], machine="some-board")
    with pytest.raises(MemoryFormatError, match="no RAM block of machine type 'some-board'"):
        open_memory(write(tmp_path, stream))


def test_q35_guest_of_3_gib_splits_ram_at_2_gib(tmp_path: Path) -> None:
    size = 3 << 30
    records = [("pc.ram", (2 << 30) - PAGE, page(b"L")), ("pc.ram", 2 << 30, page(b"H"))]
    stream = b.qevm([("pc.ram", size)], records, machine="pc-q35-7.2")
    with open_memory(write(tmp_path, stream)) as memory:
        assert memory.ranges() == ((0, 2 << 30), (4 << 30, 1 << 30))
        assert memory.read((2 << 30) - PAGE, 1) == b"L"
        assert memory.read(4 << 30, 1) == b"H"


@pytest.mark.parametrize("order", ["in order", "sent again"])
def test_pc_ram_across_the_pci_hole_and_the_bios_below_4_gib_land_where_qemu_maps_them(
    tmp_path: Path, order: str
) -> None:
    """One stored run that crosses pc.ram's 3 GiB split is cut in two, its upper part moved above
    4 GiB; pc.bios's pages go just below 4 GiB, between them. "sent again": the same pages come
    first as other bytes and then again (a live save), so the last copy must win."""
    size, bios = 4 << 30, 256 << 10
    low = 3 << 30  # i440fx with 4 GiB of RAM
    ram = [("pc.ram", low - 2 * PAGE + n * PAGE, page(bytes([0x41 + n]))) for n in range(4)]
    records = [("pc.ram", 5 * PAGE, page(b"5")), *ram, ("pc.bios", bios - PAGE, page(b"B"))]
    if order == "sent again":
        records = [(name, offset, page(b"?")) for name, offset, _ in records] + records
    stream = b.qevm([("pc.ram", size), ("pc.bios", bios)], records)
    with open_memory(write(tmp_path, stream)) as memory:
        assert memory.ranges() == ((0, low), ((4 << 30) - bios, bios), (4 << 30, 1 << 30))
        assert memory.read(5 * PAGE, PAGE) == page(b"5")
        assert memory.read(low - 2 * PAGE, 2 * PAGE) == page(b"A") + page(b"B")
        assert memory.read(low, PAGE) == bytes(PAGE)  # the PCI hole
        assert memory.read((4 << 30) - PAGE, 3 * PAGE) == page(b"B") + page(b"C") + page(b"D")
        assert memory.read((4 << 30) - bios, PAGE) == bytes(PAGE)
        assert memory.extents.stored == 6 * PAGE
        assert list(memory.extents.starts) == [5 * PAGE, low - 2 * PAGE, (4 << 30) - PAGE, 4 << 30]


def test_vmdescription_gives_the_cpu_count(tmp_path: Path) -> None:
    description = {"page_size": PAGE, "devices": [{"name": "cpu"}, {"name": "cpu"}, {"name": "apic"}]}
    stream = b.qevm([("pc.ram", MiB)], [], description=description)
    with open_memory(write(tmp_path, stream)) as memory:
        assert memory.info().cpu_count == 2


def test_unfinished_libvirt_save_is_refused(tmp_path: Path) -> None:
    header = HEADER.pack(b"LibvirtQemudPart", 2, 0, 0, 0, 0, *([0] * 14))
    with pytest.raises(MemoryFormatError, match="never completed"):
        open_memory(write(tmp_path, header, "part.save"))


def test_libvirt_save_header_past_the_file_is_refused(tmp_path: Path) -> None:
    header = HEADER.pack(MAGIC, 2, 1 << 30, 1, 0, 0, *([0] * 14))
    with pytest.raises(MemoryFormatError, match="XML length") as raised:
        open_memory(write(tmp_path, header + b"<domain/>", "big.save"))
    assert raised.value.offset == 20


def test_libvirt_save_with_a_doctype_is_refused(tmp_path: Path) -> None:
    xml = b'<!DOCTYPE d [<!ENTITY x "y">]><domain>&x;</domain>\0'
    header = HEADER.pack(MAGIC, 2, len(xml), 1, 0, 0, *([0] * 14))
    with pytest.raises(MemoryFormatError, match="DOCTYPE") as raised:
        open_memory(write(tmp_path, header + xml + b.qevm([("pc.ram", MiB)], []), "dtd.save"))
    assert raised.value.offset == HEADER.size


def test_gzip_bomb_in_a_libvirt_save_stops_at_the_guests_size(tmp_path: Path) -> None:
    import zlib

    xml = b"<domain><memory unit='KiB'>1024</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os></domain>\0"
    packer = zlib.compressobj(wbits=31)
    bomb = (
        packer.compress(b.qevm([("pc.ram", MiB)], [])[:20])
        + packer.compress(bytes(400 * MiB))
        + packer.flush()
    )
    header = HEADER.pack(MAGIC, 2, len(xml), 1, 1, 0, *([0] * 14))
    with pytest.raises(MemoryFormatError, match="decompresses to more than"):
        open_memory(write(tmp_path, header + xml + bomb, "bomb.save"))


def test_a_hyperv_signature_without_a_valid_header_is_refused_never_guessed(tmp_path: Path) -> None:
    """The HyperVStorage signature alone (no header checksum, no tables): recognised as Hyper-V,
    refused at the header (tests/memory/test_memory_hyperv.py has the well-formed cases)."""
    vmrs = tmp_path / "web01.vmrs"
    vmrs.write_bytes(struct.pack("<II", 0x01282014, 0) + bytes(8192))
    with pytest.raises(MemoryFormatError, match="no valid file header") as raised:
        open_memory(vmrs)
    assert raised.value.offset == 0


def test_long_zero_runs_around_stored_pages_read_back_page_for_page(tmp_path: Path) -> None:
    """Zero runs of thousands of records are matched in bulk; a stored page, a page number that
    jumps (pages sent out of order) or the block's end must each stop a bulk match exactly."""
    pages = 4096
    stored = {100: page(b"a"), 101: page(b"b"), 1000: page(b"c"), 4095: page(b"z")}
    ascending = [("pc.ram", number * PAGE, data) for number, data in sorted(stored.items())]
    late = [("pc.ram", 3000 * PAGE, page(b"L")), ("pc.ram", 500 * PAGE, page(b"M"))]  # sent first
    for name, records, extra in (("in-order", ascending, {}), ("jumps", late, {3000: b"L", 500: b"M"})):
        expected = bytearray(pages * PAGE)
        for number, data in {**stored, **{n: page(f) for n, f in extra.items()}}.items():
            if name == "in-order" or number in extra:
                expected[number * PAGE : (number + 1) * PAGE] = data
        path = write(tmp_path, b.qevm([("pc.ram", pages * PAGE)], records), f"{name}.qevm")
        with open_memory(path) as memory:
            assert memory.read(0, pages * PAGE) == bytes(expected), name
            assert (
                memory.extents.stored
                == sum(1 for page_ in range(pages) if any(expected[page_ * PAGE : (page_ + 1) * PAGE])) * PAGE
            )


def test_zero_page_with_a_fill_byte_deep_in_a_long_zero_run_is_refused_at_its_offset(tmp_path: Path) -> None:
    stream = bytearray(b.qevm([("pc.ram", 16 * MiB)], []))
    first = stream.index(b"\x06pc.ram", 60) + 7  # the fill byte of page 0's record
    fill = first + 777 * 9  # page 777's: every record before it is 9 bytes (CONTINUE, zero)
    assert stream[fill - 1] == 0x22 and stream[fill] == 0
    stream[fill] = 0x5A
    with pytest.raises(MemoryFormatError, match="filled with 0x5a") as raised:
        open_memory(write(tmp_path, bytes(stream)))
    assert raised.value.offset == fill - 8


MAPPED = [("pc.ram", 1000 * PAGE), ("pc.bios", 64 * PAGE)]


def test_a_mapped_ram_stream_reads_each_page_from_its_place_in_the_file(tmp_path: Path) -> None:
    """Pages at either side of a bitmap word, the last page of a block whose bitmap ends inside
    a word, pc.bios just below 4 GiB; a stale page (in the file, cleared in the bitmap) reads zero."""
    pages = {("pc.ram", n): page(bytes([n % 250 + 1])) for n in (0, 63, 64, 65, 999)}
    pages[("pc.bios", 63)] = page(b"B")
    stream = b.mapped_ram_qevm(MAPPED, pages, stale={("pc.ram", 5): page(b"X")})
    with open_memory(write(tmp_path, stream)) as memory:
        assert memory.ranges() == ((0, 1000 * PAGE), ((4 << 30) - 64 * PAGE, 64 * PAGE))
        for (block, number), data in pages.items():
            address = number * PAGE if block == "pc.ram" else (4 << 30) - 64 * PAGE + number * PAGE
            assert memory.read(address, PAGE) == data, (block, number)
        assert memory.read(5 * PAGE, PAGE) == bytes(PAGE)
        assert memory.extents.stored == 6 * PAGE
        assert len(memory.extents) == 4  # pages 63-65 are one run across the word boundary
        assert memory.info().details["capabilities"] == ["mapped-ram"]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (lambda bitmap, pages, length: (2, PAGE, bitmap, pages), "header version 2"),
        (lambda bitmap, pages, length: (1, 2 * PAGE, bitmap, pages), "pages of 8192 bytes"),
        (lambda bitmap, pages, length: (1, PAGE, 0, 0), "not in the file"),
        (lambda bitmap, pages, length: (1, PAGE, bitmap, pages - (1 << 20)), "do not fit"),
        (lambda bitmap, pages, length: (1, PAGE, bitmap, pages + (1 << 40)), "do not fit"),
        (lambda bitmap, pages, length: (1, PAGE, bitmap - 64, pages), "do not fit"),
    ],
)
def test_a_mapped_ram_header_that_does_not_hold_is_refused_with_its_offset(
    tmp_path: Path, header, reason: str
) -> None:
    stream = b.mapped_ram_qevm(MAPPED, {("pc.ram", 0): page(b"a")}, header=header)
    with pytest.raises(MemoryFormatError, match=reason) as raised:
        open_memory(write(tmp_path, stream))
    assert raised.value.offset == stream.index(b"\x06pc.ram") + 7 + 8


def test_a_page_record_for_a_mapped_ram_block_is_refused(tmp_path: Path) -> None:
    stream = b.mapped_ram_qevm(MAPPED, {("pc.ram", 0): page(b"a")})
    flush = b"\x02" + struct.pack(">IQ", 2, 0x200)
    record = b"\x02" + struct.pack(">IQ", 2, b.PAGE_FLAG) + b"\x06pc.ram" + page(b"r")
    with pytest.raises(MemoryFormatError, match=r"page record for mapped-ram block 'pc\.ram'"):
        open_memory(write(tmp_path, stream.replace(flush, record)))
