"""qcow (version 1) reader: QEMU's original copy-on-write format, still met in archives.

Two tables map the disk: L1 entries name L2 tables, L2 entries name clusters (0: not in this
image, so the backing file's bytes or zeros) or, with the top bit set, a deflate-compressed
cluster. AES-encrypted images are refused.
"""

from __future__ import annotations

import datetime
import sys
import zlib
from array import array
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
    produced,
)
from vmforensics.images.paged import PagedTable, not_all
from vmforensics.images.qcow1_layout import (
    COMPRESSED,
    CRYPT_AES,
    CRYPT_NONE,
    HEADER,
    MAGIC,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    VERSION,
    Header,
    compressed_location,
)

L2_CACHE_BYTES = 32 << 20
CLUSTER_CACHE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023
MAX_SIZE = 1 << 62


def _u64_table(raw: bytes) -> array[int]:
    table = array("Q", raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table


class Qcow1Image(DiskImage):
    format_name = "qcow1"

    def __init__(self, source: ImageSource, resolver: Resolver):
        header = Header.parse(source.read_at(0, HEADER.size))
        name = source.name
        if header.magic != MAGIC or header.version != VERSION:
            raise ImageFormatError(
                f"not a qcow version 1 image (version {header.version})", offset=4, path=name
            )
        if not MIN_CLUSTER_BITS <= header.cluster_bits <= MAX_CLUSTER_BITS:
            raise ImageFormatError(f"invalid cluster_bits {header.cluster_bits}", offset=32, path=name)
        if not MIN_CLUSTER_BITS - 3 <= header.l2_bits <= MAX_CLUSTER_BITS - 3:
            raise ImageFormatError(f"invalid l2_bits {header.l2_bits}", offset=33, path=name)
        if header.crypt_method == CRYPT_AES:
            raise ImageFormatError(
                "AES-encrypted qcow image: vmforensics does not decrypt it", offset=36, path=name
            )
        if header.crypt_method != CRYPT_NONE:
            raise ImageFormatError(
                f"unknown qcow encryption method {header.crypt_method}", offset=36, path=name
            )
        if header.size > MAX_SIZE:
            raise ImageFormatError(f"virtual size {header.size} is absurd", offset=24, path=name)
        super().__init__(header.size, path=name, sources=[source], strict=resolver.strict)
        self.header = header
        self.source = source
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self.l2_entries = 1 << header.l2_bits
        self._span_bits = header.cluster_bits + header.l2_bits
        l1_size = -(-header.size >> self._span_bits) if header.size else 0
        # the L1 table's length follows from the virtual size (256 MiB for 64 TiB of qemu's 4 KiB
        # clusters): it must lie within the file, and is read a page at a time
        self.l1 = PagedTable(source, header.l1_table_offset, l1_size, big_endian=True, what="L1 table")
        self._l2: BoundedCache[int, array[int]] = BoundedCache(
            max(4, L2_CACHE_BYTES // (self.l2_entries * 8))
        )
        self._clusters: BoundedCache[int, bytes] = BoundedCache(
            max(2, CLUSTER_CACHE_BYTES >> self.cluster_bits)
        )
        self._reported_shared = False  # an L2 table named twice is reported once
        self.backing_name: str | None = None
        if header.backing_file_offset:
            self._open_backing(resolver)

    def _open_backing(self, resolver: Resolver) -> None:
        h = self.header
        if not 0 < h.backing_file_size <= MAX_BACKING_NAME:
            raise ImageFormatError(
                f"invalid backing file name length {h.backing_file_size}", offset=16, path=self.path
            )
        raw = self.source.read_at(h.backing_file_offset, h.backing_file_size)
        self.backing_name = raw.decode("utf-8", "replace")
        self.parent = resolver.open_parent(self.backing_name, self.path)

    # --- reading ------------------------------------------------------------------------------

    def _entry(self, cluster_index: int) -> int:
        l1_index = cluster_index >> self.header.l2_bits
        if l1_index >= len(self.l1) or not self.l1[l1_index]:
            return 0
        offset = self.l1[l1_index]
        table = self._l2.get(offset, lambda at: _u64_table(self.source.read_at(at, self.l2_entries * 8)))
        return table[cluster_index & (self.l2_entries - 1)]

    def _decompress(self, entry: int) -> bytes:
        offset, stored = compressed_location(entry, self.cluster_bits)
        payload = self.source.read_at(offset, stored)
        try:
            out = zlib.decompressobj(-15).decompress(payload, self.cluster_size)
        except zlib.error as exc:
            raise ImageFormatError(f"bad compressed cluster: {exc}", offset=offset, path=self.path) from exc
        if len(out) != self.cluster_size:
            raise ImageFormatError(
                f"compressed cluster decompresses to {len(out)} bytes, not {self.cluster_size}",
                offset=offset,
                path=self.path,
            )
        return out

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        index, within = divmod(offset, self.cluster_size)
        if within + length > self.cluster_size:
            return None
        entry = self._entry(index)
        if entry == 0 or entry & COMPRESSED:
            return None
        return self.source, entry + within

    def _segments(self, offset: int, length: int) -> Iterator[Segment]:
        cluster = self.cluster_size
        absent = Kind.PARENT if self.parent is not None else Kind.ZERO
        pending = 0
        pos, end = offset, offset + length
        while pos < end:
            index, within = divmod(pos, cluster)
            count = min(cluster - within, end - pos)
            pos += count
            entry = self._entry(index)
            if entry == 0:
                pending += count
                continue
            if pending:
                yield Segment(pending, absent)
                pending = 0
            if entry & COMPRESSED:
                plain = self._clusters.get(entry, self._decompress)
                yield produced(memoryview(plain)[within : within + count])
            else:
                yield data(count, self.source, entry + within)
        if pending:
            yield Segment(pending, absent)

    def _allocated(self) -> Iterable[tuple[int, int]]:
        start = stop = -1
        span = 1 << self._span_bits
        seen: set[int] = set()
        pages = self.l1.pages(maybe_used=_NOT_ALL_ZERO)  # an empty page costs one comparison
        for l1_index, l2_offset in ((i, e) for first, page in pages for i, e in enumerate(page, first)):
            if not l2_offset:
                continue
            if l2_offset in seen:  # corrupt or crafted: counted once, so work stays bounded by the file
                if not self._reported_shared:
                    self._reported_shared = True
                    self.warn(f"L1 entry {l1_index} reuses an L2 table: its clusters are not counted again")
                continue
            seen.add(l2_offset)
            base = l1_index * span
            table = self._l2.get(
                l2_offset, lambda at: _u64_table(self.source.read_at(at, self.l2_entries * 8))
            )
            if not any(table):
                continue
            for i, entry in enumerate(table):
                if not entry:
                    continue
                at = base + i * self.cluster_size
                if at >= self.size:
                    break
                if at == stop:
                    stop = min(at + self.cluster_size, self.size)
                    continue
                if stop > start:
                    yield (start, stop - start)
                start, stop = at, min(at + self.cluster_size, self.size)
        if stop > start:
            yield (start, stop - start)

    def _describe(self) -> dict[str, Any]:
        h = self.header
        details: dict[str, Any] = {
            "cluster_size": self.cluster_size,
            "l2_bits": h.l2_bits,
            "l1_table_offset": h.l1_table_offset,
            "mtime": datetime.datetime.fromtimestamp(h.mtime, datetime.UTC).isoformat(),  # u32: in range
        }
        if self.backing_name is not None:
            details["backing_file"] = self.backing_name
        return {"subtype": "qcow1", "details": details}


_NOT_ALL_ZERO = not_all(0, 8)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return Qcow1Image(source, resolver)
