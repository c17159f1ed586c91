"""The index every memory reader builds: rows of at most MAX_RUN bytes, cut and moved in place."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from vmforensics.errors import MemoryFormatError
from vmforensics.memory.base import MAX_RUN, PAGE, Extents, GuestMemory, MemoryInfo, MemoryRange

STRIDE = PAGE + 8  # a QEMU page record: 8 header bytes, then the page


def guest(path: Path, extents: Extents, size: int) -> GuestMemory:
    info = MemoryInfo(format="test", page_size=PAGE, memory_size=size, ranges=(MemoryRange(0, size),))
    return GuestMemory(path=path, info_=info, extents=extents, fd=os.open(path, os.O_RDONLY))


def marked(path: Path, marks: dict[int, bytes], size: int) -> None:
    """A sparse file of ``size`` bytes holding ``marks`` (file offset -> bytes)."""
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in marks.items():
            handle.seek(offset)
            handle.write(data)


@pytest.mark.parametrize("stride", [0, STRIDE])
def test_a_run_longer_than_a_row_takes_several_and_reads_across_their_seam(
    tmp_path: Path, stride: int
) -> None:
    length = MAX_RUN + 3 * PAGE
    seam = MAX_RUN  # guest address where the second row begins
    at = (lambda a: a) if not stride else (lambda a: 8 + a // PAGE * STRIDE + a % PAGE)
    path = tmp_path / "backing"
    marked(path, {at(seam - 3): b"abc", at(seam): b"def"}, at(length - PAGE) + PAGE)
    extents = Extents()
    extents.add(0, length, 8 if stride else 0, stride)
    assert list(extents.lengths) == [MAX_RUN, 3 * PAGE] and extents.stored == length
    with guest(path, extents, length) as memory:
        assert memory.read(seam - 3, 6) == b"abcdef"


def test_adjacent_runs_join_only_while_the_row_can_hold_them() -> None:
    extents = Extents()
    extents.add(0, MAX_RUN - PAGE, 0)
    extents.add(MAX_RUN - PAGE, 2 * PAGE, MAX_RUN - PAGE)
    assert list(extents.lengths) == [MAX_RUN - PAGE, 2 * PAGE]
    extents.add(MAX_RUN + PAGE, PAGE, MAX_RUN + PAGE)
    assert list(extents.lengths) == [MAX_RUN - PAGE, 3 * PAGE]


def test_split_move_and_insert_keep_every_byte_where_it_was_said_to_go(tmp_path: Path) -> None:
    """Pages 0-7 stored as one strided run, cut at page 4 and the upper half moved 1 MiB on; a
    second index's page is put between the halves. Each page carries its own number."""
    path = tmp_path / "backing"
    marked(path, {8 + n * STRIDE: bytes([n]) * PAGE for n in range(9)}, 9 * STRIDE)
    extents = Extents()
    extents.add(0, 8 * PAGE, 8, STRIDE)
    cut = extents.split(4 * PAGE)
    assert cut == 1 and extents.split(4 * PAGE) == 1 and extents.split(9 * PAGE) == 2
    extents.move(cut, len(extents), 1 << 20)
    other = Extents()
    other.add(0, PAGE, 8 + 8 * STRIDE, STRIDE)
    extents.insert(other, 6 * PAGE)
    assert list(extents.starts) == [0, 6 * PAGE, (1 << 20) + 4 * PAGE]
    with guest(path, extents, 2 << 20) as memory:
        assert memory.read(3 * PAGE, 2 * PAGE) == bytes([3]) * PAGE + bytes(PAGE)
        assert memory.read(6 * PAGE, PAGE) == bytes([8]) * PAGE
        assert memory.read((1 << 20) + 4 * PAGE, 4 * PAGE) == b"".join(bytes([n]) * PAGE for n in range(4, 8))
    with pytest.raises(MemoryFormatError, match="stored twice"):
        extents.insert(other, 2 * PAGE)
    assert len(extents) == 3  # a refused insertion changes nothing


def test_overlay_in_place_equals_laying_each_page_over_a_page_table() -> None:
    """Runs that each cut a row in three (the most rows a run can add), zero runs that erase,
    and a stored run past the last row: the rows in place must hold what a page table says."""
    rng = random.Random(5)
    extents, pages = Extents(), {}
    for n in range(0, 4000, 4):  # rows of 3 pages, one page apart
        extents.add(n * PAGE, 3 * PAGE, n * STRIDE, STRIDE)
        pages.update({n + k: (n + k) * STRIDE for k in range(3)})
    runs, at = [], 0
    while at < 4100:
        at += rng.randint(1, 6)
        count = rng.randint(1, 2)
        offset = None if rng.random() < 0.3 else 10**9 + at * STRIDE
        runs.append((at * PAGE, count * PAGE, offset, STRIDE))
        for k in range(count):
            pages.pop(at + k, None)
            if offset is not None:
                pages[at + k] = offset + k * STRIDE
        at += count
    extents.overlay(iter(runs), len(runs))
    seen = {}
    for n in range(len(extents)):
        assert n == 0 or extents.starts[n] >= extents.starts[n - 1] + extents.lengths[n - 1]
        for k in range(extents.lengths[n] // PAGE):
            seen[extents.starts[n] // PAGE + k] = extents.offsets[n] + k * extents.strides[n]
    assert seen == pages


def test_overlay_runs_past_the_last_row_grow_the_columns() -> None:
    extents = Extents()
    extents.add(0, PAGE, 0, STRIDE)
    runs = [(n * 2 * PAGE, PAGE, n * STRIDE, STRIDE) for n in range(1, 101)]
    extents.overlay(iter(runs), len(runs))
    assert list(extents.starts) == [n * 2 * PAGE for n in range(101)]
    assert list(extents.offsets) == [n * STRIDE for n in range(101)]
