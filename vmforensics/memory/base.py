"""A guest's physical address space as a saved state describes it.

Every format reader (VMware, QEMU/libvirt, ELF core, LiME, Hyper-V) builds the same thing: the
guest-physical ``ranges`` the guest had (RAM, with its PCI hole), and the ``extents`` that hold
bytes — where each run of guest pages lies in the backing file. Addresses inside a range that no
extent covers were zero pages (QEMU sends them as one flag byte); addresses outside every range
were never memory. Both read as zeros, as they do in the raw image the converters write.

Extents are kept in four array columns (24 bytes a run), never one Python object a page: a 64 GiB
guest costs a few megabytes of index, or about 100 MiB if it is cut into 4 million stored runs.
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from vmforensics.errors import MemoryFormatError

PAGE = 4096
#: Converters and readers move memory in pieces of at most this many bytes.
CHUNK = 1 << 20
#: Pages gathered by one ``preadv`` of a strided run (each page and each gap is one iovec; IOV_MAX is 1024).
IOV_GROUP = 1000
#: The longest run one row of Extents holds (lengths are 32-bit; a multiple of every page size).
MAX_RUN = (1 << 32) - (1 << 21)
#: Rows rewritten at once when runs move (bounds the copy that moving makes).
SHIFT_BATCH = 1 << 16


@attrs.frozen
class MemoryRange:
    """``length`` bytes of guest-physical memory from ``start`` (one RAM block or region)."""

    start: int = attrs.field(validator=attrs.validators.ge(0))
    length: int = attrs.field(validator=attrs.validators.gt(0))
    name: str = ""

    @property
    def end(self) -> int:
        return self.start + self.length


@attrs.frozen
class MemoryInfo:
    """What the saved state says about the guest: the facts its format keeps, nothing guessed.

    ``registers`` maps a CPU number to its registers (name -> value) where the format stores them;
    ``details`` holds format-specific facts (machine type, RAM block names, compression...).
    """

    format: str
    page_size: int
    memory_size: int
    ranges: tuple[MemoryRange, ...]
    cpu_count: int | None = None
    registers: Mapping[int, Mapping[str, int]] = attrs.field(factory=dict)
    details: Mapping[str, Any] = attrs.field(factory=dict)
    sources: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ranges as [start, length, name], registers with string keys."""
        return {
            "format": self.format,
            "page_size": self.page_size,
            "memory_size": self.memory_size,
            "ranges": [[r.start, r.length, r.name] for r in self.ranges],
            "cpu_count": self.cpu_count,
            "registers": {str(cpu): dict(regs) for cpu, regs in self.registers.items()},
            "details": dict(self.details),
            "sources": list(self.sources),
        }


