"""Hyper-V .vmrs saved state: the HyperVStorage container and the memory keys, on spec-built
files (tests/memory/hyperv_builder.py, from openvmm's FORMAT.md and hyperv_dump writer).

Gap, said plainly: no real Hyper-V saved state with memory is public (dissect.hypervisor's
test.VMRS is a Git LFS pointer, and a VM config runtime file besides), so these files prove the
reader against Microsoft's published description and writer, not against Hyper-V itself.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.memory import hyperv_builder as hb
from vmforensics.errors import MemoryFormatError
from vmforensics.memory import convert, open_memory

MiB = 1 << 20


def pattern(size: int, seed: int) -> bytes:
    """Distinct bytes per page (the page number and a seed), so a misplaced page shows."""
    return b"".join(struct.pack("<II", seed, page) * 512 for page in range(size // 4096))


def save(tmp_path: Path, layout: hb.Layout, name: str = "web01.vmrs") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(layout.data))
    return path


def test_two_ranges_around_the_pci_hole_read_page_for_page_and_convert(tmp_path: Path) -> None:
    low, high = pattern(3 * MiB, 1), pattern(MiB + 8192, 2)  # the high range ends in a partial block
    path = save(tmp_path, hb.saved_state([(0, low), (0x100000000, high)]))
    with open_memory(path) as memory:
        assert memory.ranges() == ((0, 3 * MiB), (0x100000000, MiB + 8192))
        assert memory.read(0, 3 * MiB) == low
        assert memory.read(0x100000000, len(high)) == high
        assert memory.read(3 * MiB - 16, 32) == low[-16:] + bytes(16)  # beyond the range: zeros
        info = memory.info()
        assert info.format == "hyperv" and info.memory_size == 4 * MiB + 8192
        assert info.details["vm_version"] == "10.0" and info.details["saved_state_type"] == "Normal"
        assert info.details["data_blocks"] == 5 and info.details["memory_blocks"] == 2
        assert info.cpu_count == 2 and info.details["processor_vendor"] == "Intel"
        elf = convert(memory, tmp_path / "guest.elf", "elf", progress=False)
    assert elf.stored == 4 * MiB + 8192
    with open_memory(tmp_path / "guest.elf") as back:
        assert back.read(0, 3 * MiB) == low and back.read(0x100000000, len(high)) == high


def test_a_short_ramblock_is_xpress_compressed_and_refused_at_its_offset(tmp_path: Path) -> None:
    layout = hb.saved_state([(0, pattern(2 * MiB, 3))], block_of=lambda n, d: d[:70000] if n == 1 else d)
    with pytest.raises(MemoryFormatError, match=r"RamBlock1 holds 70000 bytes.*XPRESS") as raised:
        open_memory(save(tmp_path, layout))
    assert raised.value.offset == layout.file_objects["/savedstate/RamBlock1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vm_version": 0x0500}, "VM version 5.0 keeps memory under older key names"),
        ({"flags": 4}, "flagged VTL2 memory"),
    ],
)
def test_layouts_not_documented_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(MemoryFormatError, match=message):
        open_memory(save(tmp_path, hb.saved_state([(0, pattern(MiB, 4))], **change)))


def test_a_container_without_memory_keys_is_refused_but_info_shows_what_it_holds(tmp_path: Path) -> None:
    config = save(tmp_path, hb.build([("/configuration/properties/version", hb.INT, 0x0900),
                                      ("/configuration/properties/name", hb.STRING, "web01")]), "web01.vmcx")  # fmt: skip
    with pytest.raises(MemoryFormatError, match="no /savedstate/VmVersion key"):
        open_memory(config)
    run = subprocess.run(
        [sys.executable, "-m", "vmforensics", "memory", "info", str(config), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    facts = json.loads(run.stdout)
    assert facts["format"] == "hyperv" and facts["memory"] is None
    assert "no /savedstate/VmVersion key" in facts["memory_refused"]
    assert facts["container"]["container_version"] == "4.0"
    assert ["/configuration/properties/name", "string", 10] in facts["keys"]


def test_every_checksum_and_bound_is_checked_with_its_offset(tmp_path: Path) -> None:
    base = hb.saved_state([(0, pattern(MiB, 5))])
    entry = base.entries["/savedstate/RamMemoryBlock0"]
    cases = {
        "no valid file header": (4, 1, b"\xff"),
        "object table entry 0 checksum mismatch": (base.object_table + 8 + 6, 1, b"\x7f"),
        "key table header checksum mismatch": (base.key_tables[0] + 4, 1, b"\x09"),
        "checksum mismatch": (entry + 30, 1, b"\x01"),
    }
    for message, (offset, length, value) in cases.items():
        data = bytearray(base.data)
        data[offset : offset + length] = value
        if offset == 4:  # both header copies broken
            data[4096 + 4 : 4096 + 5] = b"\xff"
        path = tmp_path / "broken.vmrs"
        path.write_bytes(bytes(data))
        with pytest.raises(MemoryFormatError, match=message) as raised:
            open_memory(path)
        assert raised.value.offset is not None, message
        path.unlink()


def test_the_newer_valid_header_copy_is_used_and_a_replay_log_is_never_applied(tmp_path: Path) -> None:
    layout = hb.saved_state([(0, pattern(MiB, 6))])
    data = bytearray(layout.data)
    data[4:8] = b"\0\0\0\0"  # copy 0 (sequence 1) broken: copy 1 alone is valid
    with open_memory(save(tmp_path, hb.Layout(data, *attrs_tail(layout)))) as memory:
        assert memory.info().details["header_sequence"] == 0
    dirty = hb.build([("/savedstate/VmVersion", hb.INT, 0x0A00)], replay_entries=2)
    with pytest.raises(MemoryFormatError, match="replay log holds 2 uncommitted"):
        open_memory(save(tmp_path, dirty, "dirty.vmrs"))


def attrs_tail(layout: hb.Layout) -> tuple:
    return layout.object_table, layout.key_tables, layout.file_objects, layout.entries


def test_a_file_object_pointer_beyond_the_file_or_untracked_is_refused(tmp_path: Path) -> None:
    layout = hb.saved_state([(0, pattern(MiB, 7))])
    entry = layout.entries["/savedstate/RamBlock0"]
    data = bytearray(layout.data)
    name_size = data[entry + 20]
    pointer = entry + 21 + name_size
    data[pointer + 4 : pointer + 12] = struct.pack("<Q", 1 << 40)
    covered = bytearray(data[entry : pointer + 12])
    covered[12:16] = b"\0\0\0\0"
    data[entry + 12 : entry + 16] = struct.pack("<I", zlib.crc32(covered))
    with pytest.raises(MemoryFormatError, match="not a file object") as raised:
        open_memory(save(tmp_path, hb.Layout(data, *attrs_tail(layout))))
    assert raised.value.offset == entry


def test_a_hyperv_folder_acquisition_derives_the_memory_image_and_verify_rederives_it(tmp_path: Path) -> None:
    from vmforensics import CaseInfo, LocalAcquirer, verify

    folder = tmp_path / "web01"
    folder.mkdir()
    config = hb.build([("/configuration/properties/version", hb.INT, 0x0A00)])
    (folder / "4AD1E7F3.vmcx").write_bytes(bytes(config.data))
    low = pattern(2 * MiB, 8)
    state = hb.saved_state([(0, low), (0x100000000, pattern(MiB, 9))])
    (folder / "4AD1E7F3.vmrs").write_bytes(bytes(state.data))
    result = LocalAcquirer().acquire(
        str(folder), tmp_path / "ev", case=CaseInfo(case_id="2026-118", examiner="A. Analyst"),
        progress=False, memory_image="elf",
    )  # fmt: skip
    (derived,) = result.derived
    assert derived.ok, derived.error
    with open_memory(result.path / derived.output) as image:
        assert image.ranges() == ((0, 2 * MiB), (0x100000000, MiB))
        assert image.read(0, 2 * MiB) == low
    report = verify(result.path)
    assert report.ok and "re-derived byte for byte" in report.post_seal[0].summary


def test_hyperv_own_folder_layout_gives_the_roles_and_the_memory_image(tmp_path: Path) -> None:
    """Hyper-V keeps a VM's files in "Virtual Machines/" and "Virtual Hard Disks/" below its folder:
    the hypervisor is told from there too, so the state file is a vm-state and its memory derived."""
    from vmforensics import CaseInfo, LocalAcquirer

    folder = tmp_path / "web01"
    (folder / "Virtual Machines").mkdir(parents=True)
    (folder / "Virtual Hard Disks").mkdir()
    config = hb.build([("/configuration/properties/version", hb.INT, 0x0A00)])
    (folder / "Virtual Machines" / "4AD1E7F3.vmcx").write_bytes(bytes(config.data))
    state = hb.saved_state([(0, pattern(MiB, 11))])
    (folder / "Virtual Machines" / "4AD1E7F3.vmrs").write_bytes(bytes(state.data))
    result = LocalAcquirer().acquire(
        str(folder), tmp_path / "ev", case=CaseInfo(case_id="2026-119", examiner="A. Analyst"), progress=False
    )
    roles = {Path(f.local_path).name: f.role for f in result.manifest.files}
    assert roles == {"4AD1E7F3.vmcx": "config", "4AD1E7F3.vmrs": "vm-state"}
    (derived,) = result.derived
    assert derived.ok, derived.error
    assert derived.output.endswith(".raw")  # byte n of a raw image is guest-physical address n
    assert (result.path / derived.output).read_bytes()[:MiB] == pattern(MiB, 11)


def test_object_types_dissect_saw_in_real_files_are_passed_over_and_others_refused(tmp_path: Path) -> None:
    layout = hb.saved_state([(0, pattern(MiB, 10))])
    count = struct.unpack_from("<I", layout.data, layout.object_table + 4)[0]
    slot = layout.object_table + 8 + (count - 1) * 18  # the last entry: the chain slot
    for kind, refused in ((6, False), (8, True)):
        data = bytearray(layout.data)
        entry = bytes([kind]) + bytes(4) + bytes(data[slot + 5 : slot + 18])
        data[slot : slot + 18] = entry[:1] + struct.pack("<I", hb.checksum(entry, 1)) + entry[5:]
        path = save(tmp_path, hb.Layout(data, *attrs_tail(layout)), f"type{kind}.vmrs")
        if refused:
            with pytest.raises(MemoryFormatError, match="unknown type 8") as raised:
                open_memory(path)
            assert raised.value.offset == slot
        else:
            with open_memory(path) as memory:
                assert memory.read(0, 16) == pattern(MiB, 10)[:16]


def test_a_key_tree_cycle_and_an_oversized_object_table_are_refused(tmp_path: Path) -> None:
    layout = hb.saved_state([(0, pattern(MiB, 11))])
    data = bytearray(layout.data)
    node, child = layout.entries["/savedstate"], layout.entries["/savedstate/savedVM"]
    table = max(t for t in layout.key_tables if t <= child)
    struct.pack_into("<HI", data, node + 6, layout.key_tables.index(table) + 1, child - table)
    name_size = data[node + 20]
    covered = bytearray(data[node : node + 21 + name_size + 12])
    covered[12:16] = b"\0\0\0\0"
    struct.pack_into("<I", data, node + 12, zlib.crc32(covered))
    with pytest.raises(MemoryFormatError, match="cycle"):
        open_memory(save(tmp_path, hb.Layout(data, *attrs_tail(layout)), "cycle.vmrs"))

    big = bytearray(layout.data)
    struct.pack_into("<I", big, layout.object_table + 4, 100_000)
    with pytest.raises(MemoryFormatError, match="an object table of 100000 entries") as raised:
        open_memory(save(tmp_path, hb.Layout(big, *attrs_tail(layout)), "big.vmrs"))
    assert raised.value.offset == layout.object_table + 4


def test_the_vp_count_comes_from_the_vp_indices_bitmap_and_an_unknown_blob_records_none(
    tmp_path: Path,
) -> None:
    for name, blob, expected in (
        ("sparse", hb.partition_state([0, 3, 70], vendor=0), (3, "AMD")),
        ("garbage", b"\x01" * 3000, None),
        ("no-prolog", without_prolog(hb.partition_state([0])), None),
    ):
        path = save(tmp_path, hb.saved_state([(0, pattern(MiB, 12))], partition=blob), f"{name}.vmrs")
        with open_memory(path) as memory:
            info = memory.info()
            found = (info.cpu_count, info.details["processor_vendor"]) if info.cpu_count is not None else None
            assert found == expected, name
            assert memory.read(0, 8) == pattern(MiB, 12)[:8]


def without_prolog(blob: bytes) -> bytes:
    """The blob with its PROLOG chunk cut out and the descriptor's total size fixed."""
    cut = blob[:40] + blob[40 + 4080 :]
    return struct.pack("<QQQ", 24, 24, len(cut)) + cut[24:]
