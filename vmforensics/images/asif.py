"""ASIF reader: Apple's sparse disk images of macOS 26 (Virtualization framework, Disk Utility).

A header names two directories; the one with the higher version is current (an update writes the
other and then raises its version). A directory lists tables by chunk number, a table lists the
chunk holding each data chunk of the guest range it covers (0: not stored, reads as zeros). The
metadata (a property list with the image's stable UUID) lives in a chunk mapped beyond the guest's
size. What of this is proven and what is not: docs/formats.md.
"""

from __future__ import annotations

import plistlib
from collections.abc import Iterable, Iterator
from typing import Any

from vmforensics.errors import ImageFormatError
from vmforensics.images.asif_layout import (
    DIRECTORY_VERSION,
    ENTRY_CHUNK_MASK,
    HEADER,
    MAGIC,
    META_HEADER,
    META_MAGIC,
    Geometry,
    Header,
)
from vmforensics.images.base import BoundedCache, DiskImage, ImageSource, Kind, Resolver, Segment, data
from vmforensics.images.paged import PAGE_BYTES, PagedTable, not_all

TABLE_CACHE_BYTES = 32 << 20
#: Pages each cached table keeps (a table is up to a chunk, 64 MiB).
TABLE_PAGES = 8
MAX_CHUNK_SIZE = 64 << 20
MAX_METADATA = 1 << 20


