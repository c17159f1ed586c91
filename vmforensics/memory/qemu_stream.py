"""Raw QEMU migration streams ("QEVM" v3: ``migrate "exec:cat > f"``, Proxmox vmstate volumes, and
the stream inside a libvirt save file) as guest memory.

One pass indexes the "ram" section: for every page record, where its bytes lie (zero pages are
not stored). Device sections after RAM are not parsed (they have no length field); the
VMDESCRIPTION JSON at the end, when present, gives the CPU count. RAM blocks are placed in the
guest-physical address space only where the machine type says where: on x86, "pc.ram" below
and above the PCI hole (assuming max-ram-below-4g is not set) and "pc.bios" just below 4 GiB;
on ARM "virt", "mach-virt.ram" at 1 GiB. Other blocks (option ROMs, video RAM) are listed in
``info().details`` but not mapped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmforensics.errors import MemoryFormatError
from vmforensics.memory import qemu_layout as qfmt
from vmforensics.memory.base import Extents, GuestMemory, MemoryInfo, MemoryRange

log = logging.getLogger(__name__)

WINDOW = 4 << 20
ZERO_RUN = (1 << 64) - 1
MISSING = (1 << 64) - 2
TAIL = 16 << 20
#: Zero-page records compared at once once a zero run is this long, and at most this many.
BULK_MIN, BULK_MAX = 64, 4096


def is_qevm(head: bytes) -> bool:
    return head[:4] == qfmt.MAGIC


class _Reader:
    """Big-endian fields from ``fd`` at a position, through a read window (bounded memory)."""

    def __init__(self, fd: int, start: int, end: int, path: Path):
        self.fd, self.pos, self.end, self.path = fd, start, end, path
        self.buf, self.buf_at = b"", start

    def fail(self, reason: str, offset: int | None = None) -> MemoryFormatError:
        return MemoryFormatError(reason, offset=self.pos if offset is None else offset, path=str(self.path))

    def need(self, length: int) -> int:
        """Make ``length`` bytes from pos available; returns their index in the buffer."""
        index = self.pos - self.buf_at
        if index < 0 or index + length > len(self.buf):
            self.buf = os.pread(self.fd, max(WINDOW, length), self.pos)
            self.buf_at, index = self.pos, 0
            if len(self.buf) < length or self.pos + length > self.end:
                raise self.fail(f"the stream ends inside a record ({length} bytes wanted)")
        return index

    def u8(self) -> int:
        index = self.need(1)
        self.pos += 1
        return self.buf[index]

    def u32(self) -> int:
        index = self.need(4)
        self.pos += 4
        return qfmt.U32.unpack_from(self.buf, index)[0]

    def u64(self) -> int:
        index = self.need(8)
        self.pos += 8
        return qfmt.U64.unpack_from(self.buf, index)[0]

    def take(self, length: int) -> bytes:
        index = self.need(length)
        self.pos += length
        return self.buf[index : index + length]

    def string(self) -> str:
        return self.take(self.u8()).decode("latin-1")

    def skip(self, length: int) -> None:
        if self.pos + length > self.end:
            raise self.fail(f"the stream ends inside a {length}-byte record")
        self.pos += length


class _Records:
    """Page records in stream order, as runs (zero runs have ``offset`` ZERO_RUN)."""

    def __init__(self) -> None:
        self.pages = array("Q")  # first page of each run
        self.counts = array("Q")
        self.offsets = array("Q")  # file offset of the first page, or ZERO_RUN
        self.strides = array("Q")

    def add(self, page: int, offset: int, stride: int, count: int) -> None:
        if self.pages:
            last = len(self.pages) - 1
            if (
                self.pages[last] + self.counts[last] == page
                and self.strides[last] == stride
                and (
                    offset == ZERO_RUN == self.offsets[last]
                    or (
                        offset != ZERO_RUN != self.offsets[last]
                        and self.offsets[last] + self.counts[last] * stride == offset
                    )
                )
            ):
                self.counts[last] += count
                return
        self.pages.append(page)
        self.counts.append(count)
        self.offsets.append(offset)
        self.strides.append(stride)

    def sweeps(self, most: int) -> list[tuple[int, int]] | None:
        """(first, last) run of each ascending sweep over the block (QEMU sends dirtied pages in
        sweeps of ascending page numbers), or None if there are more than ``most``."""
        found, first = [], 0
        for n in range(1, len(self.pages)):
            if self.pages[n] < self.pages[n - 1] + self.counts[n - 1]:
                found.append((first, n))
                first = n
                if len(found) >= most:
                    return None
        return [*found, (first, len(self.pages))]


def _overlay(base: Extents, later: _Records, first: int, last: int, size: int) -> None:
    """Lay the ascending runs ``first`` to ``last`` of ``later`` (those pages' last copies) over ``base``."""
    runs = (
        (
            later.pages[n] * size,
            later.counts[n] * size,
            None if later.offsets[n] == ZERO_RUN else later.offsets[n],
            later.strides[n],
        )
        for n in range(first, last)
    )
    base.overlay(runs, last - first)


class _Block:
    """One RAM block's page records. While every record takes up where the last left off (the
    save of a paused guest), only the stored runs are kept, already as the block's Extents. Once
    a page comes out of that order (a live save sending dirtied pages again), the records that
    follow are logged in stream order, and each page's last copy is resolved at the end."""

    def __init__(self, name: str, length: int, page_size: int):
        self.name, self.length, self.page_size = name, length, page_size
        self.stored = Extents(page_size)  # byte offsets within the block
        self.next_page = 0  # pages [0, next_page) came in order, once each
        self.later: _Records | None = None
        self.mapped: tuple[int, int] | None = None  # mapped-ram: (bitmap offset, pages offset)

    def read_bitmap(self, fd: int, path: Path) -> None:
        """A mapped-ram block's pages: one run a stretch of set bits, read a window at a time."""
        assert self.mapped is not None
        bitmap, first = self.mapped
        size, pages = self.page_size, self.length // self.page_size
        words = -(-pages // 64)
        for at in range(0, words, WINDOW // 8):
            take = min(WINDOW // 8, words - at)
            data = os.pread(fd, take * 8, bitmap + at * 8)
            if len(data) != take * 8:
                raise MemoryFormatError(
                    f"the file ends inside the mapped-ram bitmap of block {self.name!r}",
                    offset=bitmap + at * 8 + len(data),
                    path=str(path),
                )
            column = array("Q", data)
            if sys.byteorder == "big":
                column.byteswap()
            for index, word in enumerate(column, at):
                page = index * 64
                if index == words - 1 and pages % 64:
                    word &= (1 << pages % 64) - 1  # bits past the last page
                while word:
                    low = (word & -word).bit_length() - 1
                    ones = (~(word >> low) & ((word >> low) + 1)).bit_length() - 1
                    start = (page + low) * size
                    self.stored.add(start, ones * size, first + start)
                    word >>= low + ones
                    page += low + ones
        self.next_page = pages

    def add(self, page: int, offset: int, stride: int, count: int = 1) -> None:
        """``count`` pages from ``page``: zero pages (``offset`` ZERO_RUN) or stored ``stride`` apart."""
        if self.later is None and page == self.next_page:
            if offset != ZERO_RUN:
                self.stored.add(page * self.page_size, count * self.page_size, offset, stride)
            self.next_page += count
            return
        if self.later is None:
            log.info(
                "RAM block %s has pages out of order or sent again; the last copy of each counts", self.name
            )
            self.later = _Records()
        self.later.add(page, offset, stride, count)

    def resolve(self, path: Path) -> Extents:
        """The stored pages (block byte offsets), each page's last copy. QEMU sends every page of
        a block at least once (zero pages as a flag): a page never sent is an incomplete stream
        or a block size that lies."""
        pages = self.length // self.page_size
        sent = self.next_page + (sum(self.later.counts) if self.later is not None else 0)
        if sent < pages:  # checked before any table of pages is made
            raise MemoryFormatError(
                f"RAM block {self.name!r} has {pages} pages but the stream holds {sent} page records: "
                "the stream is incomplete",
                path=str(path),
            )
        if self.later is None:
            return self.stored
        # Each sweep laid over the first visits every row once; while that costs no more visits
        # than a table of the pages would (sweeps x rows <= pages), it spares the table's memory.
        rows = len(self.stored) + len(self.later.pages)
        sweeps = self.later.sweeps(pages // rows) if self.next_page == pages else None
        if sweeps:
            for first, last in sweeps:
                _overlay(self.stored, self.later, first, last, self.page_size)
            self.later = None
            return self.stored
        where = self._last_copies(pages)
        try:
            missing = where.index(MISSING)
        except ValueError:
            pass
        else:
            raise MemoryFormatError(
                f"page {missing} of RAM block {self.name!r} is not in the stream: the stream is incomplete",
                path=str(path),
            )
        return self._runs(where)

    def _last_copies(self, pages: int) -> array:
        """The file offset of every page's last copy (ZERO_RUN, or MISSING if never sent): 8 bytes
        a page, built run by run in C; the stream-order records are released as it is built."""
        size = self.page_size
        where = array("Q", [ZERO_RUN]) * self.next_page  # the ordered prefix left no gaps
        filler = array("Q", [MISSING]) * min(pages - self.next_page, 1 << 16)
        while len(where) < pages:
            where.extend(filler[: pages - len(where)])
        prefix = self.stored
        for n in range(len(prefix)):
            first, count, stride = (
                prefix.starts[n] // size,
                prefix.lengths[n] // size,
                prefix.strides[n] or size,
            )
            where[first : first + count] = array(
                "Q", range(prefix.offsets[n], prefix.offsets[n] + count * stride, stride)
            )
        later = self.later
        assert later is not None
        self.stored, self.later = Extents(size), None
        for n in range(len(later.pages)):
            first, count, offset, stride = later.pages[n], later.counts[n], later.offsets[n], later.strides[n]
            if offset == ZERO_RUN:
                where[first : first + count] = array("Q", [ZERO_RUN]) * count
            else:
                where[first : first + count] = array("Q", range(offset, offset + count * stride, stride))
        return where

    def _runs(self, where: array) -> Extents:
        size, stride = self.page_size, self.page_size + 8
        runs = Extents(size)
        run_page = run_offset = run_count = 0
        for page, offset in enumerate(where):
            if offset == ZERO_RUN:
                continue
            if run_count and run_page + run_count == page and run_offset + run_count * stride == offset:
                run_count += 1
                continue
            if run_count:
                runs.add(run_page * size, run_count * size, run_offset, stride)
            run_page, run_offset, run_count = page, offset, 1
        if run_count:
            runs.add(run_page * size, run_count * size, run_offset, stride)
        return runs


def parse_stream(
    fd: int, path: Path, start: int = 0, end: int | None = None, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, _Block], dict[str, Any], int]:
    """Index the RAM of the stream at ``start``; returns the blocks, facts and the page size."""
    end = os.fstat(fd).st_size if end is None else end
    r = _Reader(fd, start, end, path)
    if r.take(4) != qfmt.MAGIC:
        raise r.fail("not a QEMU migration stream (no QEVM magic)", start)
    version = r.u32()
    if version != qfmt.VERSION:
        raise r.fail(f"QEVM version {version} is not supported (only 3)", start + 4)
    facts: dict[str, Any] = {"capabilities": []}
    page_size = 4096
    blocks: dict[str, _Block] = {}
    sections: dict[int, str] = {}
    ram_done = False
    current: _Block | None = None
    while not ram_done:
        at = r.pos
        kind = r.u8()
        if kind == qfmt.CONFIGURATION:
            length = r.u32()
            if length > 256:
                raise r.fail(f"machine type of {length} bytes", at)
            facts["machine"] = r.take(length).decode("latin-1")
            page_size = _configuration_subsections(r, facts, page_size)
        elif kind in (qfmt.SECTION_START, qfmt.SECTION_FULL):
            section = r.u32()
            name = r.string()
            r.u32()  # instance id
            facts.setdefault("section_versions", {})[name] = r.u32()
            sections[section] = name
            if name != "ram":
                raise r.fail(
                    f"section {name!r} comes before RAM is complete; its state has no length to skip it by",
                    at,
                )
            current, ram_done = _ram_records(r, blocks, page_size, current, facts, kind == qfmt.SECTION_FULL)
        elif kind in (qfmt.SECTION_PART, qfmt.SECTION_END):
            section = r.u32()
            if sections.get(section) != "ram":
                raise r.fail(
                    f"section {section} ({sections.get(section, 'unknown')}) is not the RAM section", at
                )
            current, ram_done = _ram_records(r, blocks, page_size, current, facts, kind == qfmt.SECTION_END)
        elif kind == qfmt.FOOTER:
            r.u32()
        elif kind == qfmt.EOF:
            break
        else:
            raise r.fail(f"unknown section type 0x{kind:02x}", at)
        if progress is not None:
            progress(r.pos - start)
        _footer(r)
    if not blocks:
        raise r.fail("the stream holds no RAM section")
    for block in blocks.values():
        if block.mapped is not None:
            block.read_bitmap(fd, path)
    facts["ram_end"] = r.pos
    facts.update(_description(fd, r.pos, end))
    return blocks, facts, page_size


def _footer(r: _Reader) -> None:
    if r.pos < r.end and r.buf[r.need(1)] == qfmt.FOOTER:
        r.u8()
        r.u32()


def _configuration_subsections(r: _Reader, facts: dict[str, Any], page_size: int) -> int:
    while r.pos < r.end and r.buf[r.need(1)] == qfmt.SUBSECTION:
        at = r.pos
        r.u8()
        name = r.string()
        r.u32()  # version
        if name == "configuration/target-page-bits":
            bits = r.u32()
            if not 10 <= bits <= 21:
                raise r.fail(f"target page bits {bits}", at)
            page_size = 1 << bits
        elif name == "configuration/capabilities":
            count = r.u32()
            if count > 256:
                raise r.fail(f"{count} capabilities", at)
            facts["capabilities"] = [r.string() for _ in range(count)]
            for capability in facts["capabilities"]:
                if capability == "multifd" and "mapped-ram" in facts["capabilities"]:
                    continue
                if capability in qfmt.UNSUPPORTED_CAPABILITIES:
                    raise r.fail(f"capability {capability}: {qfmt.UNSUPPORTED_CAPABILITIES[capability]}", at)
        elif name == "configuration/uuid":
            facts["uuid"] = r.take(16).hex()
        else:
            raise r.fail(f"unknown configuration subsection {name!r}", at)
    return page_size


def _ram_records(
    r: _Reader,
    blocks: dict[str, _Block],
    page_size: int,
    current: _Block | None,
    facts: dict[str, Any],
    last: bool,
) -> tuple[_Block | None, bool]:
    mask = page_size - 1
    while True:
        if current is not None:
            _continued_pages(r, current, page_size)
        at = r.pos
        word = r.u64()
        flags, offset = word & mask, word & ~mask
        if flags & qfmt.FLAG_MEM_SIZE:
            _block_list(r, blocks, offset, facts, at, page_size)
            continue
        if flags & qfmt.FLAG_EOS:
            return current, last
        if flags == qfmt.FLAG_MULTIFD_FLUSH:
            continue
        kind = flags & ~qfmt.FLAG_CONTINUE
        if kind not in (qfmt.FLAG_ZERO, qfmt.FLAG_PAGE):
            raise r.fail(_unsupported(kind), at)
        if not flags & qfmt.FLAG_CONTINUE:
            name = r.string()
            current = blocks.get(name)
            if current is None:
                raise r.fail(f"page for RAM block {name!r}, which the block list does not name", at)
        elif current is None:
            raise r.fail("a CONTINUE page record before any block was named", at)
        if current.mapped is not None:
            raise r.fail(
                f"a page record for mapped-ram block {current.name!r}, whose pages lie in the file", at
            )
        if offset + page_size > current.length:
            raise r.fail(
                f"page at 0x{offset:x} lies beyond block {current.name!r} ({current.length} bytes)", at
            )
        if kind == qfmt.FLAG_ZERO:
            fill = r.u8()
            if fill:
                raise r.fail(f"a zero page filled with 0x{fill:02x}", at)
            current.add(offset // page_size, ZERO_RUN, 0)
        else:
            current.add(offset // page_size, r.pos, page_size + 8)
            r.skip(page_size)


def _zero_records(word: int, count: int, page_size: int) -> bytes:
    """The bytes of ``count`` zero-page records, the first with header ``word``, one page apart."""
    words = array("Q", range(word, word + count * page_size, page_size))
    if sys.byteorder == "little":
        words.byteswap()
    packed, records = words.tobytes(), bytearray(9 * count)  # each fill byte stays 0
    for byte in range(8):
        records[byte::9] = packed[byte::8]
    return bytes(records)


def _zero_bulk(buf: bytes, i: int, word: int, pages: int, page_size: int) -> int:
    """How many zero-page records for consecutive pages (header ``word`` first) lie at ``buf[i:]``,
    checked in one comparison of up to BULK_MAX records: a zero run costs no Python per page.
    Tries the largest power of two up to ``pages`` (the run so far bounds it, so failed tries
    cost no more than the records already read), then halves; 0 when none of BULK_MIN fits."""
    count = 1 << min(pages, BULK_MAX).bit_length() - 1 if pages > 0 else 0
    while count >= BULK_MIN:
        if buf.startswith(_zero_records(word, count, page_size), i):
            return count
        count //= 2
    return 0


def _continued_pages(r: _Reader, block: _Block, page_size: int) -> None:
    """The fast path for the bulk of a stream: CONTINUE zero/page records of one block, parsed
    straight from the read window and added as runs. Anything else (or anything wrong) is left
    at ``r.pos`` for the record-by-record path, which reports it."""
    zero, page = qfmt.FLAG_ZERO | qfmt.FLAG_CONTINUE, qfmt.FLAG_PAGE | qfmt.FLAG_CONTINUE
    unpack, mask, stride = qfmt.U64.unpack_from, page_size - 1, page_size + 8
    while r.end - r.pos >= 9:
        r.need(9)  # the window holds at least the next record's header
        buf, base, length = r.buf, r.buf_at, block.length
        i = r.pos - base
        end = min(len(buf), r.end - base)
        run_page = run_count = run_offset = 0
        run_stride = -1
        moved = False
        retry_at = 0
        while i + 9 <= end:
            word = unpack(buf, i)[0]
            flags = word & mask
            number = (word ^ flags) // page_size
            if (word ^ flags) + page_size > length:
                break
            if flags == zero:
                if buf[i + 8]:
                    break
                if run_stride == 0 and run_page + run_count == number:
                    run_count += 1
                else:
                    if run_stride >= 0:
                        block.add(
                            run_page, ZERO_RUN if run_stride == 0 else run_offset, run_stride, run_count
                        )
                    run_page, run_count, run_offset, run_stride = number, 1, 0, 0
                i += 9
                if run_count >= BULK_MIN and i >= retry_at:
                    pages = min(run_count, (end - i) // 9, length // page_size - run_page - run_count)
                    taken = _zero_bulk(buf, i, (run_page + run_count) * page_size | zero, pages, page_size)
                    run_count, i = run_count + taken, i + 9 * taken
                    if not taken:
                        retry_at = i + 9 * BULK_MIN
            elif flags == page:
                if base + i + stride > r.end:
                    break
                offset = base + i + 8
                if (
                    run_stride == stride
                    and run_page + run_count == number
                    and run_offset + run_count * stride == offset
                ):
                    run_count += 1
                else:
                    if run_stride >= 0:
                        block.add(
                            run_page, ZERO_RUN if run_stride == 0 else run_offset, run_stride, run_count
                        )
                    run_page, run_count, run_offset, run_stride = number, 1, offset, stride
                i += stride
            else:
                break
            moved = True
        if run_stride >= 0:
            block.add(run_page, ZERO_RUN if run_stride == 0 else run_offset, run_stride, run_count)
        r.pos = base + i
        if not moved or i + 9 <= end:  # stopped at a record the record-by-record path must see
            return
        # else the window ran out mid-stream: refill at the next record and go on


def _unsupported(kind: int) -> str:
    if kind & qfmt.FLAG_XBZRLE:
        return (
            "an XBZRLE page (delta against an earlier page) is not supported; save the guest without xbzrle"
        )
    if kind & qfmt.FLAG_COMPRESS_PAGE:
        return "a compressed page (compress capability) is not supported"
    if kind & qfmt.FLAG_HOOK:
        return "an RDMA hook record cannot occur in a file"
    return f"unknown RAM record flags 0x{kind:x}"


def _block_list(
    r: _Reader, blocks: dict[str, _Block], total: int, facts: dict[str, Any], at: int, page_size: int
) -> None:
    if blocks:
        raise r.fail("a second RAM block list", at)
    ignore_shared = "x-ignore-shared" in facts["capabilities"]
    mapped = "mapped-ram" in facts["capabilities"]
    remaining = total
    while remaining:
        if len(blocks) >= qfmt.MAX_BLOCKS:
            raise r.fail("too many RAM blocks", at)
        name = r.string()
        length = r.u64()
        if length > remaining or length > qfmt.MAX_BLOCK_SIZE or name in blocks or not name:
            raise r.fail(f"RAM block {name!r} of {length} bytes does not fit the list ({remaining} left)", at)
        if ignore_shared:
            r.u64()
        blocks[name] = _Block(name, length, page_size)
        if mapped:
            blocks[name].mapped = _mapped_ram_header(r, name, length, page_size)
        remaining -= length


def _mapped_ram_header(r: _Reader, name: str, length: int, page_size: int) -> tuple[int, int]:
    """(bitmap offset, pages offset) of a mapped-ram block, checked; the stream goes on after the pages."""
    at = r.pos
    version, size, bitmap, pages = qfmt.MAPPED_RAM_HEADER.unpack(r.take(qfmt.MAPPED_RAM_HEADER.size))
    if version != qfmt.MAPPED_RAM_VERSION:
        raise r.fail(f"mapped-ram header version {version} of block {name!r} (only 1 is known)", at)
    if size != page_size:
        raise r.fail(f"mapped-ram block {name!r} has pages of {size} bytes, the stream {page_size}", at)
    if bitmap == pages == 0:
        raise r.fail(f"RAM block {name!r} is not in the file (shared memory left out, x-ignore-shared)", at)
    bitmap_size = -(-length // page_size // 64) * 8
    if (
        bitmap < r.pos
        or pages % qfmt.MAPPED_RAM_ALIGNMENT
        or bitmap + bitmap_size > pages
        or pages + length > r.end
    ):
        raise r.fail(
            f"mapped-ram block {name!r}: bitmap at 0x{bitmap:x} and pages at 0x{pages:x} do not fit "
            f"the stream (block of {length} bytes, stream ends at 0x{r.end:x})",
            at,
        )
    r.pos = pages + length
    return bitmap, pages


def _description(fd: int, start: int, end: int) -> dict[str, Any]:
    """The VMDESCRIPTION JSON that ends the stream (when the tail holds it): device and CPU count."""
    begin = max(start, end - TAIL)
    tail = os.pread(fd, end - begin, begin).rstrip(b"\0")
    position = tail.rfind(b'{"page_size"')
    while position >= 5:
        if (
            tail[position - 5] == qfmt.VMDESCRIPTION
            and qfmt.U32.unpack_from(tail, position - 4)[0] == len(tail) - position
        ):
            try:
                description = json.loads(tail[position:])
            except ValueError:
                return {}
            devices = description.get("devices", []) if isinstance(description, dict) else []
            cpus = sum(1 for d in devices if isinstance(d, dict) and d.get("name") == "cpu")
            return {"cpu_count": cpus or None, "devices": len(devices)}
        position = tail.rfind(b'{"page_size"', 0, position)
    return {}


def layout(
    blocks: dict[str, _Block], machine: str | None, page_size: int, path: Path
) -> tuple[tuple[MemoryRange, ...], Extents, list[str]]:
    """Place the RAM blocks in guest-physical memory; returns the ranges, extents and the blocks
    left unmapped."""
    machine = machine or ""
    placed: list[tuple[int, int, str, _Block, int]] = []  # (guest start, length, name, block, block offset)
    unmapped = []
    for name, block in blocks.items():
        if name == "pc.ram" and qfmt.is_x86(machine):
            low = qfmt.pc_lowmem(machine, block.length)
            placed.append((0, low, "pc.ram", block, 0))
            if block.length > low:
                placed.append((qfmt.FOUR_GIB, block.length - low, "pc.ram (above 4 GiB)", block, low))
        elif name == "pc.bios" and qfmt.is_x86(machine):
            placed.append((qfmt.FOUR_GIB - block.length, block.length, "pc.bios", block, 0))
        elif name == "mach-virt.ram" and machine.startswith("virt"):
            placed.append((0x40000000, block.length, name, block, 0))
        else:
            unmapped.append(name)
    if not placed:
        raise MemoryFormatError(
            f"no RAM block of machine type {machine!r} has a known guest-physical place "
            f"(blocks: {', '.join(blocks)})",
            path=str(path),
        )
    placed.sort(key=lambda p: p[0])
    ranges: list[MemoryRange] = []
    for start, length, name, _block, _base in placed:
        if ranges and start < ranges[-1].end:
            raise MemoryFormatError(f"RAM blocks overlap at 0x{start:x} ({name})", path=str(path))
        ranges.append(MemoryRange(start, length, name))
    return tuple(ranges), _place(placed, path), unmapped


def _place(placed: list[tuple[int, int, str, _Block, int]], path: Path) -> Extents:
    """One Extents in guest-physical order, built in place: the block with the most runs (pc.ram)
    keeps its rows, cut where its placements part and moved to their guest addresses; the other
    blocks' few rows are inserted among them. No second copy of the index is ever made."""
    stored = {}
    for _start, _length, _name, block, _base in placed:
        if block.name not in stored:
            stored[block.name] = block.resolve(path)
    main = max(stored, key=lambda name: len(stored[name]))
    extents = stored[main]
    pieces = sorted((base, start) for start, _length, _name, block, base in placed if block.name == main)
    edges = [extents.split(base) for base, _start in pieces] + [len(extents)]
    # The bases ascend with the guest starts (pc.ram: below the PCI hole, then above 4 GiB).
    for (base, start), first, last in zip(pieces, edges, edges[1:], strict=False):
        extents.move(first, last, start - base)
    for start, _length, _name, block, base in placed:
        if block.name != main:
            extents.insert(stored[block.name], start - base)
    return extents


def open_qevm(
    path: Path, *, fd: int | None = None, start: int = 0, extra: dict[str, Any] | None = None
) -> GuestMemory:
    """The guest memory of a QEVM stream at ``start`` in ``path`` (or the open ``fd``)."""
    own = fd is None
    fd = os.open(path, os.O_RDONLY) if fd is None else fd
    try:
        blocks, facts, page_size = parse_stream(fd, path, start)
        extra = extra or {}
        machine = facts.get("machine") or extra.get("machine")
        ranges, extents, unmapped = layout(blocks, machine, page_size, path)
        details = {
            "machine": machine,
            "blocks": {name: block.length for name, block in blocks.items()},
            "unmapped_blocks": unmapped,
            "stream_offset": start,
            **{k: v for k, v in facts.items() if k not in ("cpu_count", "machine")},
            **{k: v for k, v in extra.items() if k != "cpu_count"},
        }
        info = MemoryInfo(
            format=extra.get("format", "qemu"),
            page_size=page_size,
            memory_size=sum(r.length for r in ranges),
            ranges=ranges,
            cpu_count=extra.get("cpu_count") or facts.get("cpu_count"),
            details=details,
            sources=(str(path),),
        )
        return GuestMemory(path=path, info_=info, extents=extents, fd=fd, owns_fd=own)
    except BaseException:
        if own:
            os.close(fd)
        raise