class Extents:
    """Runs of guest-physical bytes stored in one file: ``length`` bytes from ``start``, whose
    pages lie ``stride`` bytes apart from ``offset`` (stride 0: one contiguous run of any length).

    Runs must be added in ascending, non-overlapping guest-physical order (readers that meet a
    page twice resolve it before adding); adjacent runs continue each other when they can.
    Starts and offsets are 64-bit, lengths and strides 32-bit (a longer run takes several rows).
    """

    def __init__(self, page_size: int = PAGE) -> None:
        self.page_size = page_size
        self.starts = array("Q")
        self.lengths = array("I")
        self.offsets = array("Q")
        self.strides = array("I")

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, length: int, offset: int, stride: int = 0) -> None:
        while length > MAX_RUN:
            self.add(start, MAX_RUN, offset, stride)
            start, length = start + MAX_RUN, length - MAX_RUN
            offset = self._file_offset(offset, stride, MAX_RUN)
        if length <= 0:
            return
        if self.starts:
            last = len(self.starts) - 1
            end = self.starts[last] + self.lengths[last]
            if start < end:
                raise MemoryFormatError(f"guest-physical 0x{start:x} is stored twice", offset=offset)
            if self._continues(last, start, length, offset, stride):
                self.lengths[last] += length
                return
        self.starts.append(start)
        self.lengths.append(length)
        self.offsets.append(offset)
        self.strides.append(stride)

    def _file_offset(self, offset: int, stride: int, within: int) -> int:
        """The file offset of byte ``within`` a run stored from ``offset`` (``within`` on a page
        boundary if the run is strided)."""
        return offset + (within // self.page_size * stride if stride else within)

    def _continues(self, index: int, start: int, length: int, offset: int, stride: int) -> bool:
        """Whether the run (start, length, offset, stride) carries row ``index`` on, in one row."""
        return (
            start == self.starts[index] + self.lengths[index]
            and stride == self.strides[index]
            and self.lengths[index] + length <= MAX_RUN
            and offset == self._file_offset(self.offsets[index], stride, self.lengths[index])
        )

    @property
    def stored(self) -> int:
        """Bytes backed by the file (the rest of the ranges are zero pages)."""
        return sum(self.lengths)

    def find(self, address: int) -> int:
        """Index of the last run starting at or before ``address`` (-1 if none)."""
        return bisect.bisect_right(self.starts, address) - 1

    def split(self, address: int) -> int:
        """Cut the run that holds ``address`` (a page boundary) in two; returns the index of the
        first run starting at or after ``address``."""
        index = self.find(address)
        if index < 0:
            return 0
        start, length = self.starts[index], self.lengths[index]
        if address >= start + length:
            return index + 1
        if address == start:
            return index
        within = address - start
        self.starts.insert(index + 1, address)
        self.lengths.insert(index + 1, length - within)
        self.offsets.insert(index + 1, self._file_offset(self.offsets[index], self.strides[index], within))
        self.strides.insert(index + 1, self.strides[index])
        self.lengths[index] = within
        return index + 1

    def move(self, first: int, last: int, delta: int) -> None:
        """Add ``delta`` to the starts of runs ``first`` up to ``last`` (their order must hold)."""
        for at in range(first, last, SHIFT_BATCH):
            end = min(at + SHIFT_BATCH, last)
            self.starts[at:end] = array("Q", map(delta.__add__, self.starts[at:end]))

    def overlay(self, runs: Iterable[tuple[int, int, int | None, int]], count: int) -> None:
        """Lay ``count`` ascending, non-overlapping ``runs`` (start, length, offset or None for
        zeros, stride) over these rows, in place: what they cover now reads as they say."""
        rows = _Rewrite(self, count // 8 + 16)
        row = rows.take()
        for low, length, offset, stride in runs:
            high = low + length
            while row is not None and row[0] < high:
                start, run, first, step = row
                if start < low:
                    rows.put(start, min(start + run, low) - start, first, step)
                if start + run > high:  # the rest of this row lies beyond the run
                    cut = high - start
                    row = (high, run - cut, self._file_offset(first, step, cut), step)
                    break
                row = rows.take()
            if offset is not None:
                rows.put(low, length, offset, stride)
        while row is not None:
            rows.put(*row)
            row = rows.take()
        rows.finish()

    def insert(self, other: Extents, delta: int) -> None:
        """Put the runs of ``other``, ``delta`` bytes on, among these (they must not overlap any)."""
        if not other:
            return
        lo = other.starts[0] + delta
        hi = other.starts[-1] + other.lengths[-1] + delta
        index = self.find(lo) + 1
        before_ends = self.starts[index - 1] + self.lengths[index - 1] if index else 0
        if before_ends > lo or (index < len(self) and self.starts[index] < hi):
            raise MemoryFormatError(f"guest-physical 0x{lo:x} is stored twice", offset=other.offsets[0])
        self.starts[index:index] = array("Q", map(delta.__add__, other.starts))
        self.lengths[index:index] = other.lengths
        self.offsets[index:index] = other.offsets
        self.strides[index:index] = other.strides


class _Rewrite:
    """Rows of an Extents rewritten in place: new rows are written from the front while the rows
    still to read wait further on. A run laid over them adds two rows at most (the rest of a row
    it cuts, and itself); when the writing catches up, the unread rows move on (one memmove) by
    a room that grows with what was written, so the index never needs a second copy."""

    def __init__(self, extents: Extents, room: int) -> None:
        self.extents = extents
        self.columns = (extents.starts, extents.lengths, extents.offsets, extents.strides)
        self.read, self.end, self.written = 0, len(extents), 0
        self.make_room(room)

    def make_room(self, more: int) -> None:
        """Move the unread rows ``more`` places on (the columns grow by as many)."""
        for column in self.columns:
            column.extend(array(column.typecode, [0]) * more)
            with memoryview(column) as view:
                view[self.read + more : self.end + more] = view[self.read : self.end]
        self.read, self.end = self.read + more, self.end + more

    def take(self) -> tuple[int, int, int, int] | None:
        """The next row to read, or None after the last."""
        at = self.read
        if at == self.end:
            return None
        self.read = at + 1
        starts, lengths, offsets, strides = self.columns
        return starts[at], lengths[at], offsets[at], strides[at]

    def put(self, start: int, length: int, offset: int, stride: int) -> None:
        """Write a row after the last one written, continuing it when it can."""
        ext, at = self.extents, self.written
        if at and ext._continues(at - 1, start, length, offset, stride):
            ext.lengths[at - 1] += length
            return
        if at == self.read:  # the next row to read (or the columns' end) is reached
            self.make_room(max(16, at // 8))
        ext.starts[at], ext.lengths[at], ext.offsets[at], ext.strides[at] = start, length, offset, stride
        self.written = at + 1

    def finish(self) -> None:
        """Drop what lies past the last row written."""
        for column in self.columns:
            del column[self.written :]


@attrs.define
class GuestMemory:
    """The physical address space of one saved guest; ``read`` and ``chunks`` never write.

    Use it as a context manager (or call :meth:`close`) to release the backing file.
    """

    path: Path
    info_: MemoryInfo
    extents: Extents
    fd: int
    owns_fd: bool = True
    cleanup: Any = None  # a callable that removes a temporary backing file, when there is one

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """(guest-physical start, length) of every range, ascending."""
        return tuple((r.start, r.length) for r in self.info_.ranges)

    def info(self) -> MemoryInfo:
        return self.info_

    @property
    def size(self) -> int:
        """One past the highest guest-physical address (the size of the raw image)."""
        return max((r.end for r in self.info_.ranges), default=0)

    def read(self, address: int, length: int) -> bytes:
        """``length`` bytes from guest-physical ``address``; unbacked bytes read as zeros."""
        if address < 0 or length < 0:
            raise ValueError("address and length must not be negative")
        ext = self.extents
        index = max(ext.find(address), 0)
        if (
            index < len(ext)
            and not ext.strides[index]
            and ext.starts[index] <= address
            and address + length <= ext.starts[index] + ext.lengths[index]
        ):  # within one contiguous run: one pread, no copy
            return self._pread(ext.offsets[index] + address - ext.starts[index], length)
        out = bytearray(length)
        view = memoryview(out)
        end = address + length
        while index < len(ext) and ext.starts[index] < end:
            start, run = ext.starts[index], ext.lengths[index]
            lo, hi = max(start, address), min(start + run, end)
            if lo < hi:
                self._read_into(index, lo - start, view[lo - address : hi - address])
            index += 1
        return bytes(out)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(guest-physical address, bytes) of every stored run, ascending, at most CHUNK at once."""
        ext = self.extents
        for index in range(len(ext)):
            start, length = ext.starts[index], ext.lengths[index]
            done = 0
            while done < length:
                step = min(CHUNK, length - done)
                if ext.strides[index]:
                    piece = bytearray(step)
                    self._read_into(index, done, memoryview(piece))
                    yield start + done, bytes(piece)
                else:
                    yield start + done, self._pread(ext.offsets[index] + done, step)
                done += step

    def _read_into(self, index: int, within: int, target: memoryview) -> None:
        """Fill ``target`` with bytes ``within`` run ``index`` onwards: one ``preadv`` per
        IOV_GROUP pages, the stride's gaps (QEMU's record headers) read into a scratch buffer."""
        ext = self.extents
        offset, stride, page = ext.offsets[index], ext.strides[index], ext.page_size
        if not stride:
            self._preadv([target], offset + within, len(target))
            return
        first, skip = divmod(within, page)
        scratch = memoryview(bytearray(stride - page))
        at, done = offset + first * stride + skip, 0
        while done < len(target):
            buffers, wanted = [], 0
            while done < len(target) and len(buffers) < IOV_GROUP:
                if buffers:
                    buffers.append(scratch)
                    wanted += len(scratch)
                step = min(page - skip, len(target) - done)
                buffers.append(target[done : done + step])
                wanted, done, skip = wanted + step, done + step, 0
            self._preadv(buffers, at, wanted)
            at += wanted + len(scratch)

    def _preadv(self, buffers: list[memoryview], offset: int, wanted: int) -> None:
        got = os.preadv(self.fd, buffers, offset)
        if got != wanted:
            raise MemoryFormatError(
                f"the file ends inside stored memory ({got} of {wanted} bytes)",
                offset=offset + got,
                path=str(self.path),
            )

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise MemoryFormatError(
                f"the file ends inside stored memory ({len(data)} of {length} bytes)",
                offset=offset + len(data),
                path=str(self.path),
            )
        return data

    def close(self) -> None:
        if self.fd >= 0 and self.owns_fd:
            os.close(self.fd)
        self.fd = -1
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.info_
        return (
            f"<GuestMemory {info.format} {self.path.name}: {info.memory_size / 2**20:.0f} MiB in "
            f"{len(info.ranges)} range(s), {self.extents.stored / 2**20:.0f} MiB stored>"
        )
