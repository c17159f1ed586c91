"""VHD reader: fixed, dynamic and differencing images (Virtual PC, Hyper-V v1, qemu "vpc").

A fixed VHD is the guest's bytes followed by a 512-byte footer; its size is the footer's current
size (the footer itself is not guest data). Dynamic and differencing images keep a copy of the
footer at offset 0, a dynamic header, a block allocation table (BAT) and, in front of every
allocated block, a sector bitmap: a clear bit reads as zeros in a dynamic image and from the
parent in a differencing one.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import (
    BoundedCache,
    DiskImage,
    ImageSource,
    Kind,
    Resolver,
    Segment,
    data,
)
from vmforensics.images.bitmap import BITMAP_CACHE_BYTES, SectorRuns
from vmforensics.images.paged import PagedTable, not_all
from vmforensics.images.vhd_layout import (
    CHECKSUM_OFFSET_DYNAMIC,
    CHECKSUM_OFFSET_FOOTER,
    DYNAMIC_COOKIE,
    DYNAMIC_HEADER_SIZE,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    PLATFORM_ENCODINGS,
    SECTOR,
    UNALLOCATED,
    DiskType,
    DynamicHeader,
    Footer,
    bitmap_bytes,
    checksum,
    parent_locators,
)

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 1 << 30
MAX_LOCATOR_LENGTH = 64 * 1024
_VHD_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)

Notes = list[tuple[str, int | None]]


def _read_footer(source: ImageSource, notes: Notes) -> tuple[Footer, int]:
    """The footer and its offset: the trailing copy, else the copy at offset 0 if that one is sound."""
    trailing: tuple[bytes, int] | None = None
    for length in (FOOTER_SIZE, FOOTER_SIZE - 1):  # Virtual PC before 2004 wrote 511 bytes
        if source.size >= length:
            raw = source.read_at(source.size - length, length)
            if raw.startswith(FOOTER_COOKIE):
                trailing = raw.ljust(FOOTER_SIZE, b"\0"), source.size - length
                break
    head: bytes | None = None
    if source.size >= FOOTER_SIZE:
        raw = source.read_at(0, FOOTER_SIZE)
        head = raw if raw.startswith(FOOTER_COOKIE) else None

    def sound(raw: bytes) -> bool:
        return checksum(raw, CHECKSUM_OFFSET_FOOTER) == Footer.parse(raw).checksum

    if trailing is not None and sound(trailing[0]):
        return Footer.parse(trailing[0]), trailing[1]
    if trailing is not None:
        if head is not None and sound(head) and Footer.parse(head).disk_type != DiskType.FIXED:
            notes.append(
                ("footer checksum mismatch at the end of the file; using the copy at offset 0", trailing[1])
            )
            return Footer.parse(head), 0
        notes.append(("footer checksum mismatch", trailing[1] + CHECKSUM_OFFSET_FOOTER))
        return Footer.parse(trailing[0]), trailing[1]
    if head is not None:
        notes.append(
            ("no footer at the end of the file (truncated?); using the copy at offset 0", source.size)
        )
        if not sound(head):
            notes.append(("footer copy checksum mismatch", CHECKSUM_OFFSET_FOOTER))
        return Footer.parse(head), 0
    raise ImageFormatError("no VHD footer ('conectix') at the end or start of the file", path=source.name)


class VhdImage(DiskImage):
    """One VHD file (and, for a differencing image, its parent chain)."""

    format_name = "vhd"

    def __init__(self, source: ImageSource, resolver: Resolver):
        notes: Notes = []
        footer, self.footer_offset = _read_footer(source, notes)
        self.footer = footer
        self.source = source
        if footer.disk_type not in iter(DiskType):
            raise ImageFormatError(
                f"unknown VHD disk type {footer.disk_type}", offset=self.footer_offset + 60, path=source.name
            )
        self.disk_type = DiskType(footer.disk_type)
        super().__init__(footer.current_size, path=source.name, sources=[source], strict=resolver.strict)
        for message, offset in notes:
            self.warn(message, offset=offset)
        self.dynamic: DynamicHeader | None = None
        self.block_size = 0
        self._bat = PagedTable(source, 0, 0, width=4, big_endian=True)
        if self.disk_type is DiskType.FIXED:
            if footer.current_size > self.footer_offset:
                raise ImageFormatError(
                    f"fixed VHD of {footer.current_size} bytes holds only {self.footer_offset} bytes of data",
                    offset=self.footer_offset,
                    path=source.name,
                )
            self._linear = source
            return
        self._read_dynamic_header()
        self._bitmap_size = bitmap_bytes(self.block_size)
        self._runs: BoundedCache[int, SectorRuns] = BoundedCache(
            max(16, BITMAP_CACHE_BYTES // self._bitmap_size)
        )
        self._fully_present: BoundedCache[int, bool] = BoundedCache(1 << 16)  # per block: every sector?
        self.parent_names: list[str] = []
        if self.disk_type is DiskType.DIFFERENCING:
            self._open_parent(resolver)

    # --- structure --------------------------------------------------------------------------

    def _read_dynamic_header(self) -> None:
        offset = self.footer.data_offset
        raw = self.source.read_at(offset, DYNAMIC_HEADER_SIZE)
        header = DynamicHeader.parse(raw)
        if header.cookie != DYNAMIC_COOKIE:
            raise ImageFormatError(
                "no dynamic header ('cxsparse') where the footer points", offset=offset, path=self.path
            )
        if checksum(raw, CHECKSUM_OFFSET_DYNAMIC) != header.checksum:
            self.warn("dynamic header checksum mismatch", offset=offset + CHECKSUM_OFFSET_DYNAMIC)
        if not (SECTOR <= header.block_size <= MAX_BLOCK_SIZE and header.block_size % SECTOR == 0):
            raise ImageFormatError(
                f"invalid block size {header.block_size}", offset=offset + 32, path=self.path
            )
        self.dynamic = header
        self._raw_dynamic = raw
        self._dynamic_offset = offset
        self.block_size = header.block_size
        # bounded by the file, read a page at a time
        bat = PagedTable(
            self.source, header.table_offset, header.max_table_entries, width=4, big_endian=True, what="BAT"
        )
        self._bat = bat
        needed = -(-self.size // self.block_size)
        if len(bat) < needed:
            self.warn(
                f"BAT has {len(bat)} entries but the disk needs {needed}; the rest reads as unallocated",
                offset=offset + 28,
            )

    def _parent_names(self) -> list[str]:
        assert self.dynamic is not None
        by_code: dict[bytes, str] = {}
        for index, locator in enumerate(parent_locators(self._raw_dynamic)):
            encoding = PLATFORM_ENCODINGS.get(locator.platform_code)
            if encoding is None or locator.data_length == 0 or locator.platform_code in by_code:
                continue
            where = self._dynamic_offset + 576 + index * 24
            if locator.data_length > MAX_LOCATOR_LENGTH:
                self.warn(f"parent locator of {locator.data_length} bytes ignored", offset=where)
                continue
            try:
                raw = self.source.read_at(locator.data_offset, locator.data_length)
            except ImageFormatError as exc:
                self.warn(f"parent locator unreadable: {exc.reason}", offset=where)
                continue
            name = raw.decode(encoding, "replace").split("\0", 1)[0]
            if locator.platform_code == b"MacX" and name.startswith("file://"):
                name = name.removeprefix("file://")
            if name:
                by_code[locator.platform_code] = name
        names = [by_code[code] for code in PLATFORM_ENCODINGS if code in by_code]
        if self.dynamic.parent_name:
            names.append(self.dynamic.parent_name)
        return names

    def _open_parent(self, resolver: Resolver) -> None:
        assert self.dynamic is not None
        self.parent_names = self._parent_names()
        if not self.parent_names:
            raise ImageFormatError(
                "differencing VHD names no parent", offset=self._dynamic_offset, path=self.path
            )
        self.parent = resolver.open_parent(self.parent_names, self.path)
        try:
            expected = self.dynamic.parent_uuid
            if not isinstance(self.parent, VhdImage):
                self.warn(f"parent {self.parent.path} is a {self.parent.format_name} image, not a VHD")
            elif self.parent.footer.uuid != expected:
                self.warn(
                    f"parent {self.parent.path} has unique id {self.parent.footer.uuid}, "
                    f"but this image was made from {expected}",
                    offset=self._dynamic_offset + 40,
                )
        except BaseException:
            self.parent.close()
            raise

    # --- reading ----------------------------------------------------------------------------

    def _block_runs(self, block: int) -> SectorRuns:
        def load(block: int) -> SectorRuns:
            bitmap = self.source.read_at(self._bat[block] * SECTOR, self._bitmap_size)
            return SectorRuns(bitmap, self.block_size // SECTOR, SECTOR, msb_first=True)

        return self._runs.get(block, load)

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        if self.disk_type is DiskType.FIXED:
            return self.source, offset
        block, within = divmod(offset, self.block_size)
        if within + length > self.block_size or block >= len(self._bat):
            return None
        entry = self._bat[block]
        if entry == UNALLOCATED:
            return None
        # the block's bitmap, read once, says whether every sector is present
        if self._fully_present.get(block, lambda block: self._block_runs(block).full):
            return self.source, entry * SECTOR + self._bitmap_size + within
        return None

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        if self.disk_type is DiskType.FIXED:
            return (data(length, self.source, offset),)
        return self._walk(offset, length)

    def _walk(self, offset: int, length: int) -> Iterator[Segment]:
        absent = Kind.PARENT if self.disk_type is DiskType.DIFFERENCING else Kind.ZERO
        bat, entries, block_size = self._bat, len(self._bat), self.block_size
        pending = 0  # bytes of consecutive absent sectors not yet emitted
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, block_size)
            count = min(block_size - within, end - pos)
            pos += count
            entry = bat[block] if block < entries else UNALLOCATED
            if entry == UNALLOCATED:
                pending += count
                continue
            runs = self._block_runs(block)
            start = entry * SECTOR + self._bitmap_size
            if runs.full:
                if pending:
                    yield Segment(pending, absent)
                    pending = 0
                yield data(count, self.source, start + within)
                continue
            for first, stop, present in runs.spans(within, within + count):
                if not present:
                    pending += stop - first
                    continue
                if pending:
                    yield Segment(pending, absent)
                    pending = 0
                yield data(stop - first, self.source, start + first)
        if pending:
            yield Segment(pending, absent)

    def _allocated(self) -> Iterable[tuple[int, int]]:
        if self.disk_type is DiskType.FIXED:
            return [(0, self.size)] if self.size else []
        ranges: list[tuple[int, int]] = []
        blocks = min(len(self._bat), -(-self.size // self.block_size))
        pages = self._bat.pages(0, blocks, maybe_used=_NOT_ALL_UNALLOCATED)  # an empty page: one comparison
        for block in (b for first, page in pages for b, e in enumerate(page, first) if e != UNALLOCATED):
            if block >= blocks:
                break
            start = block * self.block_size
            stop = min(start + self.block_size, self.size)
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], stop - ranges[-1][0])
            else:
                ranges.append((start, stop - start))
        return ranges

    def _describe(self) -> dict[str, Any]:
        footer = self.footer
        cylinders, heads, sectors = footer.chs
        details: dict[str, Any] = {
            "creator_app": footer.creator_app.decode("latin-1"),
            "creator_version": f"{footer.creator_version >> 16}.{footer.creator_version & 0xFFFF}",
            "creator_os": footer.creator_os.decode("latin-1"),
            "timestamp": (_VHD_EPOCH + datetime.timedelta(seconds=footer.timestamp)).isoformat(),
            "geometry": {"cylinders": cylinders, "heads": heads, "sectors_per_track": sectors},
            "footer_offset": self.footer_offset,
        }
        identifiers = {"unique_id": str(footer.uuid)}
        if self.dynamic is not None:
            details["block_size"] = self.block_size
            details["bat_entries"] = len(self._bat)
            if self.disk_type is DiskType.DIFFERENCING:
                identifiers["parent_unique_id"] = str(self.dynamic.parent_uuid)
                details["parent_names"] = self.parent_names
        return {"subtype": self.disk_type.name.lower(), "identifiers": identifiers, "details": details}


_NOT_ALL_UNALLOCATED = not_all(UNALLOCATED, 4, big_endian=True)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return VhdImage(source, resolver)
