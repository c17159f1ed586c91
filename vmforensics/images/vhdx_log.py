"""VHDX log replay, in memory: the file is never written.

A VHDX file whose header names a log (LogGuid non-zero) may hold metadata updates (BAT, metadata,
region tables) that were logged but not yet written in place. Following [MS-VHDX] 2.3.3 this
module finds the active sequence (the newest complete run of valid entries) and returns a view of
the file with those writes applied on top (:class:`ReplayedSource`).

The log's length is what the header declares (bounded by the file), so it is never read whole:
entries are read and checksummed in bounded pieces, and a logged sector stays in the file (the
overlay keeps where it lies, not its bytes). The search's checksumming is bounded by a multiple
of the log's length, so a hostile log of overlapping entries cannot make it quadratic.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

import google_crc32c

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import ImageSource, fill_zero
from vmforensics.images.vhdx_layout import (
    LOG_DATA_SECTOR,
    LOG_DESCRIPTOR,
    LOG_ENTRY_HEADER,
    LOG_SECTOR,
    Header,
    LogDescriptor,
    LogEntryHeader,
    MiB,
    descriptor_sectors,
)

log = logging.getLogger(__name__)

#: Entry validations the search may perform before giving up on a (hostile) log.
MAX_SEARCH_STEPS = 1_000_000
#: The search may checksum this many times the log's length (a valid log needs at most once).
SEARCH_PASSES = 4
#: Bytes of an entry read at once while checksumming it.
READ_PIECE = 1 * MiB
#: Descriptors replayed at most, all entries of the active sequence together. A zero descriptor
#: costs the file 32 bytes and the overlay a few hundred, so it is their number that is bounded,
#: not the log's length: Hyper-V's and qemu's logs carry metadata updates (a 1 MiB log has room
#: for 256 data sectors in all), far below this.
MAX_DESCRIPTORS = 1 << 16


class LoggedSector(NamedTuple):
    """A 4 KiB sector the log holds: its middle at ``file_offset`` (a data sector's payload) and
    its first 8 and last 4 bytes kept in the descriptor."""

    file_offset: int
    leading: bytes
    trailing: bytes


Write = tuple[int, int, LoggedSector | None]  # file offset, length, the logged sector (None: zeros)


class LogEntry(NamedTuple):
    offset: int  # within the log
    length: int
    tail: int
    sequence_number: int
    flushed_file_offset: int
    last_file_offset: int
    descriptor_count: int


class LogReplay(NamedTuple):
    source: ImageSource
    entries: list[LogEntry]


class _Log:
    """The circular log, read from the file as entries are examined."""

    def __init__(self, source: ImageSource, offset: int, size: int, log_guid: bytes):
        if offset + size > source.size:
            raise ImageFormatError(
                f"VHDX log of {size} bytes at {offset} runs past the end of the {source.size}-byte file",
                offset=offset,
                path=source.name,
            )
        self.source = source
        self.start = offset
        self.size = size
        self.log_guid = log_guid
        self._parsed: dict[int, LogEntry | None] = {}
        self._budget = SEARCH_PASSES * size + READ_PIECE

    def _bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` of the ring, wrapping around its end."""
        offset %= self.size
        head = self.source.read_at(self.start + offset, min(length, self.size - offset))
        if len(head) < length:
            head += self.source.read_at(self.start, length - len(head))
        return head

    def entry(self, offset: int) -> LogEntry | None:
        if offset not in self._parsed:
            self._parsed[offset] = self._parse(offset)
        return self._parsed[offset]

    def _checksum_ok(self, offset: int, length: int, stored: int) -> bool:
        self._budget -= length
        if self._budget < 0:
            raise ImageFormatError(
                "VHDX log search exceeded its work limit (overlapping entries: hostile log?)",
                offset=self.start + offset,
                path=self.source.name,
            )
        crc = 0
        for at in range(0, length, READ_PIECE):
            piece = self._bytes(offset + at, min(READ_PIECE, length - at))
            if at == 0:
                piece = piece[:4] + b"\0\0\0\0" + piece[8:]
            crc = google_crc32c.extend(crc, piece)
        return crc == stored

    def _descriptors(self, offset: int, header: LogEntryHeader) -> list[LogDescriptor]:
        """The entry's descriptors (read a 4 KiB sector at a time)."""
        found: list[LogDescriptor] = []
        sector_bytes = b""
        for index in range(header.descriptor_count):
            at = LOG_ENTRY_HEADER.size + index * LOG_DESCRIPTOR.size
            sector, within = divmod(at, LOG_SECTOR)
            if within == 0 or not sector_bytes or index == 0:
                sector_bytes = self._bytes(offset + sector * LOG_SECTOR, LOG_SECTOR)
            found.append(LogDescriptor._make(LOG_DESCRIPTOR.unpack_from(sector_bytes, within)))
        return found

    def _parse(self, offset: int) -> LogEntry | None:
        raw = self._bytes(offset, LOG_SECTOR)
        header = LogEntryHeader._make(LOG_ENTRY_HEADER.unpack_from(raw))
        if (
            header.signature != b"loge"
            or header.log_guid != self.log_guid
            or header.sequence_number == 0
            or header.entry_length == 0
            or header.entry_length % LOG_SECTOR
            or header.entry_length > self.size
            or header.tail % LOG_SECTOR
            or header.tail >= self.size
        ):
            return None
        if descriptor_sectors(header.descriptor_count) * LOG_SECTOR > header.entry_length:
            return None
        if not self._checksum_ok(offset, header.entry_length, header.checksum):
            return None
        if header.descriptor_count > MAX_DESCRIPTORS:
            raise ImageFormatError(
                f"VHDX log entry declares {header.descriptor_count} descriptors, more than the "
                f"{MAX_DESCRIPTORS} this reader replays (hostile log?)",
                offset=self.start + offset,
                path=self.source.name,
            )
        entry = LogEntry(
            offset,
            header.entry_length,
            header.tail,
            header.sequence_number,
            header.flushed_file_offset,
            header.last_file_offset,
            header.descriptor_count,
        )
        return entry if self.writes(entry) is not None else None

    def writes(self, entry: LogEntry) -> list[Write] | None:
        """What ``entry`` writes into the file, or None if its descriptors are invalid."""
        header = LogEntryHeader._make(LOG_ENTRY_HEADER.unpack_from(self._bytes(entry.offset, LOG_SECTOR)))
        writes: list[Write] = []
        data_sector = descriptor_sectors(entry.descriptor_count) * LOG_SECTOR
        for desc in self._descriptors(entry.offset, header):
            if desc.sequence_number != entry.sequence_number or desc.file_offset % LOG_SECTOR:
                return None
            if desc.signature == b"zero":
                if desc.leading_or_length % LOG_SECTOR:
                    return None
                writes.append((desc.file_offset, desc.leading_or_length, None))
            elif desc.signature == b"desc":
                if data_sector + LOG_SECTOR > entry.length:
                    return None
                signature, high, _, low = LOG_DATA_SECTOR.unpack(
                    self._bytes(entry.offset + data_sector, LOG_SECTOR)
                )
                if signature != b"data" or (high << 32 | low) != entry.sequence_number:
                    return None
                where = self.start + (entry.offset + data_sector) % self.size + 8
                sector = LoggedSector(
                    where,
                    desc.leading_or_length.to_bytes(8, "little"),
                    desc.trailing_bytes.to_bytes(4, "little"),
                )
                writes.append((desc.file_offset, LOG_SECTOR, sector))
                data_sector += LOG_SECTOR
            else:
                return None
        return writes

    def active_sequence(self) -> list[LogEntry]:
        """The newest valid, complete sequence (tail entry first), per [MS-VHDX] 2.3.3; [] if none."""
        candidate: list[LogEntry] = []
        current_tail = old_tail = 0
        steps = 0
        while True:
            sequence: list[LogEntry] = []
            head = current_tail
            while len(sequence) * LOG_SECTOR < self.size:
                steps += 1
                if steps > MAX_SEARCH_STEPS:
                    raise ImageFormatError("VHDX log search exceeded its work limit (hostile log?)")
                entry = self.entry(head)
                if entry is None or (sequence and entry.sequence_number != sequence[-1].sequence_number + 1):
                    break
                sequence.append(entry)
                head = (head + entry.length) % self.size
            offsets = [entry.offset for entry in sequence]
            valid = bool(sequence) and sequence[-1].tail in offsets
            if valid:
                sequence = sequence[offsets.index(sequence[-1].tail) :]
                if not candidate or sequence[-1].sequence_number > candidate[-1].sequence_number:
                    candidate = sequence
                current_tail = head
            else:
                current_tail = (current_tail + LOG_SECTOR) % self.size
            if current_tail < old_tail:
                return candidate
            old_tail = current_tail


def overlay(writes: list[Write]) -> tuple[list[int], list[int], list[tuple[int, LoggedSector] | None]]:
    """Sorted, disjoint (start, end, payload) runs of ``writes``, a later write winning where they
    overlap; a payload is (where its sector starts in the file, the sector). O(n log n)."""
    bounds = sorted({at for offset, length, _ in writes if length > 0 for at in (offset, offset + length)})
    order = sorted((w for w in enumerate(writes) if w[1][1] > 0), key=lambda w: w[1][0])
    active: list[tuple[int, int]] = []  # (-index, end): the latest write on top
    starts: list[int] = []
    ends: list[int] = []
    payloads: list[tuple[int, LoggedSector] | None] = []
    winners: list[int] = []
    position = 0
    for left, right in itertools.pairwise(bounds):
        while position < len(order) and order[position][1][0] <= left:
            index, (offset, length, _) = order[position]
            heapq.heappush(active, (-index, offset + length))
            position += 1
        while active and active[0][1] <= left:
            heapq.heappop(active)
        if not active:
            continue
        index = -active[0][0]
        if ends and ends[-1] == left and winners[-1] == index:
            ends[-1] = right
            continue
        offset, _, sector = writes[index]
        starts.append(left)
        ends.append(right)
        payloads.append(None if sector is None else (offset, sector))
        winners.append(index)
    return starts, ends, payloads


class ReplayedSource(ImageSource):
    """The image file as it reads after the log replay: the file's bytes with the logged writes on top."""

    def __init__(self, base: ImageSource, writes: list[Write], size: int):
        super().__init__(base.fileobj, base.name, owned=False)
        self.base = base
        self.size = size
        self._starts, self._ends, self._payloads = overlay(writes)

    @property
    def writes(self) -> int:
        return len(self._starts)

    def identity(self) -> object:
        return self.base.identity()

    def readinto_at(self, view: memoryview, offset: int) -> None:
        end = offset + len(view)
        if end > self.size:
            raise ImageFormatError(
                f"file ends before {len(view)} bytes could be read here (truncated?)",
                offset=offset,
                path=self.name,
            )
        in_file = max(0, min(end, self.base.size) - offset)
        if in_file:
            self.base.readinto_at(view[:in_file], offset)
        if in_file < len(view):
            fill_zero(view[in_file:])  # the replay extended the file
        index = bisect_right(self._ends, offset)
        while index < len(self._starts) and self._starts[index] < end:
            start, stop = max(self._starts[index], offset), min(self._ends[index], end)
            payload = self._payloads[index]
            if payload is None:
                fill_zero(view[start - offset : stop - offset])
            else:
                base, sector = payload
                raw = (
                    sector.leading + self.base.read_at(sector.file_offset, LOG_SECTOR - 12) + sector.trailing
                )
                view[start - offset : stop - offset] = raw[start - base : stop - base]
            index += 1

    def close(self) -> None:
        self.base.close()


def replay_log(source: ImageSource, header: Header, warn: Callable[[str, int | None], None]) -> LogReplay:
    """Apply the log named by ``header`` in memory; returns ``source`` itself when there is nothing to do."""
    if header.log_guid == bytes(16) or header.log_length == 0:
        return LogReplay(source, [])
    if header.log_version != 0:
        raise ImageFormatError(f"unsupported VHDX log version {header.log_version}", path=source.name)
    if header.log_offset < MiB or header.log_offset % MiB or header.log_length % MiB:
        raise ImageFormatError(
            f"VHDX log at {header.log_offset} of {header.log_length} bytes is not 1 MiB aligned",
            offset=header.log_offset,
            path=source.name,
        )
    ring = _Log(source, header.log_offset, header.log_length, header.log_guid)
    entries = ring.active_sequence()
    if not entries:
        warn(
            "the header names a log but it holds no valid sequence; reading without replay", header.log_offset
        )
        return LogReplay(source, [])
    head = entries[-1]
    descriptors = sum(entry.descriptor_count for entry in entries)
    if descriptors > MAX_DESCRIPTORS:
        raise ImageFormatError(
            f"VHDX log's active sequence holds {descriptors} descriptors, more than the "
            f"{MAX_DESCRIPTORS} this reader replays (hostile log?)",
            offset=header.log_offset + entries[0].offset,
            path=source.name,
        )
    if source.size < head.flushed_file_offset:
        warn(
            f"file is {source.size} bytes but the log says at least {head.flushed_file_offset} were written "
            "(truncated?)",
            source.size,
        )
    writes = [write for entry in entries for write in ring.writes(entry) or ()]
    size = max([source.size, head.last_file_offset] + [offset + length for offset, length, _ in writes])
    log.info(
        "%s: replaying %d VHDX log entries (sequence %d..%d) in memory",
        source.name,
        len(entries),
        entries[0].sequence_number,
        head.sequence_number,
    )
    return LogReplay(ReplayedSource(source, writes, size), entries)
