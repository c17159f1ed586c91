"""VMDK reader: descriptors, flat/ZERO/sparse/COWD/SESparse extents, streamOptimized, delta chains.

A VMDK layer is a list of extents laid end to end (the descriptor's extent lines, or the one sparse
file itself). Each extent maps a span of the virtual disk to segments; sparse extents go through a
grain directory and cached grain tables normalised to byte offsets, with two sentinels
(:data:`UNALLOCATED` reads from the parent, :data:`ZEROED` reads as zeros). Layouts live in
:mod:`vmforensics.images.vmdk_layout`.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import (
    MAX_ALLOCATION,
    BoundedCache,
    DiskImage,
    ImageSource,
    Resolver,
    Segment,
    data,
    from_parent,
    produced,
    zero,
)
from vmforensics.images.paged import PagedTable
from vmforensics.images.vmdk_layout import (
    COWD_GT_ENTRIES,
    COWD_MAGIC,
    FLAG_REDUNDANT_GD,
    GD_AT_END,
    GRAIN_MARKER,
    MARKER,
    MARKER_EOS,
    MARKER_FOOTER,
    MAX_DESCRIPTOR,
    NO_PARENT_CID,
    SECTOR,
    SESPARSE_MAGIC,
    SESPARSE_VERSION,
    SESPARSE_VOLATILE_MAGIC,
    SPARSE_MAGIC,
    CowdHeader,
    Descriptor,
    ExtentLine,
    SesparseHeader,
    SparseHeader,
    decode_descriptor_text,
    parse_descriptor,
    sesparse_volatile,
)

log = logging.getLogger(__name__)

UNALLOCATED = 0  # grain not in this layer: read the parent (zeros without one)
ZEROED = 1  # grain explicitly zero in this layer

#: Stand-in for grain offsets too large to exist; reading such a grain fails as beyond the file.
BEYOND_ANY_FILE = 1 << 62
#: Largest grain accepted (a grain is decompressed and cached whole).
MAX_GRAIN = 64 * 1024 * 1024
#: Bytes of decoded grain tables / decompressed grains kept per extent.
TABLE_CACHE_BYTES = 16 * 1024 * 1024
GRAIN_CACHE_BYTES = 8 * 1024 * 1024

#: Bytes read at a compressed grain's marker: the marker and, for grains that compress well, the
#: whole payload in one call.
MARKER_PROBE = 4096
_PAYLOADS = threading.local()


def _payload_buffer(size: int) -> memoryview:
    """A reused, page-aligned buffer of this thread for compressed payloads (no allocation per grain)."""
    buf = getattr(_PAYLOADS, "buf", None)
    if buf is None or len(buf) < size:
        buf = _PAYLOADS.buf = mmap.mmap(-1, size)
    return memoryview(buf)


_SESPARSE_MAGIC_BYTES = SESPARSE_MAGIC.to_bytes(8, "little")
_FLAT_TYPES = {"FLAT", "VMFS", "VMFSRAW", "VMFSRDM", "VMFSRDMP"}
_SPARSE_TYPES = {"SPARSE", "VMFSSPARSE", "SESPARSE"}


class GrainTable:
    """A decoded grain table: each grain's byte offset (or a sentinel) and where its run ends.

    ``ends[slot]`` is the first slot after ``slot`` that does not continue its run: the next grain
    stored right after it in the file, or the same sentinel. Computed once per table, it lets a
    read emit one segment per run instead of one per grain.
    """

    __slots__ = ("ends", "offsets")

    def __init__(self, offsets: array, grain: int, *, contiguous: bool):
        self.offsets = offsets
        count = len(offsets)
        ends = array("I", range(1, count + 1))
        for slot in range(count - 2, -1, -1):
            entry, following = offsets[slot], offsets[slot + 1]
            if entry <= ZEROED:
                if following == entry:
                    ends[slot] = ends[slot + 1]
            elif contiguous and following == entry + grain:
                ends[slot] = ends[slot + 1]
        self.ends = ends


class Extent:
    """A span of the virtual disk (``start``, ``length`` in bytes) served by one file (or none)."""

    kind = "extent"

    def __init__(self, start: int, length: int, source: ImageSource | None):
        self.start = start
        self.length = length
        self.source = source

    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        """Segments for ``[offset, offset+length)`` relative to the extent's start."""
        raise NotImplementedError

    def direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        """``(source, file offset)`` when the span is one stored run (see DiskImage._direct)."""
        return None

    def allocated(self) -> Iterator[tuple[int, int]]:
        """Ranges (relative offset, length) holding data in this extent."""
        yield (0, self.length)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "start": self.start,
            "length": self.length,
            "file": self.source.name if self.source else None,
        }


