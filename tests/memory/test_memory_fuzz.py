"""Damaged saved states: mutated VMware state files, QEVM streams, libvirt saves, ELF cores,
LiME and Hyper-V .vmrs files may only raise MemoryFormatError, quickly and with small allocations."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.interop.vmware_state import write_memory_state
from tests.memory import builders as b
from tests.memory import hyperv_builder as hb
from vmforensics.errors import MemoryFormatError
from vmforensics.images.base import MAX_ALLOCATION
from vmforensics.memory import convert, digest, open_memory
from vmforensics.memory.libvirt_save import HEADER, MAGIC
from vmforensics.memory.vmware_layout import MAGICS

PAGE = 4096
MiB = 1 << 20


class Seed(NamedTuple):
    name: str  # file name (its suffix matters for VMware)
    data: bytes
    regions: list[tuple[int, int]]  # where its metadata lies
    companion: tuple[str, bytes] | None = None  # a .vmem beside it

    def __repr__(self) -> str:
        return f"Seed({self.name})"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    work = tmp_path_factory.mktemp("memory-seeds")
    made = []
    regions = ((0, 0, 16), (0x600, 16, 16))
    write_memory_state(work / "vm.vmss", work / "vm.vmem", regions)
    state = (work / "vm.vmss").read_bytes()
    made.append(Seed("vm.vmss", state, [(0, len(state))], ("vm.vmem", (work / "vm.vmem").read_bytes())))
    embedded = b.vmware_state(
        MAGICS[0],
        [
            (
                "memory",
                b.regions_tags([(0, 0, 2), (4, 2, 2)])
                + b.long_tag("Memory", bytes(4 * PAGE), 0, 0, version=0),
            )
        ],
    )
    made.append(Seed("old.vmsn", embedded, [(0, len(embedded) - 4 * PAGE)]))
    records = [("pc.ram", 0, b"A" * PAGE), ("pc.ram", PAGE, None), ("pc.ram", 2 * PAGE, b"B" * PAGE)]
    description = {"page_size": PAGE, "devices": [{"name": "cpu"}]}
    stream = b.qevm(
        [("pc.ram", 64 * PAGE), ("pc.bios", 4 * PAGE)],
        records,
        subsections=b.capabilities("events"),
        description=description,
    )
    made.append(Seed("vm.qevm", stream, [(0, 200), (len(stream) - 120, 120)]))
    xml = b"<domain><name>d</name><vcpu>1</vcpu><memory unit='KiB'>256</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os></domain>\0"
    save = HEADER.pack(MAGIC, 2, len(xml), 1, 0, 0, *([0] * 14)) + xml + stream
    made.append(Seed("vm.save", save, [(0, HEADER.size + len(xml) + 200)]))
    with open_memory(work / "vm.vmss") as memory:
        convert(memory, work / "vm.elf", "elf", progress=False)
        convert(memory, work / "vm.lime", "lime", progress=False)
    elf = (work / "vm.elf").read_bytes()
    made.append(Seed("vm.elf", elf, [(0, 64 + 56 * 2)]))
    lime = (work / "vm.lime").read_bytes()
    made.append(Seed("vm.lime", lime, [(0, 32), (32 + 16 * PAGE, 32)]))
    vmrs = hb.saved_state([(0, bytes(range(256)) * 4096)])  # headers, object table, key tables, replay log
    made.append(
        Seed(
            "vm.vmrs",
            bytes(vmrs.data),
            [(0, 3 * PAGE), (vmrs.key_tables[0], len(vmrs.data) - vmrs.key_tables[0])],
        )
    )
    live = b.live_qevm()
    made.append(Seed("live.qevm", live, [(len(live) - 4 * (PAGE + 8) - 100, 4 * (PAGE + 8) + 80)]))
    mapped = b.mapped_ram_qevm(
        [("pc.ram", 64 * PAGE), ("pc.bios", 4 * PAGE)], {("pc.ram", 1): bytes([7]) * PAGE}
    )
    made.append(Seed("mapped.qevm", mapped, [(0, 200), (len(mapped) - 200, 200)]))
    return made


def exercise(path: Path) -> None:
    """What an analyst does with a saved state; must end in memory or a MemoryFormatError."""
    try:
        with open_memory(path) as memory:
            memory.info()
            for start, length in memory.ranges()[:64]:
                memory.read(start, min(length, 64 << 10))
                memory.read(start + length - min(length, PAGE), min(length, PAGE))
            if memory.extents.stored < 8 * MiB:
                digest(memory, "elf")
                if memory.size < 64 * MiB:
                    digest(memory, "raw")
    except MemoryFormatError as exc:
        assert exc.reason


mutation = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 255))


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=10000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 8), mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_saved_states_raise_only_memory_format_errors(
    seeds: list[Seed], tmp_path: Path, seed: int, mutations: list[tuple[int, int, int]]
) -> None:
    chosen = seeds[seed]
    mutated = bytearray(chosen.data)
    for which, where, xor in mutations:
        start, length = chosen.regions[which % len(chosen.regions)]
        position = start + where % max(1, length)
        if position < len(mutated):
            mutated[position] ^= xor
    path = tmp_path / chosen.name
    path.write_bytes(mutated)
    if chosen.companion is not None:
        (tmp_path / chosen.companion[0]).write_bytes(chosen.companion[1])
    tracemalloc.start()
    try:
        exercise(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_ALLOCATION, f"peak allocation {peak} bytes"


@pytest.mark.parametrize(
    ("seed", "offset", "fmt", "value", "reason"),
    [
        (0, 8, "<I", 1 << 30, "group count"),
        (2, 4, ">I", 2, "QEVM version 2"),
        (3, 16, "<I", 9, "version 9"),
        (3, 28, "<I", 17, "unknown save image format 17"),
        (4, 56, "<H", 0xFFFE, "program headers do not fit"),
        (4, 16, "<H", 2, "not a core file"),
        (5, 32 + 16 * PAGE + 4, "<I", 2, "bad LiME header"),
        (5, 16, "<Q", 1 << 62, "runs past the end"),
        (6, 8192 + 4, "<I", 1 << 30, "an object table of 1073741824 entries"),
    ],
)
def test_absurd_header_fields_are_refused_before_any_large_allocation(
    seeds: list[Seed], tmp_path: Path, seed: int, offset: int, fmt: str, value: int, reason: str
) -> None:
    chosen = seeds[seed]
    data = bytearray(chosen.data)
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / chosen.name
    path.write_bytes(data)
    if chosen.companion is not None:
        (tmp_path / chosen.companion[0]).write_bytes(chosen.companion[1])
    with pytest.raises(MemoryFormatError, match=reason) as caught, open_memory(path) as memory:
        memory.read(0, PAGE)
    assert caught.value.path == str(path)


def test_a_region_claiming_16_tib_is_refused_for_raw_but_converts_to_elf(tmp_path: Path) -> None:
    state, vmem = tmp_path / "far.vmss", tmp_path / "far.vmem"
    write_memory_state(state, vmem, ((0, 0, 16), (0xFFFFFFF0, 16, 16)))
    with open_memory(state) as memory:
        with pytest.raises(MemoryFormatError, match="convert to elf or lime instead"):
            digest(memory, "raw")
        assert digest(memory, "elf").size < MiB
