"""VHDX / AVHDX reader: fixed, dynamic and differencing images, with in-memory log replay.

Layout: a file identifier, two headers (the valid one with the higher sequence number wins), two
region tables locating the BAT and the metadata region, an optional log, then payload blocks and
sector bitmap blocks. The BAT interleaves one sector bitmap entry after every ``chunk ratio``
payload entries. A differencing image (AVHDX) reads sectors its bitmap marks absent from the
parent named by its parent locator, whose DataWriteGuid must match ``parent_linkage``.
"""

from __future__ import annotations

import logging
import uuid
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
from vmforensics.images.paged import PagedTable
from vmforensics.images.vhdx_layout import (
    BAT_OFFSET_SHIFT,
    BAT_REGION,
    BAT_STATE_MASK,
    FILE_PARAMETERS,
    FILE_PARAMETERS_ITEM,
    FILE_SIGNATURE,
    HEADER_OFFSETS,
    HEADER_SIZE,
    KNOWN_METADATA,
    LOGICAL_SECTOR_SIZE_ITEM,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_ITEM,
    MAX_REGION_ENTRIES,
    METADATA_ENTRY,
    METADATA_REGION,
    METADATA_TABLE_HEADER,
    METADATA_TABLE_SIZE,
    PARENT_LOCATOR_ENTRY,
    PARENT_LOCATOR_HEADER,
    PARENT_LOCATOR_ITEM,
    PARENT_PATH_KEYS,
    PHYSICAL_SECTOR_SIZE_ITEM,
    REGION_ENTRY,
    REGION_TABLE_HEADER,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    SB_BLOCK_PRESENT,
    VHDX_PARENT_LOCATOR_TYPE,
    VIRTUAL_DISK_ID_ITEM,
    VIRTUAL_DISK_SIZE_ITEM,
    Header,
    MetadataEntry,
    MiB,
    PayloadState,
    RegionEntry,
    checksum_ok,
    chunk_ratio,
    guid,
)
from vmforensics.images.vhdx_log import LogEntry, replay_log

log = logging.getLogger(__name__)

MAX_VIRTUAL_SIZE = 64 << 40  # 64 TiB
Notes = list[tuple[str, int | None]]
_ZERO_STATES = (PayloadState.UNDEFINED, PayloadState.ZERO, PayloadState.UNMAPPED)
_FULLY_PRESENT = int(PayloadState.FULLY_PRESENT)


def _choose_header(source: ImageSource, notes: Notes) -> tuple[Header, int]:
    """The valid header with the highest sequence number, and its offset."""
    valid: list[tuple[int, Header, int]] = []
    for offset in HEADER_OFFSETS:
        raw = source.read_at(offset, HEADER_SIZE)
        header = Header.parse(raw)
        if header.signature == b"head" and checksum_ok(raw):
            valid.append((header.sequence_number, header, offset))
        else:
            notes.append(("VHDX header is damaged (bad signature or CRC-32C); using the other copy", offset))
    if not valid:
        raise ImageFormatError("both VHDX headers are damaged", offset=HEADER_OFFSETS[0], path=source.name)
    _, header, offset = max(valid, key=lambda item: item[0])
    if header.version != 1:
        raise ImageFormatError(
            f"unsupported VHDX version {header.version}", offset=offset + 66, path=source.name
        )
    return header, offset


def _region_table(source: ImageSource, notes: Notes) -> dict[uuid.UUID, RegionEntry]:
    """The regions of the first sound region table copy."""
    for offset in REGION_TABLE_OFFSETS:
        raw = source.read_at(offset, REGION_TABLE_SIZE)
        signature, _, count, _ = REGION_TABLE_HEADER.unpack_from(raw)
        if signature != b"regi" or count > MAX_REGION_ENTRIES or not checksum_ok(raw):
            notes.append(("VHDX region table is damaged (bad signature, count or CRC-32C)", offset))
            continue
        regions: dict[uuid.UUID, RegionEntry] = {}
        for index in range(count):
            entry = RegionEntry._make(
                REGION_ENTRY.unpack_from(raw, REGION_TABLE_HEADER.size + index * REGION_ENTRY.size)
            )
            region = guid(entry.guid)
            if region not in (BAT_REGION, METADATA_REGION) and entry.required & 1:
                raise ImageFormatError(
                    f"VHDX requires region {region}, which this reader does not know",
                    offset=offset + REGION_TABLE_HEADER.size + index * REGION_ENTRY.size,
                    path=source.name,
                )
            regions[region] = entry
        for needed in (BAT_REGION, METADATA_REGION):
            if needed not in regions:
                raise ImageFormatError(
                    f"VHDX region table lacks region {needed}", offset=offset, path=source.name
                )
        return regions
    raise ImageFormatError(
        "both VHDX region tables are damaged", offset=REGION_TABLE_OFFSETS[0], path=source.name
    )


