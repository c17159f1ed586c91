"""Tables of fixed-width entries (BATs, block maps, L1 tables, grain directories) read a page at a time.

A table's length follows from what the header declares (a 64 TiB VHDX of 1 MiB blocks has a BAT
of 512 MiB), so no constant may cap it and it is never read whole: it must lie within the file
(checked before anything is read), and a lookup reads only the page holding its entry, into a
small bounded cache. Memory stays constant however large the declared disk is.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import BoundedCache, ImageSource

#: Bytes read per page of a table.
PAGE_BYTES = 64 * 1024
#: Pages each table keeps decoded (4 MiB of entries at most).
CACHE_PAGES = 64

_TYPECODES = {4: "I", 8: "Q"}


class PagedTable:
    """``count`` unsigned entries of ``width`` bytes from ``offset`` in ``source``, read lazily.

    ``table[i]`` is entry ``i`` (IndexError outside the table); :meth:`pages` walks the table a
    page at a time for scans (allocation maps), keeping memory bounded.
    """

    def __init__(
        self,
        source: ImageSource,
        offset: int,
        count: int,
        *,
        width: int = 8,
        big_endian: bool = False,
        what: str = "table",
        cache_pages: int = CACHE_PAGES,
    ):
        if offset < 0 or count < 0 or offset + count * width > source.size:
            raise ImageFormatError(
                f"{what} of {count} entries at {offset} runs past the end of the {source.size}-byte file",
                offset=offset,
                path=source.name,
            )
        self.source = source
        self.offset = offset
        self.count = count
        self.width = width
        self.per_page = PAGE_BYTES // width
        self._typecode = _TYPECODES[width]
        self._swap = big_endian != (sys.byteorder == "big")
        self._pages: BoundedCache[int, array[int]] = BoundedCache(cache_pages)
        self._last: tuple[int, array[int]] = (-1, array(self._typecode))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"entry {index} of a {self.count}-entry table")
        number, within = divmod(index, self.per_page)
        last, entries = self._last
        if number != last:
            entries = self.page(number)
        return entries[within]

    def page(self, number: int) -> array[int]:
        """The decoded entries of page ``number`` (entries ``number * per_page`` onwards)."""
        entries = self._pages.get(number, self._load)
        self._last = (number, entries)
        return entries

    def pages(
        self, start: int = 0, stop: int | None = None, *, maybe_used: Callable[[bytes], bool] | None = None
    ) -> Iterator[tuple[int, array[int]]]:
        """(index of the first entry, entries) for each page covering entries ``start .. stop``.

        ``maybe_used`` sees each page's bytes as the file holds them and says whether it may hold
        an entry the caller wants (a quick, conservative test such as "not all zeros"); pages it
        rejects are not decoded, so a scan of a huge sparse table costs one comparison a page.
        Pages read here do not displace the lookup cache.
        """
        stop = self.count if stop is None else min(stop, self.count)
        for number in range(start // self.per_page, -(-stop // self.per_page)):
            raw = self._raw(number)
            if maybe_used is None or maybe_used(raw):
                yield number * self.per_page, self._decode(raw)

    def entry_offset(self, index: int) -> int:
        """Where entry ``index`` lies in the file (for error messages)."""
        return self.offset + index * self.width

    def _raw(self, number: int) -> bytes:
        first = number * self.per_page
        count = min(self.per_page, self.count - first)
        return self.source.read_at(self.offset + first * self.width, count * self.width)

    def _decode(self, raw: bytes) -> array[int]:
        entries = array(self._typecode, raw)
        if entries.itemsize != self.width:
            raise RuntimeError(f"array({self._typecode!r}) is not {self.width} bytes wide here")
        if self._swap:
            entries.byteswap()
        return entries

    def _load(self, number: int) -> array[int]:
        return self._decode(self._raw(number))


def not_all(value: int, width: int, *, big_endian: bool = False) -> Callable[[bytes], bool]:
    """A ``maybe_used`` test: the page holds an entry other than ``value`` (e.g. unallocated)."""
    blank = value.to_bytes(width, "big" if big_endian else "little") * (PAGE_BYTES // width)
    return lambda raw: raw != blank[: len(raw)]