class ZeroExtent(Extent):
    kind = "ZERO"

    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        yield zero(length)

    def allocated(self) -> Iterator[tuple[int, int]]:
        return iter(())


class FlatExtent(Extent):
    """Raw bytes at ``file_offset`` in an extent file (FLAT, VMFS, -flat.vmdk, -f001.vmdk)."""

    def __init__(self, start: int, length: int, source: ImageSource, file_offset: int, kind: str):
        super().__init__(start, length, source)
        self.file_offset = file_offset
        self.kind = kind

    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        source = self.source
        assert source is not None
        at = self.file_offset + offset
        if at + length > source.size:
            raise ImageFormatError(
                f"extent data of {length} bytes lies beyond the end of the file (truncated?)",
                offset=at,
                path=source.name,
            )
        yield data(length, source, at)

    def direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        source = self.source
        assert source is not None
        at = self.file_offset + offset
        return (source, at) if at + length <= source.size else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file_offset": self.file_offset}


class GrainExtent(Extent):
    """A sparse extent: grain directory -> grain tables -> grains (KDMV, COWD and SESparse)."""

    def __init__(
        self,
        start: int,
        length: int,
        source: ImageSource,
        *,
        grain: int,
        gt_entries: int,
        gd: PagedTable,
        compressed: bool = False,
        markers: bool = False,
    ):
        super().__init__(start, length, source)
        if not 0 < grain <= MAX_GRAIN or grain % SECTOR:
            raise ImageFormatError(f"unsupported grain size of {grain} bytes", offset=0, path=source.name)
        if not 0 < gt_entries <= MAX_ALLOCATION // 8:
            raise ImageFormatError(
                f"unsupported {gt_entries} entries per grain table", offset=0, path=source.name
            )
        self.grain = grain
        self.gt_entries = gt_entries
        self.gd = gd
        self.compressed = compressed
        self.markers = markers
        self.notes: list[str] = []  # inconsistencies found while opening, reported by the image
        self.grains = -(-length // grain)
        self._tables: BoundedCache[int, array | None] = BoundedCache(
            max(4, TABLE_CACHE_BYTES // (gt_entries * 8))
        )
        self._decompressed: BoundedCache[int, bytes] = BoundedCache(max(2, GRAIN_CACHE_BYTES // grain))
        self._last: tuple[int, GrainTable | None] = (-1, None)
        self._reported_shared = False
        #: Reports an inconsistency found while reading (the image sets it to its ``warn``).
        self.report: Callable[[str, int | None], None] = lambda message, offset: log.warning(
            "%s: %s", source.name, message
        )

    # --- per format ------------------------------------------------------------------------------

    def _load_table(self, index: int) -> array | None:
        """Grain table ``index`` as byte offsets / sentinels, or None when the directory has none."""
        raise NotImplementedError

    def _tables_in_hole(self, page: array, blank: _BlankScan) -> bool:
        """Whether the directory ``page`` names tables laid end to end (as qemu and VMware
        preallocate them) that all lie in a hole of the sparse file: no grain, checked at once."""
        step, spare = divmod(self.gt_entries * 4, SECTOR)
        if spare or not page or not page[0]:
            return False
        first = page[0]
        if page != array(page.typecode, range(first, first + len(page) * step, step)):
            return False
        return blank.is_hole(first * SECTOR, len(page) * step * SECTOR)

    def _table_offset(self, index: int, entry: int) -> int | None:
        """Where grain table ``index`` (directory entry ``entry``) lies in the file, or None when
        the directory has none (32-bit directory entries in sectors; SESparse overrides)."""
        return entry * SECTOR if entry else None

    # --- shared ---------------------------------------------------------------------------------

    def _table(self, index: int) -> GrainTable | None:
        last = self._last  # one attribute, so a concurrent reader never pairs an index with another table
        if last[0] == index:  # sequential and nearby reads stay within one table
            return last[1]
        table = self._tables.get(index, self._decode_table) if index < len(self.gd) else None
        self._last = (index, table)
        return table

    def _decode_table(self, index: int) -> GrainTable | None:
        offsets = self._load_table(index)
        return None if offsets is None else GrainTable(offsets, self.grain, contiguous=not self.compressed)

    def _sector_table(self, index: int, *, zeroed_grains: bool) -> array | None:
        """Table ``index`` of 32-bit grain sectors (KDMV, COWD) as byte offsets; with
        ``zeroed_grains`` an entry of 1 is the zeroed-grain sentinel."""
        at = self._table_offset(index, self.gd[index])
        if at is None:
            return None
        assert self.source is not None
        raw = _read_u32_table(self.source, at, self._table_entries(index))
        if zeroed_grains:
            return array("Q", [e << 9 if e != 1 else ZEROED for e in raw])
        return array("Q", [e << 9 for e in raw])

    def _table_entries(self, index: int) -> int:
        """Entries that matter in table ``index`` (the last table may cover fewer grains)."""
        return min(self.gt_entries, self.grains - index * self.gt_entries)

    def direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        """Where ``[offset, offset+length)`` lies in the file when one stored run holds it all."""
        if self.compressed:
            return None
        grain = self.grain
        index = offset // grain
        table_index, slot = divmod(index, self.gt_entries)
        table = self._table(table_index)
        if table is None or slot >= len(table.offsets):
            return None
        entry = table.offsets[slot]
        run_end = (table_index * self.gt_entries + table.ends[slot]) * grain
        at = entry + offset - index * grain
        source = self.source
        assert source is not None
        if entry <= ZEROED or offset + length > run_end or at + length > source.size:
            return None
        return source, at

    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        """One segment per run of grains: contiguous stored grains, holes, zeroed grains."""
        grain, per_table = self.grain, self.gt_entries
        table_span = per_table * grain
        end = offset + length
        pos = offset
        while pos < end:
            table_index, within_table = divmod(pos, table_span)
            table_start = table_index * table_span
            table_end = min(table_start + table_span, end)
            table = self._table(table_index)
            slot = within_table // grain
            if table is None or slot >= len(table.offsets):
                yield from_parent(table_end - pos)
                pos = table_end
                continue
            entry = table.offsets[slot]
            run_end = min(table_start + table.ends[slot] * grain, table_end)
            if entry == UNALLOCATED:
                yield from_parent(run_end - pos)
            elif entry == ZEROED:
                yield zero(run_end - pos)
            elif self.compressed:
                inner = within_table - slot * grain
                grain_bytes = self._grain_bytes(entry, table_index * per_table + slot)
                yield produced(memoryview(grain_bytes)[inner : inner + run_end - pos])
            else:
                yield self._stored(run_end - pos, entry + within_table - slot * grain)
            pos = run_end

    def _stored(self, length: int, file_pos: int) -> Segment:
        source = self.source
        assert source is not None
        if file_pos + length > source.size:
            raise ImageFormatError(
                f"grain data of {length} bytes lies beyond the end of the file (truncated?)",
                offset=file_pos,
                path=source.name,
            )
        return data(length, source, file_pos)

    def _grain_bytes(self, offset: int, index: int) -> bytes:
        return self._decompressed.get(offset, lambda off: self._decompress(off, index))

    def _decompress(self, offset: int, index: int) -> bytes:
        """Inflate the compressed grain stored at ``offset`` (after its marker when there is one)."""
        source = self.source
        assert source is not None
        expected = min(self.grain, self.length - index * self.grain)
        limit = 2 * self.grain + 4096  # incompressible data grows a little under deflate
        if self.markers:
            view = _payload_buffer(GRAIN_MARKER.size + limit)
            head = max(GRAIN_MARKER.size, min(MARKER_PROBE, source.size - offset))
            source.readinto_at(view[:head], offset)  # the marker and, for most grains, all the rest
            _lba, size = GRAIN_MARKER.unpack_from(view)
            if not 0 < size <= limit:
                raise ImageFormatError(
                    f"compressed grain marker gives an invalid size of {size} bytes",
                    offset=offset,
                    path=source.name,
                )
            end = GRAIN_MARKER.size + size
            if end > head:
                source.readinto_at(view[head:end], offset + head)
            payload: bytes | memoryview = view[GRAIN_MARKER.size : end]
        else:
            payload = source.read_at(offset, max(0, min(limit, source.size - offset)))
        try:
            out = zlib.decompressobj().decompress(payload, expected)
        except zlib.error as exc:
            raise ImageFormatError(
                f"compressed grain does not inflate: {exc}", offset=offset, path=source.name
            ) from exc
        if len(out) < expected:
            raise ImageFormatError(
                f"compressed grain inflates to {len(out)} bytes, {expected} expected",
                offset=offset,
                path=source.name,
            )
        return out

    def allocated(self) -> Iterator[tuple[int, int]]:
        """Stored grains, run by run. Work is bounded by the file: a grain table shared by several
        directory entries (a corrupt directory, or a crafted one) counts once and is reported."""
        grain, per_table = self.grain, self.gt_entries
        source = self.source
        assert source is not None
        seen: set[int] = set()
        # tables are as wide as directory entries (4 bytes, 8 for SESparse); more than fit must overlap
        most = source.size // (per_table * self.gd.width) + 1
        run_start = run_end = -1
        blank = _BlankScan(source)
        tables = min(len(self.gd), -(-self.grains // per_table))
        directory = (
            (i, e)
            for first, page in self.gd.pages(0, tables)
            if not self._tables_in_hole(page, blank)
            for i, e in enumerate(page, first)
        )
        for table_index, where in directory:
            if table_index >= tables:
                break
            if len(seen) >= most:
                self.report(
                    f"grain directory names more grain tables than the file can hold ({most}); "
                    f"allocation is not counted past entry {table_index}",
                    None,
                )
                break
            if where in seen:
                if not self._reported_shared:
                    self._reported_shared = True
                    self.report(
                        f"grain directory entry {table_index} reuses grain table 0x{where:x}: "
                        "its grains are not counted again as allocated",
                        None,
                    )
                continue
            at = self._table_offset(table_index, where)
            if at is None or blank.is_blank(at, self._table_entries(table_index) * self.gd.width):
                continue  # a table of zeros maps no grain (qemu and VMware preallocate them)
            table = self._table(table_index)
            if table is None:
                continue
            seen.add(where)
            base = table_index * per_table
            count = min(len(table.offsets), self._table_entries(table_index))
            slot = 0
            while slot < count:
                stop = min(table.ends[slot], count)
                if table.offsets[slot] > ZEROED:
                    start = (base + slot) * grain
                    if start == run_end:
                        run_end = (base + stop) * grain
                    else:
                        if run_end > run_start >= 0:
                            yield (run_start, min(run_end, self.length) - run_start)
                        run_start, run_end = start, (base + stop) * grain
                slot = stop
        if run_end > run_start >= 0:
            yield (run_start, min(run_end, self.length) - run_start)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "grain_size": self.grain, "compressed": self.compressed}


class _BlankScan:
    """Answers "is this span of the file all zeros?" for spans met in ascending order, reading
    the file a window at a time (one read for many preallocated, still empty grain tables) and
    skipping the holes of a sparse file without reading them (SEEK_DATA)."""

    WINDOW = 1 << 20

    def __init__(self, source: ImageSource):
        self.source = source
        self._start = self._end = 0
        self._window = b""
        self._blank = False

    def _hole_until(self, offset: int) -> int:
        """Where the file's next data begins at or after ``offset`` (``offset`` if unknown)."""
        return self.source.next_data(offset)

    def is_hole(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset+length)`` lies in a hole of the file (never read)."""
        return offset + length <= self.source.size and self._hole_until(offset) >= offset + length

    def is_blank(self, offset: int, length: int) -> bool:
        if not (self._start <= offset and offset + length <= self._end):
            if offset < 0 or offset + length > self.source.size or length > self.WINDOW:
                return False  # left to the table's own read, which reports it
            data_at = self._hole_until(offset)
            if data_at >= offset + length:
                self._start, self._end, self._blank = offset, min(data_at, self.source.size), True
                return True
            self._start = offset
            self._end = min(self.source.size, offset + self.WINDOW)
            self._window = self.source.read_at(offset, self._end - offset)
            self._blank = not self._window.strip(b"\0")
        if self._blank:
            return True
        at = offset - self._start
        return not self._window[at : at + length].strip(b"\0")


def _read_u32_table(source: ImageSource, offset: int, count: int) -> array:
    table = array("I", source.read_at(offset, count * 4))
    if table.itemsize != 4:  # pragma: no cover - every platform Python supports has 4-byte "I"
        raise RuntimeError("array('I') is not 32-bit here")
    return table


class HostedSparseExtent(GrainExtent):
    """A KDMV sparse extent (monolithicSparse, -s001.vmdk, streamOptimized)."""

    kind = "SPARSE"

    def __init__(self, start: int, length: int, source: ImageSource, header: SparseHeader):
        grain = header.grain_sectors * SECTOR
        gt_entries = header.gt_entries
        if not 0 < gt_entries <= 1 << 16 or not 0 < grain <= MAX_GRAIN:
            raise ImageFormatError(
                f"implausible sparse header: {gt_entries} entries per grain table, grain of "
                f"{header.grain_sectors} sectors",
                offset=0,
                path=source.name,
            )
        gd_sector = header.gd_offset
        if gd_sector == 0 and header.flags & FLAG_REDUNDANT_GD:
            gd_sector = header.rgd_offset
        coverage = gt_entries * grain
        gd_entries = -(-header.capacity * SECTOR // coverage)
        gd = PagedTable(source, gd_sector * SECTOR, gd_entries, width=4, what="grain directory")
        super().__init__(
            start,
            length,
            source,
            grain=grain,
            gt_entries=gt_entries,
            gd=gd,
            compressed=header.compressed,
            markers=header.markers,
        )
        self.header = header

    def _load_table(self, index: int) -> array | None:
        return self._sector_table(index, zeroed_grains=self.header.zeroed_grains)

    def describe(self) -> dict[str, Any]:
        h = self.header
        return {
            **super().describe(),
            "version": h.version,
            "flags": h.flags,
            "zeroed_grains": h.zeroed_grains,
            "markers": h.markers,
            "unclean_shutdown": bool(h.unclean),
        }


class CowdExtent(GrainExtent):
    """An ESX COWD sparse extent (vmfsSparse, ``-delta.vmdk``): 4096-entry grain tables."""

    kind = "VMFSSPARSE"

    def __init__(self, start: int, length: int, source: ImageSource, header: CowdHeader):
        grain = header.grain_sectors * SECTOR
        gd = PagedTable(source, header.gd_offset * SECTOR, header.gd_entries, width=4, what="grain directory")
        super().__init__(start, length, source, grain=grain, gt_entries=COWD_GT_ENTRIES, gd=gd)
        self.header = header

    def _load_table(self, index: int) -> array | None:
        return self._sector_table(index, zeroed_grains=False)


class SesparseExtent(GrainExtent):
    """An ESXi SESparse extent (``-sesparse.vmdk``): 64-bit directory and table entries."""

    kind = "SESPARSE"

    def __init__(self, start: int, length: int, source: ImageSource, header: SesparseHeader):
        self.header = header
        gt_entries = header.gt_sectors * SECTOR // 8
        gd_entries = header.gd_sectors * SECTOR // 8
        gd = PagedTable(source, header.gd_offset * SECTOR, gd_entries, width=8, what="grain directory")
        super().__init__(
            start, length, source, grain=header.grain_sectors * SECTOR, gt_entries=gt_entries, gd=gd
        )

    def _tables_in_hole(self, page: array, blank: _BlankScan) -> bool:
        return False  # directory entries are table numbers with a tag, not file sectors

    def _table_offset(self, index: int, entry: int) -> int | None:
        assert self.source is not None
        if entry == 0:
            return None
        if entry >> 32 != 0x10000000:
            raise ImageFormatError(
                f"invalid grain directory entry 0x{entry:016x} for table {index}",
                offset=self.header.gd_offset * SECTOR + index * 8,
                path=self.source.name,
            )
        h = self.header
        return (h.gt_offset + (entry & 0xFFFFFFFF) * h.gt_sectors) * SECTOR

    def _load_table(self, index: int) -> array | None:
        table_offset = self._table_offset(index, self.gd[index])
        if table_offset is None:
            return None
        assert self.source is not None
        h = self.header
        raw = array("Q", self.source.read_at(table_offset, self._table_entries(index) * 8))
        out = array("Q", bytes(8 * len(raw)))
        for slot, value in enumerate(raw):
            top = value >> 60
            if top == 3:  # allocated: grain number with its top 12 bits stored in bits 48..59
                number = ((value >> 48) & 0xFFF) | ((value & 0x0000FFFFFFFFFFFF) << 12)
                # an absurd offset stays representable and fails when read (beyond end of file)
                out[slot] = min((h.grains_offset + number * h.grain_sectors) * SECTOR, BEYOND_ANY_FILE)
            elif top in (1, 2):  # unmapped or zero grain
                out[slot] = ZEROED
            elif value != 0:
                raise ImageFormatError(
                    f"invalid grain table entry 0x{value:016x}",
                    offset=table_offset + slot * 8,
                    path=self.source.name,
                )
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": f"0x{self.header.version:016x}"}


class VmdkImage(DiskImage):
    """One VMDK layer: its extents end to end, plus the parent named by parentFileNameHint."""

    format_name = "vmdk"

    def __init__(
        self,
        *,
        path: str,
        extents: list[Extent],
        sources: list[ImageSource],
        descriptor: Descriptor | None,
        subtype: str,
        strict: bool,
    ):
        super().__init__(sum(e.length for e in extents), path=path, sources=sources, strict=strict)
        self.extents_list = extents
        self._starts = [e.start for e in extents]
        self._single = extents[0] if len(extents) == 1 else None  # most images: no extent lookup
        if isinstance(self._single, FlatExtent):
            self._linear, self._linear_offset = self._single.source, self._single.file_offset
        for extent in extents:
            if isinstance(extent, GrainExtent):
                extent.report = lambda message, offset: self.warn(message, offset=offset)
        self.descriptor = descriptor
        self.subtype = subtype
        self.cid_check = "no parent"

    @property
    def cid(self) -> int | None:
        return self.descriptor.cid("CID") if self.descriptor else None

    @property
    def parent_cid(self) -> int | None:
        return self.descriptor.cid("parentCID") if self.descriptor else None

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        extent = self._single
        if extent is None:
            extent = self.extents_list[bisect.bisect_right(self._starts, offset) - 1]
            offset -= extent.start
            if offset + length > extent.length:
                return None
        return extent.direct(offset, length)

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        i = bisect.bisect_right(self._starts, offset) - 1
        end = offset + length
        while offset < end:
            extent = self.extents_list[i]
            rel = offset - extent.start
            count = min(extent.length - rel, end - offset)
            yield from extent.segments(rel, count)
            offset += count
            i += 1

    def _allocated(self) -> Iterable[tuple[int, int]]:
        for extent in self.extents_list:
            for rel, length in extent.allocated():
                yield (extent.start + rel, length)

    def _describe(self) -> dict[str, Any]:
        d = self.descriptor
        identifiers: dict[str, str] = {}
        details: dict[str, Any] = {
            "extents": [e.describe() for e in self.extents_list],
            "cid_check": self.cid_check,
        }
        if d is not None:
            for key, name in (("cid", "CID"), ("parentcid", "parentCID")):
                if key in d.fields:  # written as 8 hex digits, whether or not the file pads them
                    value = d.cid(name)
                    identifiers[name] = f"{value:08x}" if value is not None else d.fields[key]
            for key in ("uuid", "longContentID"):
                if key in d.ddb:
                    identifiers[key] = d.ddb[key]
            details["adapter_type"] = d.ddb.get("adapterType")
            details["descriptor_version"] = d.fields.get("version")
            details["parent_file_name_hint"] = d.fields.get("parentfilenamehint")
            details["extent_lines"] = [line._asdict() for line in d.extents]
            details["ddb"] = dict(d.ddb)
        files = [s.name for s in self.sources]
        return {"subtype": self.subtype, "identifiers": identifiers, "details": details, "files": files}


# --- opening ---------------------------------------------------------------------------------------


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    """Open a VMDK layer (descriptor, sparse, COWD or SESparse file) and its parent chain."""
    head = source.read_at(0, min(source.size, 8))
    opened: list[ImageSource] = []
    try:
        if head[:4] == SPARSE_MAGIC:
            image = _open_hosted_sparse(source, resolver)
        elif head[:4] == COWD_MAGIC or head[:8] == _SESPARSE_MAGIC_BYTES:
            extent = _sparse_extent(source, 0, None)
            subtype = "vmfsSparse" if isinstance(extent, CowdExtent) else "seSparse"
            image = VmdkImage(
                path=source.name,
                extents=[extent],
                sources=[source],
                descriptor=None,
                subtype=subtype,
                strict=resolver.strict,
            )
        else:
            image = _open_descriptor_file(source, resolver, opened)
    except BaseException:
        for extra in opened:
            extra.close()
        raise
    try:
        for part in image.extents_list:
            for note in getattr(part, "notes", ()):
                image.warn(note)
        _attach_parent(image, resolver)
    except BaseException:
        for extra in image.sources:
            if extra is not source:
                extra.close()
        if image.parent is not None:
            image.parent.close()
        raise
    return image


def _read_descriptor(source: ImageSource, offset: int, length: int) -> Descriptor:
    raw = source.read_at(offset, length)
    return parse_descriptor(decode_descriptor_text(raw), path=source.name, offset=offset)


def _sparse_header(source: ImageSource) -> SparseHeader:
    """The sparse header, or for streamOptimized with GD_AT_END, the footer that replaces it."""
    header = SparseHeader.parse(source.read_at(0, SECTOR), path=source.name)
    if header.gd_offset != GD_AT_END:
        return header
    footer_at = source.size - 3 * SECTOR
    if footer_at < SECTOR:
        raise ImageFormatError(
            "grain directory is at the end (GD_AT_END) but there is no footer", offset=0, path=source.name
        )
    tail = source.read_at(footer_at, 3 * SECTOR)
    _value, size, kind = MARKER.unpack_from(tail, 0)
    eos_value, eos_size, eos_kind = MARKER.unpack_from(tail, 2 * SECTOR)
    if (size, kind) != (0, MARKER_FOOTER) or (eos_value, eos_size, eos_kind) != (0, 0, MARKER_EOS):
        raise ImageFormatError(
            "grain directory is at the end (GD_AT_END) but the footer markers are missing "
            "(truncated stream?)",
            offset=footer_at,
            path=source.name,
        )
    footer = SparseHeader.parse(tail[SECTOR : 2 * SECTOR], path=source.name, offset=footer_at + SECTOR)
    if footer.gd_offset == GD_AT_END:
        raise ImageFormatError(
            "footer does not locate the grain directory", offset=footer_at + SECTOR, path=source.name
        )
    return footer


def _open_hosted_sparse(source: ImageSource, resolver: Resolver) -> VmdkImage:
    """A KDMV file opened directly: its embedded descriptor (if any) describes it; it is the extent.

    The embedded descriptor's extent line names the file as it was called when created; a renamed
    file still opens because the extent is this file, whatever the line says.
    """
    header = _sparse_header(source)
    descriptor = None
    problems: list[tuple[str, int]] = []
    if header.descriptor_offset and header.descriptor_sectors:
        at = header.descriptor_offset * SECTOR
        length = min(header.descriptor_sectors * SECTOR, MAX_DESCRIPTOR, max(0, source.size - at))
        try:
            descriptor = _read_descriptor(source, at, length)
        except ImageFormatError as exc:
            problems.append((f"embedded descriptor unreadable ({exc.reason}); no CID or parent known", at))
    extent = HostedSparseExtent(0, header.capacity * SECTOR, source, header)
    subtype = "streamOptimized" if header.compressed else "monolithicSparse"
    if descriptor is not None:
        subtype = descriptor.fields.get("createtype", subtype)
        lines = descriptor.extents
        if len(lines) != 1 or lines[0].sectors != header.capacity:
            problems.append(
                (
                    f"embedded descriptor lists {len(lines)} extent(s) that disagree with the header's "
                    f"capacity of {header.capacity} sectors; the header is used",
                    0,
                )
            )
    image = VmdkImage(
        path=source.name,
        extents=[extent],
        sources=[source],
        descriptor=descriptor,
        subtype=subtype,
        strict=resolver.strict,
    )
    for message, offset in problems:
        image.warn(message, offset=offset)
    if descriptor is not None:
        for line in descriptor.unrecognised:
            image.warn(f"unrecognised descriptor line {line!r}")
    return image


def _sparse_extent(source: ImageSource, start: int, length: int | None) -> GrainExtent:
    """A sparse extent file of any kind, detected by its magic; ``length`` None means its own capacity."""
    head = source.read_at(0, min(source.size, 2048))
    if head[:4] == SPARSE_MAGIC:
        header = _sparse_header(source)
        return HostedSparseExtent(
            start, header.capacity * SECTOR if length is None else length, source, header
        )
    if head[:4] == COWD_MAGIC:
        cowd = CowdHeader.parse(head, path=source.name)
        return CowdExtent(start, cowd.capacity * SECTOR if length is None else length, source, cowd)
    if head[:8] == _SESPARSE_MAGIC_BYTES:
        se = SesparseHeader.parse(source.read_at(0, SECTOR), path=source.name)
        note = _check_sesparse(se, source)
        extent = SesparseExtent(start, se.capacity * SECTOR if length is None else length, source, se)
        if note:
            extent.notes.append(note)
        return extent
    raise ImageFormatError(
        "extent file is not a sparse extent (no KDMV, COWD or SESparse magic)", offset=0, path=source.name
    )


def _check_sesparse(header: SesparseHeader, source: ImageSource) -> str | None:
    """Refuse layouts QEMU and VMware never write; return a note when the journal needs replay."""
    unsupported = []
    if header.version != SESPARSE_VERSION:
        unsupported.append(f"version 0x{header.version:016x}")
    if header.grain_sectors != 8 or header.gt_sectors != 64:
        unsupported.append(f"grain of {header.grain_sectors} / tables of {header.gt_sectors} sectors")
    if header.flags:
        unsupported.append(f"flags 0x{header.flags:x}")
    if unsupported:
        raise ImageFormatError(
            f"unsupported SESparse layout: {', '.join(unsupported)}", offset=0, path=source.name
        )
    magic, replay = sesparse_volatile(source.read_at(header.volatile_offset * SECTOR, SECTOR))
    if magic != SESPARSE_VOLATILE_MAGIC:
        raise ImageFormatError(
            "bad SESparse volatile header magic", offset=header.volatile_offset * SECTOR, path=source.name
        )
    if replay:
        return f"{source.name}: SESparse journal needs replay (not supported): recent writes may be missing"
    return None


def _open_descriptor_file(source: ImageSource, resolver: Resolver, opened: list[ImageSource]) -> VmdkImage:
    """A text descriptor: open every extent it lists, relative to the descriptor's directory."""
    if source.size > MAX_DESCRIPTOR:
        raise ImageFormatError(
            f"a {source.size}-byte file is too large to be a VMDK descriptor", offset=0, path=source.name
        )
    descriptor = _read_descriptor(source, 0, source.size)
    if not descriptor.extents:
        raise ImageFormatError("descriptor lists no extents", offset=0, path=source.name)
    extents: list[Extent] = []
    start = 0
    warnings: list[str] = []
    for line in descriptor.extents:
        length = line.sectors * SECTOR
        if length == 0:
            continue
        extent = _open_extent(line, start, source, resolver, opened, warnings)
        extents.append(extent)
        start += length
    subtype = descriptor.fields.get("createtype", "custom")
    image = VmdkImage(
        path=source.name,
        extents=extents,
        sources=[source, *opened],
        descriptor=descriptor,
        subtype=subtype,
        strict=resolver.strict,
    )
    for message in warnings:
        image.warn(message)
    for line in descriptor.unrecognised:
        image.warn(f"unrecognised descriptor line {line!r}")
    return image


def _open_extent(
    line: ExtentLine,
    start: int,
    descriptor: ImageSource,
    resolver: Resolver,
    opened: list[ImageSource],
    warnings: list[str],
) -> Extent:
    length = line.sectors * SECTOR
    if line.type == "ZERO":
        return ZeroExtent(start, length, None)
    if line.type not in _FLAT_TYPES | _SPARSE_TYPES:
        raise ImageFormatError(f"unsupported extent type {line.type!r}", path=descriptor.name)
    assert line.filename is not None
    source = resolver.open_source(line.filename, descriptor.name, what=f"{line.type} extent")
    opened.append(source)
    if line.type in _FLAT_TYPES:
        offset = line.start * SECTOR
        if source.size < offset + length:
            warnings.append(
                f"extent file {source.name!r} is {source.size} bytes but the descriptor needs "
                f"{offset + length}: reads past its end will fail"
            )
        return FlatExtent(start, length, source, offset, line.type)
    extent = _sparse_extent(source, start, length)
    capacity = _own_capacity(extent)
    if capacity != length:
        warnings.append(f"extent {source.name!r} holds {capacity} bytes but the descriptor lists {length}")
    return extent


def _own_capacity(extent: GrainExtent) -> int:
    header = getattr(extent, "header", None)
    return int(header.capacity) * SECTOR if header is not None else extent.length


def _attach_parent(image: VmdkImage, resolver: Resolver) -> None:
    """Open the parent named by parentFileNameHint and check its CID against our parentCID."""
    d = image.descriptor
    hint = d.fields.get("parentfilenamehint") if d else None
    parent_cid = image.parent_cid
    if not hint:
        if parent_cid is not None and parent_cid != NO_PARENT_CID:
            image.warn(
                f"parentCID is {parent_cid:08x} but no parentFileNameHint names the parent: "
                "unallocated grains read as zeros"
            )
        return
    parent = resolver.open_parent(hint, image.path)
    image.parent = parent
    if parent.size < image.size:
        log.info("%s: parent %s is smaller (%d < %d bytes)", image.path, parent.path, parent.size, image.size)
    if not isinstance(parent, VmdkImage):
        image.cid_check = f"not checked: parent is {parent.format_name}"
        return
    if parent_cid is None or parent_cid == NO_PARENT_CID:
        image.cid_check = "not checked: no parentCID"
        image.warn(f"parentFileNameHint names {hint!r} but parentCID does not identify a parent")
        return
    if parent.cid != parent_cid:
        found = f"{parent.cid:08x}" if parent.cid is not None else "none"
        image.cid_check = f"mismatch: parentCID {parent_cid:08x}, parent's CID {found}"
        image.warn(
            f"parentCID {parent_cid:08x} does not match the CID {found} of parent {parent.path!r}: "
            "the parent changed after this snapshot was taken, so reads may mix states"
        )
        return
    image.cid_check = "match"