def _metadata_items(source: ImageSource, region: RegionEntry) -> dict[uuid.UUID, tuple[bytes, int]]:
    """Known metadata items (raw bytes, file offset); refuses unknown required ones."""
    base = region.file_offset
    if region.length < METADATA_TABLE_SIZE:
        raise ImageFormatError(
            f"VHDX metadata region of {region.length} bytes", offset=base, path=source.name
        )
    table = source.read_at(base, METADATA_TABLE_SIZE)
    signature, _, count = METADATA_TABLE_HEADER.unpack_from(table)
    if signature != b"metadata" or count > MAX_METADATA_ENTRIES:
        raise ImageFormatError(
            "bad VHDX metadata table signature or entry count", offset=base, path=source.name
        )
    items: dict[uuid.UUID, tuple[bytes, int]] = {}
    for index in range(count):
        where = base + METADATA_TABLE_HEADER.size + index * METADATA_ENTRY.size
        entry = MetadataEntry._make(METADATA_ENTRY.unpack_from(table, where - base))
        item = guid(entry.item_id)
        if item not in KNOWN_METADATA:
            if entry.is_required:
                raise ImageFormatError(f"VHDX requires metadata item {item}, unknown here", offset=where)
            continue
        if entry.length > MAX_METADATA_ITEM or entry.offset + entry.length > region.length:
            raise ImageFormatError(
                f"VHDX metadata item {item} ({entry.length} bytes at {entry.offset}) lies outside its region",
                offset=where,
                path=source.name,
            )
        items[item] = (source.read_at(base + entry.offset, entry.length), base + entry.offset)
    return items


def _parent_locator(raw: bytes, offset: int, path: str) -> dict[str, str]:
    if len(raw) < PARENT_LOCATOR_HEADER.size:
        raise ImageFormatError("VHDX parent locator is too short", offset=offset, path=path)
    locator_type, _, count = PARENT_LOCATOR_HEADER.unpack_from(raw)
    if guid(locator_type) != VHDX_PARENT_LOCATOR_TYPE:
        raise ImageFormatError(
            f"unknown VHDX parent locator type {guid(locator_type)}", offset=offset, path=path
        )
    pairs: dict[str, str] = {}
    for index in range(count):
        at = PARENT_LOCATOR_HEADER.size + index * PARENT_LOCATOR_ENTRY.size
        if at + PARENT_LOCATOR_ENTRY.size > len(raw):
            raise ImageFormatError(
                "VHDX parent locator entries overrun the item", offset=offset + at, path=path
            )
        key_at, value_at, key_len, value_len = PARENT_LOCATOR_ENTRY.unpack_from(raw, at)
        if key_at + key_len > len(raw) or value_at + value_len > len(raw):
            raise ImageFormatError(
                "VHDX parent locator key or value overruns the item", offset=offset + at, path=path
            )
        key = raw[key_at : key_at + key_len].decode("utf-16-le", "replace")
        value = raw[value_at : value_at + value_len].decode("utf-16-le", "replace")
        pairs[key] = value.split("\0", 1)[0]  # no NUL may reach a file name
    return pairs


def _item(items: dict[uuid.UUID, tuple[bytes, int]], item: uuid.UUID, size: int, path: str) -> bytes:
    """The first ``size`` bytes of a required metadata item."""
    raw, offset = items.get(item, (b"", None))
    if len(raw) < size:
        raise ImageFormatError(f"VHDX metadata item {item} is missing or short", offset=offset, path=path)
    return raw[:size]