class AsifImage(DiskImage):
    format_name = "asif"

    def __init__(self, source: ImageSource, resolver: Resolver):
        header = Header.parse(source.read_at(0, HEADER.size))
        name = source.name
        if header.signature != MAGIC:
            raise ImageFormatError("no ASIF signature ('shdw')", offset=0, path=name)
        block, chunk = header.block_size, header.chunk_size
        if not (block >= 512 and block & (block - 1) == 0):
            raise ImageFormatError(f"invalid ASIF block size {block}", offset=68, path=name)
        if not (block <= chunk <= MAX_CHUNK_SIZE and chunk & (chunk - 1) == 0):
            raise ImageFormatError(f"invalid ASIF chunk size {chunk}", offset=64, path=name)
        if header.sector_count > header.max_sector_count:
            raise ImageFormatError(
                f"sector count {header.sector_count} exceeds the maximum {header.max_sector_count}",
                offset=48,
                path=name,
            )
        self.max_size = header.max_sector_count * block
        geometry = Geometry.of(chunk, block, self.max_size)
        if geometry.data_per_table <= 0:
            raise ImageFormatError(f"chunk size {chunk} is too small for ASIF tables", offset=64, path=name)
        super().__init__(header.sector_count * block, path=name, sources=[source], strict=resolver.strict)
        self.header = header
        self.source = source
        self.chunk_size = chunk
        self.geometry = geometry
        self.directory_offset, self.directory_version, self.directory = self._current_directory()
        kept = min(geometry.table_entries * 8, TABLE_PAGES * PAGE_BYTES)  # what one cached table may hold
        self._tables: BoundedCache[int, PagedTable] = BoundedCache(max(2, TABLE_CACHE_BYTES // kept))
        self._reported_shared = False  # a table named twice is reported once
        self.metadata: dict[str, Any] = {}
        if header.metadata_chunk:
            self._read_metadata()

    def _current_directory(self) -> tuple[int, int, PagedTable]:
        h = self.header
        found = []
        for field, offset in ((16, h.directory_offset_0), (24, h.directory_offset_1)):
            try:
                (version,) = DIRECTORY_VERSION.unpack(self.source.read_at(offset, DIRECTORY_VERSION.size))
            except ImageFormatError as exc:
                self.warn(f"directory at {offset} unreadable: {exc.reason}", offset=field)
                continue
            found.append((version, offset))
        if not found:
            raise ImageFormatError("neither ASIF directory can be read", offset=16, path=self.path)
        version, offset = max(found)
        # as long as the maximum size needs (bounded by the file), read a page at a time
        entries = self.geometry.directory_entries
        directory = PagedTable(
            self.source, offset + DIRECTORY_VERSION.size, entries, big_endian=True, what="ASIF directory"
        )
        return offset, version, directory

    def _read_metadata(self) -> None:
        where = self.header.metadata_chunk * self.chunk_size
        if where + META_HEADER.size > self.max_size:
            self.warn(f"metadata chunk {self.header.metadata_chunk} lies beyond the maximum size", offset=72)
            return
        raw = self._read_mapped(where, META_HEADER.size)
        signature, _version, header_size, data_size, _unknown = META_HEADER.unpack(raw)
        if signature != META_MAGIC:
            self.warn("no metadata signature ('meta') in the metadata chunk", offset=72)
            return
        if data_size > MAX_METADATA or header_size > self.chunk_size:
            self.warn(f"metadata of {data_size} bytes after a {header_size}-byte header not read", offset=72)
            return
        payload = self._read_mapped(where + header_size, data_size).strip(b"\0")
        try:
            metadata = plistlib.loads(payload)
        except Exception as exc:  # plistlib raises many types on hostile input
            self.warn(f"metadata property list unreadable: {exc}", offset=72)
            return
        if isinstance(metadata, dict):
            self.metadata = metadata

    def _read_mapped(self, offset: int, length: int) -> bytes:
        """Bytes of the mapped address space (the guest's and the reserved area beyond it)."""
        out = bytearray()
        for count, kind, at in self._runs(offset, length):
            out += self.source.read_at(at, count) if kind is Kind.DATA else bytes(count)
        return bytes(out)

    # --- mapping ------------------------------------------------------------------------------

    def _table(self, index: int) -> PagedTable | None:
        if index >= len(self.directory):
            return None
        chunk = self.directory[index] & ENTRY_CHUNK_MASK
        if chunk == 0:
            return None
        return self._tables.get(
            chunk,
            lambda c: PagedTable(
                self.source,
                c * self.chunk_size,
                self.geometry.table_entries,
                big_endian=True,
                what="ASIF table",
                cache_pages=TABLE_PAGES,
            ),
        )

    def _stored(self, offset: int) -> int | None:
        """File offset of the chunk holding guest ``offset`` (its start), or None if not stored."""
        g = self.geometry
        table_index, within = divmod(offset, g.bytes_per_table)
        table = self._table(table_index)
        if table is None:
            return None
        chunk = table[g.data_index(within // self.chunk_size)] & ENTRY_CHUNK_MASK
        return chunk * self.chunk_size if chunk else None

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, Kind, int]]:
        pos, end = offset, offset + length
        while pos < end:
            within = pos % self.chunk_size
            count = min(self.chunk_size - within, end - pos)
            stored = self._stored(pos)
            if stored is None:
                yield count, Kind.ZERO, 0
            else:
                yield count, Kind.DATA, stored + within
            pos += count

    # --- reading ------------------------------------------------------------------------------

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        within = offset % self.chunk_size
        if within + length > self.chunk_size:
            return None
        stored = self._stored(offset)
        return None if stored is None else (self.source, stored + within)

    def _segments(self, offset: int, length: int) -> Iterator[Segment]:
        pending = 0
        for count, kind, at in self._runs(offset, length):
            if kind is Kind.ZERO:
                pending += count
                continue
            if pending:
                yield Segment(pending, Kind.ZERO)
                pending = 0
            yield data(count, self.source, at)
        if pending:
            yield Segment(pending, Kind.ZERO)

    def _allocated(self) -> Iterable[tuple[int, int]]:
        g = self.geometry
        start = stop = -1
        tables = min(len(self.directory), -(-self.size // g.bytes_per_table))
        seen: set[int] = set()
        directory_pages = self.directory.pages(
            0, tables, maybe_used=_NOT_ALL_ZERO
        )  # empty page: one comparison
        used = (i for first, page in directory_pages for i, entry in enumerate(page, first) if entry)
        for table_index in used:
            chunk = self.directory[table_index] & ENTRY_CHUNK_MASK
            if not chunk:
                continue
            if chunk in seen:  # corrupt or crafted: counted once, so work stays bounded by the file
                if not self._reported_shared:
                    self._reported_shared = True
                    self.warn(
                        f"directory entry {table_index} reuses a table: its chunks are not counted again"
                    )
                continue
            table = self._table(table_index)
            if table is None:
                continue
            seen.add(chunk)
            base = table_index * g.bytes_per_table
            group = g.reserved_per_group + 1
            for first, page in table.pages(maybe_used=_NOT_ALL_ZERO):
                for slot, entry in enumerate(page, first):
                    if not entry & ENTRY_CHUNK_MASK or slot % group == group - 1:
                        continue  # not stored, or the entry a group keeps for other use
                    i = slot - slot // group
                    if i >= g.data_per_table:
                        break
                    at = base + i * self.chunk_size
                    if at >= self.size:
                        break
                    if at == stop:
                        stop = min(at + self.chunk_size, self.size)
                        continue
                    if stop > start:
                        yield (start, stop - start)
                    start, stop = at, min(at + self.chunk_size, self.size)
        if stop > start:
            yield (start, stop - start)

    def _describe(self) -> dict[str, Any]:
        h = self.header
        identifiers = {"guid": str(h.uuid)}
        internal = self.metadata.get("internal metadata")
        if isinstance(internal, dict) and isinstance(internal.get("stable uuid"), str):
            identifiers["stable_uuid"] = internal["stable uuid"]
        details: dict[str, Any] = {
            "version": h.version,
            "flags": h.flags,
            "chunk_size": self.chunk_size,
            "block_size": h.block_size,
            "max_size": self.max_size,
            "directory_offset": self.directory_offset,
            "directory_version": self.directory_version,
            "metadata_chunk": h.metadata_chunk,
            "metadata": _plain(self.metadata),
        }
        return {"subtype": "asif", "identifiers": identifiers, "details": details}


def _plain(value: Any, depth: int = 0) -> Any:
    """A property list value as JSON-friendly data (bytes as hex, dates as ISO 8601), bounded."""
    if depth > 16:
        return "..."
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value.isoformat() if hasattr(value, "isoformat") else value)


_NOT_ALL_ZERO = not_all(0, 8)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return AsifImage(source, resolver)
