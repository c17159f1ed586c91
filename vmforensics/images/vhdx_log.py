"""VHDX log replay, in memory: the file is never written.

A VHDX file whose header names a log (LogGuid non-zero) may hold metadata updates (BAT, metadata,
region tables) that were logged but not yet written in place. Following [MS-VHDX] 2.3.3 this
module finds the active sequence (the newest complete run of valid entries) and returns a view of
the file with those writes applied on top (:class:`ReplayedSource`).
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import NamedTuple

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
    checksum_ok,
    descriptor_sectors,
)

log = logging.getLogger(__name__)

#: Entry validations the search may perform before giving up on a (hostile) log.
MAX_SEARCH_STEPS = 1_000_000

Write = tuple[int, int, bytes | None]  # file offset, length, bytes (None: zeros)


class LogEntry(NamedTuple):
    offset: int  # within the log
    length: int
    tail: int
    sequence_number: int
    flushed_file_offset: int
    last_file_offset: int
    writes: list[Write]


class LogReplay(NamedTuple):
    source: ImageSource
    entries: list[LogEntry]


class _Log:
    """The circular log, read once, and the entries found in it."""

    def __init__(self, raw: bytes, log_guid: bytes):
        self.raw = raw
        self.size = len(raw)
        self.log_guid = log_guid
        self._parsed: dict[int, LogEntry | None] = {}

    def _bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``, wrapping around the end of the ring."""
        head = self.raw[offset : offset + length]
        if len(head) < length:
            head += self.raw[: length - len(head)]
        return head

    def entry(self, offset: int) -> LogEntry | None:
        if offset not in self._parsed:
            self._parsed[offset] = self._parse(offset)
        return self._parsed[offset]

    def _parse(self, offset: int) -> LogEntry | None:
        header = LogEntryHeader._make(
            LOG_ENTRY_HEADER.unpack_from(self._bytes(offset, LOG_ENTRY_HEADER.size))
        )
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
        desc_sectors = descriptor_sectors(header.descriptor_count)
        if desc_sectors * LOG_SECTOR > header.entry_length:
            return None
        raw = self._bytes(offset, header.entry_length)
        if not checksum_ok(raw):
            return None
        writes: list[Write] = []
        data_sector = desc_sectors * LOG_SECTOR
        for index in range(header.descriptor_count):
            desc = LogDescriptor._make(
                LOG_DESCRIPTOR.unpack_from(raw, LOG_ENTRY_HEADER.size + index * LOG_DESCRIPTOR.size)
            )
            if desc.sequence_number != header.sequence_number or desc.file_offset % LOG_SECTOR:
                return None
            if desc.signature == b"zero":
                if desc.leading_or_length % LOG_SECTOR:
                    return None
                writes.append((desc.file_offset, desc.leading_or_length, None))
            elif desc.signature == b"desc":
                if data_sector + LOG_SECTOR > header.entry_length:
                    return None
                signature, high, payload, low = LOG_DATA_SECTOR.unpack_from(raw, data_sector)
                if signature != b"data" or (high << 32 | low) != header.sequence_number:
                    return None
                sector = (
                    desc.leading_or_length.to_bytes(8, "little")
                    + payload
                    + desc.trailing_bytes.to_bytes(4, "little")
                )
                writes.append((desc.file_offset, LOG_SECTOR, sector))
                data_sector += LOG_SECTOR
            else:
                return None
        return LogEntry(
            offset,
            header.entry_length,
            header.tail,
            header.sequence_number,
            header.flushed_file_offset,
            header.last_file_offset,
            writes,
        )

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


class ReplayedSource(ImageSource):
    """The image file as it reads after the log replay: the file's bytes with the logged writes on top."""

    def __init__(self, base: ImageSource, writes: list[Write], size: int):
        super().__init__(base.fileobj, base.name, owned=False)
        self.base = base
        self.size = size
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._payloads: list[bytes | None] = []
        for offset, length, payload in writes:
            self._put(offset, offset + length, payload)

    def _put(self, start: int, end: int, payload: bytes | None) -> None:
        """Overlay ``[start, end)``; later writes replace earlier ones where they overlap."""
        if end <= start:
            return
        first = bisect_right(self._ends, start)
        last = bisect_left(self._starts, end)
        starts, ends, payloads = [start], [end], [payload]
        if first < last:
            left_start, left_payload = self._starts[first], self._payloads[first]
            if left_start < start:
                starts.insert(0, left_start)
                ends.insert(0, start)
                payloads.insert(0, left_payload and left_payload[: start - left_start])
            right_start, right_end, right_payload = (
                self._starts[last - 1],
                self._ends[last - 1],
                self._payloads[last - 1],
            )
            if right_end > end:
                starts.append(end)
                ends.append(right_end)
                payloads.append(right_payload and right_payload[end - right_start :])
        self._starts[first:last] = starts
        self._ends[first:last] = ends
        self._payloads[first:last] = payloads

    @property
    def writes(self) -> int:
        return len(self._starts)

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
                base = self._starts[index]
                view[start - offset : stop - offset] = payload[start - base : stop - base]
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
    ring = _Log(source.read_at(header.log_offset, header.log_length), header.log_guid)
    entries = ring.active_sequence()
    if not entries:
        warn(
            "the header names a log but it holds no valid sequence; reading without replay", header.log_offset
        )
        return LogReplay(source, [])
    head = entries[-1]
    if source.size < head.flushed_file_offset:
        warn(
            f"file is {source.size} bytes but the log says at least {head.flushed_file_offset} were written "
            "(truncated?)",
            source.size,
        )
    writes = [write for entry in entries for write in entry.writes]
    size = max([source.size, head.last_file_offset] + [offset + length for offset, length, _ in writes])
    log.info(
        "%s: replaying %d VHDX log entries (sequence %d..%d) in memory",
        source.name,
        len(entries),
        entries[0].sequence_number,
        head.sequence_number,
    )
    return LogReplay(ReplayedSource(source, writes, size), entries)