class VhdxImage(DiskImage):
    """One VHDX or AVHDX file (and, for a differencing image, its parent chain)."""

    format_name = "vhdx"

    def __init__(self, source: ImageSource, resolver: Resolver):
        path = source.name
        if source.read_at(0, 8) != FILE_SIGNATURE:
            raise ImageFormatError("not a VHDX file (no 'vhdxfile' signature)", offset=0, path=path)
        self.creator = source.read_at(8, 512).decode("utf-16-le", "replace").split("\0", 1)[0]
        notes: Notes = []
        self.header, self.header_offset = _choose_header(source, notes)
        replay = replay_log(source, self.header, lambda message, offset: notes.append((message, offset)))
        self.log_entries: list[LogEntry] = replay.entries
        self.source = replay.source
        regions = _region_table(self.source, notes)
        self.bat_region, self.metadata_region = regions[BAT_REGION], regions[METADATA_REGION]
        items = _metadata_items(self.source, self.metadata_region)
        self.block_size, flags = FILE_PARAMETERS.unpack_from(_item(items, FILE_PARAMETERS_ITEM, 8, path))
        self.leave_block_allocated, self.has_parent = bool(flags & 1), bool(flags & 2)
        size = int.from_bytes(_item(items, VIRTUAL_DISK_SIZE_ITEM, 8, path), "little")
        self.logical_sector_size = int.from_bytes(_item(items, LOGICAL_SECTOR_SIZE_ITEM, 4, path), "little")
        self.physical_sector_size = int.from_bytes(_item(items, PHYSICAL_SECTOR_SIZE_ITEM, 4, path), "little")
        self.virtual_disk_id = guid(_item(items, VIRTUAL_DISK_ID_ITEM, 16, path))
        self._validate_parameters(size, path, items)
        super().__init__(size, path=path, sources=[self.source], strict=resolver.strict)
        for message, offset in notes:
            self.warn(message, offset=offset)
        self.chunk_ratio = chunk_ratio(self.block_size, self.logical_sector_size)
        self._read_bat()
        self._file_size = self.source.size
        bitmap_bytes = self.block_size // self.logical_sector_size // 8
        self._runs: BoundedCache[int, SectorRuns] = BoundedCache(max(16, BITMAP_CACHE_BYTES // bitmap_bytes))
        self.parent_locator: dict[str, str] = {}
        if self.has_parent:
            raw, offset = items.get(PARENT_LOCATOR_ITEM, (b"", None))
            if offset is None:
                raise ImageFormatError("differencing VHDX has no parent locator", path=path)
            self.parent_locator = _parent_locator(raw, offset, path)
            self._open_parent(resolver)

    # --- structure --------------------------------------------------------------------------

    def _validate_parameters(self, size: int, path: str, items: dict[uuid.UUID, tuple[bytes, int]]) -> None:
        def where(item: uuid.UUID) -> int | None:
            return items[item][1] if item in items else None

        bs = self.block_size
        if not (MiB <= bs <= 256 * MiB and bs & (bs - 1) == 0):
            raise ImageFormatError(
                f"invalid VHDX block size {bs}", offset=where(FILE_PARAMETERS_ITEM), path=path
            )
        if self.logical_sector_size not in (512, 4096):
            raise ImageFormatError(
                f"invalid logical sector size {self.logical_sector_size}",
                offset=where(LOGICAL_SECTOR_SIZE_ITEM),
                path=path,
            )
        if size > MAX_VIRTUAL_SIZE or size % self.logical_sector_size:
            raise ImageFormatError(
                f"invalid virtual disk size {size}", offset=where(VIRTUAL_DISK_SIZE_ITEM), path=path
            )

    def _read_bat(self) -> None:
        ratio = self.chunk_ratio
        payload_blocks = -(-self.size // self.block_size)
        bitmap_blocks = -(-payload_blocks // ratio)
        needed = payload_blocks + max(0, payload_blocks - 1) // ratio
        wanted = bitmap_blocks * (ratio + 1) if self.has_parent else needed
        available = self.bat_region.length // 8
        if available < needed:
            raise ImageFormatError(
                f"BAT region holds {available} entries but the disk needs {needed}",
                offset=self.bat_region.file_offset,
                path=self.path,
            )
        count = min(wanted, available)
        # The BAT's length follows from the declared virtual size and block size (512 MiB for a
        # 64 TiB disk of 1 MiB blocks), so no constant caps it: it must lie within the file, and
        # it is read a page at a time as reads need it.
        self._bat = PagedTable(self.source, self.bat_region.file_offset, count, what="BAT")

    def _open_parent(self, resolver: Resolver) -> None:
        names = [self.parent_locator[key] for key in PARENT_PATH_KEYS if self.parent_locator.get(key)]
        if not names:
            raise ImageFormatError("differencing VHDX parent locator names no parent file", path=self.path)
        self.parent = resolver.open_parent(names, self.path)
        try:
            linkage = {
                self.parent_locator.get(key, "").strip().strip("{}").lower()
                for key in ("parent_linkage", "parent_linkage2")
            }
            if not isinstance(self.parent, VhdxImage):
                self.warn(f"parent {self.parent.path} is a {self.parent.format_name} image, not a VHDX")
                return
            actual = str(self.parent.data_write_guid)
            if actual not in linkage:
                self.warn(
                    f"parent {self.parent.path} has DataWriteGuid {{{actual}}} but this image was made from "
                    f"{self.parent_locator.get('parent_linkage', 'an unnamed parent')}"
                )
            if self.parent.logical_sector_size != self.logical_sector_size:
                self.warn(
                    f"parent logical sector size {self.parent.logical_sector_size} differs from "
                    f"{self.logical_sector_size}"
                )
        except BaseException:
            self.parent.close()
            raise

    @property
    def data_write_guid(self) -> uuid.UUID:
        return guid(self.header.data_write_guid)

    # --- reading ----------------------------------------------------------------------------

    def _bat_entry(self, index: int) -> int:
        if index >= len(self._bat):
            raise ImageFormatError(
                f"BAT entry {index} is beyond the BAT", offset=self.bat_region.file_offset, path=self.path
            )
        return self._bat[index]

    def _block_runs(self, block: int) -> SectorRuns:
        def load(block: int) -> SectorRuns:
            ratio = self.chunk_ratio
            index = (block // ratio) * (ratio + 1) + ratio
            entry = self._bat_entry(index)
            if entry & BAT_STATE_MASK != SB_BLOCK_PRESENT:
                raise ImageFormatError(
                    f"block {block} is partially present but its sector bitmap is not",
                    offset=self.bat_region.file_offset + index * 8,
                    path=self.path,
                )
            sectors = self.block_size // self.logical_sector_size
            start = (entry >> BAT_OFFSET_SHIFT) * MiB + (block % ratio) * (sectors // 8)
            bitmap = self.source.read_at(start, sectors // 8)
            return SectorRuns(bitmap, sectors, self.logical_sector_size, msb_first=False)

        return self._runs.get(block, load)

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        block, within = divmod(offset, self.block_size)
        if within + length > self.block_size:
            return None
        entry = self._bat[block + block // self.chunk_ratio]
        start = (entry >> BAT_OFFSET_SHIFT) * MiB
        if entry & BAT_STATE_MASK == _FULLY_PRESENT and start and start + within + length <= self._file_size:
            return self.source, start + within
        return None

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        return self._walk(offset, length)

    def _walk(self, offset: int, length: int) -> Iterator[Segment]:
        bat, ratio, block_size, source = self._bat, self.chunk_ratio, self.block_size, self.source
        absent = Kind.PARENT if self.has_parent else Kind.ZERO
        pending_kind, pending = Kind.ZERO, 0  # a run of zero or parent bytes not yet emitted
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, block_size)
            count = min(block_size - within, end - pos)
            pos += count
            index = block + block // ratio
            entry = bat[index]
            state = entry & BAT_STATE_MASK
            if state == PayloadState.FULLY_PRESENT or state == PayloadState.PARTIALLY_PRESENT:
                start = (entry >> BAT_OFFSET_SHIFT) * MiB
                if start == 0:
                    raise ImageFormatError(
                        f"block {block} is present at file offset 0",
                        offset=self.bat_region.file_offset + index * 8,
                        path=self.path,
                    )
                if state == PayloadState.FULLY_PRESENT:
                    pieces: Iterable[tuple[int, int, bool]] = ((within, within + count, True),)
                else:
                    pieces = self._block_runs(block).spans(within, within + count)
                for first, stop, present in pieces:
                    if present:
                        if start + stop > source.size:
                            raise ImageFormatError(
                                f"block {block} lies beyond the end of the file (truncated?)",
                                offset=self.bat_region.file_offset + index * 8,
                                path=self.path,
                            )
                        if pending:
                            yield Segment(pending, pending_kind)
                            pending = 0
                        yield data(stop - first, source, start + first)
                        continue
                    if pending and pending_kind is not Kind.PARENT:
                        yield Segment(pending, pending_kind)
                        pending = 0
                    pending_kind = Kind.PARENT
                    pending += stop - first
                continue
            if state == PayloadState.NOT_PRESENT:
                kind = absent
            elif state in _ZERO_STATES:
                kind = Kind.ZERO
            else:
                raise ImageFormatError(
                    f"invalid block state {state}",
                    offset=self.bat_region.file_offset + index * 8,
                    path=self.path,
                )
            if pending and pending_kind is not kind:
                yield Segment(pending, pending_kind)
                pending = 0
            pending_kind = kind
            pending += count
        if pending:
            yield Segment(pending, pending_kind)

    def _allocated(self) -> Iterable[tuple[int, int]]:
        """Present blocks, found a BAT page at a time (a page of zeros, all not present, is skipped
        whole, so a huge sparse disk is scanned at the speed of reading its BAT)."""
        ranges: list[tuple[int, int]] = []
        present = (PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT)
        ratio, block_size = self.chunk_ratio, self.block_size
        payload_entries = -(-self.size // block_size) + max(0, -(-self.size // block_size) - 1) // ratio
        for first, entries in self._bat.pages(0, payload_entries, maybe_used=_may_hold_present):
            for index, entry in enumerate(entries, first):
                if (
                    index >= payload_entries
                    or entry & BAT_STATE_MASK not in present
                    or index % (ratio + 1) == ratio
                ):
                    continue
                start = (index - index // (ratio + 1)) * block_size
                stop = min(start + block_size, self.size)
                if ranges and sum(ranges[-1]) == start:
                    ranges[-1] = (ranges[-1][0], stop - ranges[-1][0])
                else:
                    ranges.append((start, stop - start))
        return ranges

    def _describe(self) -> dict[str, Any]:
        if self.has_parent:
            subtype = "differencing"
        elif self.leave_block_allocated:
            subtype = "fixed"
        else:
            subtype = "dynamic"
        identifiers = {
            "virtual_disk_id": str(self.virtual_disk_id),
            "data_write_guid": str(self.data_write_guid),
            "file_write_guid": str(guid(self.header.file_write_guid)),
        }
        if self.has_parent:
            identifiers["parent_linkage"] = self.parent_locator.get("parent_linkage", "")
        details: dict[str, Any] = {
            "creator": self.creator,
            "block_size": self.block_size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "header_offset": self.header_offset,
            "header_sequence_number": self.header.sequence_number,
            "log_guid": str(guid(self.header.log_guid)),
            "log_replayed_entries": len(self.log_entries),
            "chunk_ratio": self.chunk_ratio,
        }
        if self.log_entries:
            details["log_sequence_numbers"] = [
                e.sequence_number for e in (self.log_entries[0], self.log_entries[-1])
            ]
        if self.parent_locator:
            details["parent_locator"] = dict(self.parent_locator)
        return {"subtype": subtype, "identifiers": identifiers, "details": details}


#: Per BAT entry's first byte: 1 if its state is fully or partially present.
_PRESENT_STATES = bytes(
    int(b & BAT_STATE_MASK in (PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT))
    for b in range(256)
)


def _may_hold_present(raw: bytes) -> bool:
    """Whether a page of BAT entries (little-endian, state in the low bits) has a present block."""
    return 1 in raw[::8].translate(_PRESENT_STATES)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return VhdxImage(source, resolver)
