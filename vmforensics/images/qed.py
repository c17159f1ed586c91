"""QED reader: QEMU Enhanced Disk images (qemu 0.14-era format), with their backing files.

A two-level table maps the disk: the L1 table names L2 tables, whose 64-bit entries are the file
offsets of clusters, 0 for a cluster not in this image (the backing file's, else zeros) or 1 for a
zeroed cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import BoundedCache, DiskImage, ImageSource, Kind, Resolver, Segment, data
from vmforensics.images.paged import PAGE_BYTES, PagedTable, not_all
from vmforensics.images.qed_layout import (
    F_BACKING_FILE,
    F_BACKING_FORMAT_NO_PROBE,
    F_NEED_CHECK,
    HEADER,
    KNOWN_FEATURES,
    MAGIC,
    MAX_CLUSTER_SIZE,
    MAX_TABLE_SIZE,
    MIN_CLUSTER_SIZE,
    UNALLOCATED,
    ZERO_CLUSTER,
    Header,
)

#: Memory kept for decoded L2 tables.
L2_CACHE_BYTES = 32 << 20
#: Pages each cached L2 table keeps (a table may be far larger than a page).
L2_PAGES = 8
MAX_BACKING_NAME = 4096


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


class QedImage(DiskImage):
    format_name = "qed"

    def __init__(self, source: ImageSource, resolver: Resolver):
        header = Header.parse(source.read_at(0, HEADER.size))
        self.header = header
        self.source = source
        name = source.name
        if header.magic != MAGIC:
            raise ImageFormatError("no QED magic ('QED\\0')", offset=0, path=name)
        cluster = header.cluster_size
        if not (MIN_CLUSTER_SIZE <= cluster <= MAX_CLUSTER_SIZE and _power_of_two(cluster)):
            raise ImageFormatError(f"invalid QED cluster size {cluster}", offset=4, path=name)
        if not (_power_of_two(header.table_size) and header.table_size <= MAX_TABLE_SIZE):
            raise ImageFormatError(
                f"invalid QED table size {header.table_size} clusters", offset=8, path=name
            )
        if header.header_size == 0 or header.header_size * cluster > source.size:
            raise ImageFormatError(
                f"invalid QED header size {header.header_size} clusters", offset=12, path=name
            )
        unknown = header.features & ~KNOWN_FEATURES
        if unknown:
            raise ImageFormatError(f"unknown QED feature bits 0x{unknown:x}", offset=16, path=name)
        self.cluster_size = cluster
        self.table_bytes = header.table_size * cluster
        self.entries = self.table_bytes // 8
        self._span = self.entries * cluster  # guest bytes one L2 table covers
        max_size = self.entries * self._span
        if header.image_size > max_size or header.image_size % 512:
            raise ImageFormatError(
                f"QED image size {header.image_size} is not a multiple of 512 within {max_size}",
                offset=48,
                path=name,
            )
        if header.l1_table_offset % cluster or header.l1_table_offset == 0:
            raise ImageFormatError(
                f"misaligned QED L1 table offset {header.l1_table_offset}", offset=40, path=name
            )
        super().__init__(header.image_size, path=name, sources=[source], strict=resolver.strict)
        if header.features & F_NEED_CHECK:
            self.warn("image is marked as needing a consistency check (not closed cleanly)", offset=16)
        # tables are table_size clusters (up to 1 GiB each, with 64 MiB clusters): each must lie
        # within the file and is read a page at a time
        self.l1 = PagedTable(source, header.l1_table_offset, self.entries, what="L1 table")
        kept = min(self.table_bytes, L2_PAGES * PAGE_BYTES)  # what one cached L2 table may hold
        self._l2: BoundedCache[int, PagedTable] = BoundedCache(max(1, L2_CACHE_BYTES // kept))
        self._reported_shared = False  # a table named twice is reported once
        self.backing_name: str | None = None
        if header.features & F_BACKING_FILE:
            self._open_backing(resolver)

    def _open_backing(self, resolver: Resolver) -> None:
        h = self.header
        if not 0 < h.backing_filename_size <= MAX_BACKING_NAME:
            raise ImageFormatError(
                f"invalid backing file name length {h.backing_filename_size}", offset=60, path=self.path
            )
        if h.backing_filename_offset + h.backing_filename_size > h.header_size * self.cluster_size:
            raise ImageFormatError("backing file name lies outside the header", offset=56, path=self.path)
        raw = self.source.read_at(h.backing_filename_offset, h.backing_filename_size)
        self.backing_name = raw.decode("utf-8", "replace")
        fmt = "raw" if h.features & F_BACKING_FORMAT_NO_PROBE else None
        self.parent = resolver.open_parent(self.backing_name, self.path, format=fmt)

    # --- reading ------------------------------------------------------------------------------

    def _table(self, l1_index: int) -> PagedTable | None:
        if l1_index >= len(self.l1):
            return None
        offset = self.l1[l1_index]
        if offset == UNALLOCATED:
            return None
        if offset % self.cluster_size:
            raise ImageFormatError(
                f"misaligned L2 table offset {offset}",
                offset=self.header.l1_table_offset + 8 * l1_index,
                path=self.path,
            )
        return self._l2.get(
            offset,
            lambda at: PagedTable(self.source, at, self.entries, what="L2 table", cache_pages=L2_PAGES),
        )

    def _entry(self, cluster_index: int) -> int:
        table = self._table(cluster_index // self.entries)
        return UNALLOCATED if table is None else table[cluster_index % self.entries]

    def _check(self, entry: int, cluster_index: int) -> int:
        if entry % self.cluster_size:
            l1_index, slot = divmod(cluster_index, self.entries)
            raise ImageFormatError(
                f"misaligned data cluster offset {entry} for guest cluster {cluster_index}",
                offset=self.l1[l1_index] + 8 * slot,  # the L2 entry that names it
                path=self.path,
            )
        return entry

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        index, within = divmod(offset, self.cluster_size)
        if within + length > self.cluster_size:
            return None
        entry = self._entry(index)
        if entry in (UNALLOCATED, ZERO_CLUSTER):
            return None
        return self.source, self._check(entry, index) + within

    def _segments(self, offset: int, length: int) -> Iterator[Segment]:
        """Clusters stored one after another in the file become one segment; the L2 table is
        looked up once per table, not once per cluster."""
        cluster = self.cluster_size
        absent = Kind.PARENT if self.parent is not None else Kind.ZERO
        pending_kind: Kind | None = None
        pending = 0
        run_at = run_length = 0  # a data run not yet emitted
        pos, end = offset, offset + length
        while pos < end:
            index, within = divmod(pos, cluster)
            table = self._table(index // self.entries)
            stop = min(end, (index // self.entries + 1) * self._span)
            slot = index % self.entries
            while pos < stop:
                count = min(cluster - within, stop - pos)
                entry = table[slot] if table is not None else UNALLOCATED
                if entry not in (UNALLOCATED, ZERO_CLUSTER):
                    at = self._check(entry, index) + within
                    if pending:
                        yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                        pending = 0
                    if run_length and run_at + run_length == at:
                        run_length += count
                    else:
                        if run_length:
                            yield data(run_length, self.source, run_at)
                        run_at, run_length = at, count
                else:
                    if run_length:
                        yield data(run_length, self.source, run_at)
                        run_length = 0
                    kind = Kind.ZERO if entry == ZERO_CLUSTER else absent
                    if pending and kind is not pending_kind:
                        yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                        pending = 0
                    pending_kind = kind
                    pending += count
                pos += count
                index += 1
                slot += 1
                within = 0
        if run_length:
            yield data(run_length, self.source, run_at)
        if pending:
            yield Segment(pending, pending_kind)  # type: ignore[arg-type]

    def _allocated(self) -> Iterable[tuple[int, int]]:
        """Stored clusters. Work is bounded by the file: an L2 table named by several L1 entries
        (corrupt or crafted) counts once and is reported."""
        start = stop = -1
        cluster = self.cluster_size
        seen: set[int] = set()
        needed = -(-self.size // self._span)
        l1_pages = self.l1.pages(0, needed, maybe_used=_NOT_ALL_ZERO)  # an empty page costs one comparison
        for l1_index in (i for first, page in l1_pages for i, entry in enumerate(page, first) if entry):
            base = l1_index * self._span
            if self.l1[l1_index] in seen:
                if not self._reported_shared:
                    self._reported_shared = True
                    self.warn(f"L1 entry {l1_index} reuses an L2 table: its clusters are not counted again")
                continue
            table = self._table(l1_index)
            if table is None:
                continue
            seen.add(self.l1[l1_index])
            stored = (
                (i, entry)
                for first, page in table.pages(maybe_used=_NOT_ALL_ZERO)
                for i, entry in enumerate(page, first)
            )
            for i, entry in stored:
                if entry in (UNALLOCATED, ZERO_CLUSTER):
                    continue
                at = base + i * cluster
                if at >= self.size:
                    break
                if at == stop:
                    stop = min(at + cluster, self.size)
                    continue
                if stop > start:
                    yield (start, stop - start)
                start, stop = at, min(at + cluster, self.size)
        if stop > start:
            yield (start, stop - start)

    def _describe(self) -> dict[str, Any]:
        h = self.header
        details: dict[str, Any] = {
            "cluster_size": self.cluster_size,
            "table_size": h.table_size,
            "header_size": h.header_size,
            "features": h.features,
            "compat_features": h.compat_features,
            "autoclear_features": h.autoclear_features,
            "l1_table_offset": h.l1_table_offset,
        }
        if self.backing_name is not None:
            details["backing_file"] = self.backing_name
            details["backing_format"] = "raw" if h.features & F_BACKING_FORMAT_NO_PROBE else "probed"
        return {"subtype": "qed", "details": details}


_NOT_ALL_ZERO = not_all(0, 8)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return QedImage(source, resolver)
