"""Sector bitmaps (VHD, VHDX) read as runs, so a read turns into a few long segments.

The bitmap is kept as it is in the file (one bit a sector: 256 KiB for a 1 GiB VHD block) and
decoded only over the span a read asks for, never into one Python object a run: an alternating
bitmap would make two million of them for one block.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_RUNS = re.compile(rb"\x00+|\xff+|[\x01-\xfe]", re.DOTALL)
#: Memory a reader keeps for the bitmaps of recently read blocks.
BITMAP_CACHE_BYTES = 16 << 20


class SectorRuns:
    """Which byte ranges of a block are present in this layer, from one bit per sector.

    ``msb_first`` selects the bit order: VHD numbers sectors from the most significant bit of
    each byte, VHDX from the least significant. Sectors the bitmap does not reach are absent.
    """

    __slots__ = ("_bitmap", "_msb_first", "empty", "full", "sector_size", "sectors", "size")

    def __init__(self, bitmap: bytes, sectors: int, sector_size: int, *, msb_first: bool):
        self.size = sectors * sector_size
        self.sectors = sectors
        self.sector_size = sector_size
        self._msb_first = msb_first
        self._bitmap = bytes(bitmap[: -(-sectors // 8)]).ljust(-(-sectors // 8), b"\0")
        whole, rest = divmod(sectors, 8)
        tail = self._bitmap[whole] & self._mask(rest) if rest else 0
        self.full = self._bitmap[:whole] == b"\xff" * whole and tail == self._mask(rest)
        self.empty = not self._bitmap[:whole].strip(b"\0") and tail == 0

    def _mask(self, count: int) -> int:
        """The bits of a byte's first ``count`` sectors."""
        return (0xFF << (8 - count)) & 0xFF if self._msb_first else (1 << count) - 1

    def _sector_runs(self, first: int, stop: int) -> Iterator[tuple[int, int, bool]]:
        """(first sector, end sector, present) runs covering sectors ``first .. stop``, merged."""
        run_start, run_value = first, None
        for match in _RUNS.finditer(self._bitmap, first // 8, -(-stop // 8)):
            at = match.start() * 8
            byte = self._bitmap[match.start()]
            if byte in (0, 0xFF):
                pieces: Iterator[tuple[int, int, bool]] = iter(((at, match.end() * 8, byte == 0xFF),))
            else:
                pieces = (
                    (at + bit, at + bit + 1, bool(byte >> (7 - bit if self._msb_first else bit) & 1))
                    for bit in range(8)
                )
            for low, high, value in pieces:
                low, high = max(low, first), min(high, stop)
                if low >= high:
                    continue
                if value != run_value:
                    if run_value is not None:
                        yield run_start, low, run_value
                    run_start, run_value = low, value
        if run_value is not None:
            yield run_start, stop, run_value

    def spans(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, end, present)`` pieces covering the byte range ``[start, end)`` of the block."""
        end = min(end, self.size)
        if start >= end:
            return
        size = self.sector_size
        for low, high, present in self._sector_runs(start // size, -(-end // size)):
            yield max(start, low * size), min(end, high * size), present
