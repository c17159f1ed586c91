"""Sector bitmaps (VHD, VHDX) decoded into runs, so a read turns into a few long segments."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator

_RUNS = re.compile(rb"\x00+|\xff+|[\x01-\xfe]", re.DOTALL)


class SectorRuns:
    """Which byte ranges of a block are present in this layer, from one bit per sector.

    ``msb_first`` selects the bit order: VHD numbers sectors from the most significant bit of
    each byte, VHDX from the least significant.
    """

    __slots__ = ("_present", "_starts", "size")

    def __init__(self, bitmap: bytes, sectors: int, sector_size: int, *, msb_first: bool):
        self.size = sectors * sector_size
        starts: list[int] = []
        present: list[bool] = []

        def add(first_sector: int, value: bool) -> None:
            if first_sector >= sectors:
                return
            if present and present[-1] == value:
                return
            starts.append(first_sector * sector_size)
            present.append(value)

        bitmap = bitmap[: -(-sectors // 8)]
        for match in _RUNS.finditer(bitmap):
            first = match.start() * 8
            byte = bitmap[match.start()]
            if byte in (0, 0xFF):
                add(first, byte == 0xFF)
                continue
            for bit in range(8):
                shift = 7 - bit if msb_first else bit
                add(first + bit, bool((byte >> shift) & 1))
        if not starts:
            starts, present = [0], [False]
        self._starts = starts
        self._present = present

    @property
    def full(self) -> bool:
        return self._present == [True]

    @property
    def empty(self) -> bool:
        return self._present == [False]

    def spans(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, end, present)`` pieces covering the byte range ``[start, end)`` of the block."""
        end = min(end, self.size)
        index = bisect_right(self._starts, start) - 1
        while start < end:
            following = self._starts[index + 1] if index + 1 < len(self._starts) else self.size
            stop = min(end, following)
            yield start, stop, self._present[index]
            start = stop
            index += 1
