"""qcow2 (QEMU copy-on-write, versions 2 and 3): L1/L2 tables, compression, subclusters, chains.

Each guest cluster is found through the L1 table (in memory) and an L2 table (decoded on demand
and kept in a bounded cache). A cluster is stored (at a host offset of this file or of an external
data file), compressed (zlib or zstd), explicitly zero, or unallocated (read from the backing file,
or zeros without one). With extended L2 entries each cluster has 32 subclusters with their own
allocation and zero bits. Refcount tables are not needed for reading and are not read.
"""

from __future__ import annotations

import io
import logging
import operator
import re
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

from vmforensics.errors import ImageFormatError
from vmforensics.images import qcow2_layout as q
from vmforensics.images.base import (
    BoundedCache,
    DiskImage,
    ImageSource,
    Kind,
    Resolver,
    Segment,
    data,
    from_parent,
    produced,
    zero,
)
from vmforensics.images.paged import PagedTable, not_all

log = logging.getLogger(__name__)

#: Memory kept for decoded L2 tables and for decompressed clusters (each cache, at most).
L2_CACHE_BYTES = 32 << 20
CLUSTER_CACHE_BYTES = 8 << 20

#: Backing-format names (as qemu writes them) this package reads, mapped to open_image's names.
BACKING_FORMATS = {
    "qcow2": "qcow2",
    "raw": "raw",
    "vmdk": "vmdk",
    "vpc": "vhd",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "qed": "qed",
    "parallels": "parallels",
    "qcow": "qcow1",
}

_UNALLOCATED, _ZERO, _DATA = 0, 1, 2
_STORED_RUN = re.compile(rb"\x01+")


def _big_endian_u64(raw: bytes) -> array[int]:
    table = array("Q")
    table.frombytes(raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table


class Qcow2Image(DiskImage):
    """One qcow2 layer; its backing file (if any) is ``parent``."""

    format_name = "qcow2"

    def __init__(self, source: ImageSource, resolver: Resolver):
        head = source.read_at(0, min(source.size, q.V3_MIN_HEADER_LENGTH + 8))
        if len(head) < q.V2_HEADER_LENGTH or head[:4] != q.MAGIC:
            raise ImageFormatError(
                "not a qcow2 image (bad magic or short header)", offset=0, path=source.name
            )
        header = q.decode_header(head)
        super().__init__(header.size, path=source.name, sources=[source], strict=resolver.strict)
        self.header = header
        self.source = source
        self.data_source = source
        self.backing_name: str | None = None
        self.backing_format: str | None = None
        self.data_file_name: str | None = None
        self.feature_names: dict[tuple[str, int], str] = {}
        self.snapshots: list[q.Snapshot] = []
        self._check_header()
        self._read_extensions()
        self._check_features()
        self._read_backing_name()
        self._read_l1()
        self._read_snapshots()
        self._l2_cache: BoundedCache[int, array[int]] = BoundedCache(
            max(4, L2_CACHE_BYTES >> self.cluster_bits)
        )
        self._cluster_cache: BoundedCache[int, bytes] = BoundedCache(
            max(2, CLUSTER_CACHE_BYTES >> self.cluster_bits)
        )
        self._warned_past_end = False
        self._last_l2: tuple[int, array[int] | None] = (-1, None)
        self._cluster_mask = self.cluster_size - 1
        self._l2_mask = (1 << self.l2_bits) - 1
        self._plain_mask = q.L2_COMPRESSED | q.L2_ZERO  # bits that make a cluster not plainly stored
        try:
            self._attach(resolver)
        except BaseException:
            self.close()
            raise

    # --- opening ------------------------------------------------------------------------------

    def _fail(self, reason: str, offset: int | None = None) -> ImageFormatError:
        return ImageFormatError(reason, offset=offset, path=self.path)

    def _check_header(self) -> None:
        h = self.header
        if h.version not in (2, 3):
            raise self._fail(f"unsupported qcow2 version {h.version} (2 and 3 are known)", 4)
        if h.version == 3 and (h.header_length < q.V3_MIN_HEADER_LENGTH or h.header_length % 8):
            raise self._fail(f"invalid v3 header length {h.header_length}", 100)
        if h.header_length > self.source.size:
            raise self._fail(f"header of {h.header_length} bytes runs past the end of the file", 100)
        if not q.MIN_CLUSTER_BITS <= h.cluster_bits <= q.MAX_CLUSTER_BITS:
            raise self._fail(f"cluster_bits {h.cluster_bits} outside 9..21", 20)
        if h.crypt_method:
            method = q.CRYPT_METHODS.get(h.crypt_method, f"method {h.crypt_method}")
            raise self._fail(
                f"the image is encrypted ({method}); vmforensics does not decrypt qcow2 images: "
                "decrypt a copy with qemu-img convert --object secret,... first",
                32,
            )
        if h.size >= 1 << 62:
            raise self._fail(f"virtual size {h.size} is not plausible", 24)
        self.cluster_bits = h.cluster_bits
        self.cluster_size = 1 << h.cluster_bits
        self.extended_l2 = bool(h.incompatible & q.INCOMPAT_EXTL2)
        if self.extended_l2 and h.cluster_bits < 14:
            raise self._fail("extended L2 entries need clusters of at least 16 KiB", 20)
        self.l2_stride = 2 if self.extended_l2 else 1
        self.l2_bits = h.cluster_bits - 3 - (1 if self.extended_l2 else 0)
        self.subcluster_bits = h.cluster_bits - 5

    def _read_extensions(self) -> None:
        """Walk the header extensions that follow the header, bounded by the first cluster."""
        h = self.header
        pos = h.header_length
        end = min(self.cluster_size, self.source.size)
        if h.backing_file_offset and h.backing_file_offset > pos:
            end = min(end, h.backing_file_offset)
        while pos + q.EXTENSION.size <= end:
            kind, length = q.EXTENSION.unpack(self.source.read_at(pos, q.EXTENSION.size))
            if kind == q.EXT_END:
                return
            body_at = pos + q.EXTENSION.size
            if body_at + length > end:
                raise self._fail(f"header extension 0x{kind:08x} of {length} bytes runs past the header", pos)
            body = self.source.read_at(body_at, length)
            if kind == q.EXT_BACKING_FORMAT:
                self.backing_format = body.decode("ascii", "replace")
            elif kind == q.EXT_DATA_FILE:
                self.data_file_name = body.decode("utf-8", "replace")
            elif kind == q.EXT_FEATURE_NAMES:
                for at in range(0, length - q.FEATURE_NAME.size + 1, q.FEATURE_NAME.size):
                    ftype, bit, name = q.FEATURE_NAME.unpack_from(body, at)
                    label = q.FEATURE_TYPES.get(ftype, str(ftype))
                    self.feature_names[(label, bit)] = name.rstrip(b"\0").decode("ascii", "replace")
            pos = body_at + ((length + 7) & ~7)

    def _check_features(self) -> None:
        h = self.header
        unknown = h.incompatible & ~q.KNOWN_INCOMPAT
        if unknown:
            bits = [b for b in range(64) if unknown >> b & 1]
            names = ", ".join(
                f"bit {b} ({self.feature_names[('incompatible', b)]})"
                if ("incompatible", b) in self.feature_names
                else f"bit {b}"
                for b in bits
            )
            raise self._fail(f"unknown incompatible qcow2 features: {names}; cannot read safely", 72)
        if h.incompatible & q.INCOMPAT_DIRTY:
            self.warn("dirty bit set: the image was not closed cleanly (refcounts may be stale)", offset=72)
        if h.incompatible & q.INCOMPAT_CORRUPT:
            self.warn("corrupt bit set: QEMU found metadata corruption in this image", offset=72)
        if h.compression_type not in (q.COMPRESSION_ZLIB, q.COMPRESSION_ZSTD):
            raise self._fail(f"unknown compression type {h.compression_type}", q.COMPRESSION_TYPE_OFFSET)
        if h.compression_type != q.COMPRESSION_ZLIB and not h.incompatible & q.INCOMPAT_COMPRESSION:
            self.warn("compression type set without its incompatible feature bit", offset=72)
        if h.incompatible & q.INCOMPAT_DATA_FILE and not self.data_file_name:
            raise self._fail("uses an external data file but does not name it (no data-file extension)", 72)

    def _read_backing_name(self) -> None:
        h = self.header
        if not h.backing_file_offset:
            return
        if h.backing_file_size == 0 or h.backing_file_size > q.MAX_BACKING_NAME:
            raise self._fail(f"backing file name length {h.backing_file_size} not in 1..1023", 16)
        raw = self.source.read_at(h.backing_file_offset, h.backing_file_size)
        self.backing_name = raw.decode("utf-8", "replace")

    def _read_l1(self) -> None:
        h = self.header
        covered_per_l1 = 1 << (self.l2_bits + self.cluster_bits)
        needed = -(-h.size // covered_per_l1)
        if h.l1_size < needed:
            self.warn(
                f"L1 table has {h.l1_size} entries, {needed} are needed: the rest reads unallocated",
                offset=36,
            )
        if h.l1_size and h.l1_table_offset & (self.cluster_size - 1):
            raise self._fail(f"L1 table offset {h.l1_table_offset} is not cluster-aligned", 40)
        # its length follows from the virtual size and cluster size (16 MiB for 256 TiB of 32 KiB
        # clusters): bounded by the file, read a page at a time
        self.l1 = PagedTable(self.source, h.l1_table_offset, h.l1_size, big_endian=True, what="L1 table")

    def _read_snapshots(self) -> None:
        h = self.header
        if not h.nb_snapshots:
            return
        if h.nb_snapshots > q.MAX_SNAPSHOTS:
            raise self._fail(f"{h.nb_snapshots} snapshots exceed QEMU's limit of {q.MAX_SNAPSHOTS}", 60)
        pos = h.snapshots_offset
        for index in range(h.nb_snapshots):
            try:
                entry, pos = q.read_snapshot(self.source.read_at, pos)
            except (ImageFormatError, ValueError) as exc:
                self.warn(f"snapshot table entry {index} unreadable: {exc}", offset=pos)
                return
            self.snapshots.append(entry)

    def _attach(self, resolver: Resolver) -> None:
        """Open the external data file and the backing file, both found next to this image."""
        if self.data_file_name:
            self.data_source = resolver.open_source(self.data_file_name, self.path, what="external data file")
            self.sources.append(self.data_source)
        if self.backing_name is None:
            return
        fmt = BACKING_FORMATS.get(self.backing_format or "")
        if self.backing_format and fmt is None:
            raise self._fail(f"backing file format {self.backing_format!r} is not supported")
        self.parent = resolver.open_parent(self.backing_name, self.path, format=fmt, what="backing file")

    # --- reading ------------------------------------------------------------------------------

    def _load_l2(self, l2_offset: int) -> array[int]:
        return _big_endian_u64(self.source.read_at(l2_offset, self.cluster_size))

    def _l2_table(self, l1_index: int) -> array[int] | None:
        last = self._last_l2  # one attribute, so a concurrent reader never pairs an index with another table
        if last[0] == l1_index:  # sequential and nearby reads stay within one L2 table
            return last[1]
        table = self._find_l2(l1_index)
        self._last_l2 = (l1_index, table)
        return table

    def _find_l2(self, l1_index: int) -> array[int] | None:
        if l1_index >= len(self.l1):
            return None
        l2_offset = self.l1[l1_index] & q.L1_OFFSET_MASK
        if not l2_offset:
            return None
        if l2_offset & (self.cluster_size - 1):
            raise self._fail(
                f"L2 table offset {l2_offset} is not cluster-aligned",
                self.header.l1_table_offset + 8 * l1_index,
            )
        return self._l2_cache.get(l2_offset, self._load_l2)

    def _cluster_state(self, entry: int) -> tuple[int, int]:
        """Classify a standard L2 entry: (_DATA, host offset) / (_ZERO, 0) / (_UNALLOCATED, 0)."""
        host = entry & q.L2_OFFSET_MASK
        if entry & q.L2_ZERO and not self.extended_l2:
            return _ZERO, 0
        if host or (entry & q.L2_COPIED and self.data_source is not self.source):
            if host & (self.cluster_size - 1):
                raise self._fail(f"data cluster offset {host} is not cluster-aligned")
            return _DATA, host
        return _UNALLOCATED, 0

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        mask = self._cluster_mask
        within = offset & mask
        if within + length > mask + 1 or self.extended_l2:  # reads within one cluster of standard L2
            return None
        cluster = offset >> self.cluster_bits
        table = self._l2_table(cluster >> self.l2_bits)
        if table is None:
            return None
        entry = table[cluster & self._l2_mask]
        host = entry & q.L2_OFFSET_MASK
        if (
            host
            and not entry & self._plain_mask
            and not host & mask
            and host + within + length <= self.data_source.size
        ):
            return self.data_source, host + within
        return None

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        return self._walk(offset, length)

    def _walk(self, offset: int, length: int) -> Iterator[Segment]:
        """Segments for any span: runs of stored clusters, holes, compressed and subclusters."""
        cbits, l2_bits = self.cluster_bits, self.l2_bits
        cmask = self.cluster_size - 1
        hole = from_parent if self.parent is not None else zero
        end = offset + length
        pending: Segment | None = None  # a ZERO or PARENT run being extended
        while offset < end:
            cluster = offset >> cbits
            table = self._l2_table(cluster >> l2_bits)
            if table is None:  # no L2 table: the whole L1 entry's range is unallocated
                span = min(((cluster >> l2_bits) + 1 << (l2_bits + cbits)) - offset, end - offset)
                pieces: Iterable[Segment] = (hole(span),)
            else:
                within = offset & cmask
                span = min(self.cluster_size - within, end - offset)
                index = (cluster & ((1 << l2_bits) - 1)) * self.l2_stride
                entry = table[index]
                if entry & q.L2_COMPRESSED:
                    pieces = (produced(memoryview(self._compressed(entry))[within : within + span]),)
                elif self.extended_l2:
                    pieces = self._subclusters(entry, table[index + 1], within, span, hole)
                else:
                    state, host = self._cluster_state(entry)
                    if state == _DATA:
                        span = self._contiguous(table, index, host, within, end - offset)
                        pieces = self._stored(host + within, span)
                    else:
                        pieces = (zero(span) if state == _ZERO else hole(span),)
            for piece in pieces:
                if pending is not None:
                    if piece.kind is pending.kind and piece.kind in (Kind.ZERO, Kind.PARENT):
                        pending = pending._replace(length=pending.length + piece.length)
                        continue
                    yield pending
                    pending = None
                if piece.kind in (Kind.ZERO, Kind.PARENT):
                    pending = piece
                else:
                    yield piece
            offset += span
        if pending is not None:
            yield pending

    def _contiguous(self, table: array[int], index: int, host: int, within: int, wanted: int) -> int:
        """Bytes (up to ``wanted``) stored contiguously from this cluster on, within one L2 table.

        Following runs here rather than cluster by cluster keeps sequential reads cheap.
        """
        cluster_size = self.cluster_size
        span = cluster_size - within
        expect = host + cluster_size
        while span < wanted and index + 1 < len(table):
            index += 1
            entry = table[index]
            if entry & (q.L2_COMPRESSED | q.L2_ZERO) or entry & q.L2_OFFSET_MASK != expect:
                break
            span += cluster_size
            expect += cluster_size
        return min(span, wanted)

    def _stored(self, host: int, length: int) -> Iterable[Segment]:
        """Data at ``host`` in the data file; anything past its end reads as zeros (truncated file)."""
        available = self.data_source.size - host
        if available >= length:
            return (data(length, self.data_source, host),)
        if not self._warned_past_end:
            self._warned_past_end = True
            self.warn(
                f"clusters lie past the end of {self.data_source.name} ({self.data_source.size} bytes); "
                "they read as zeros (truncated image?)",
                offset=host,
            )
        if available <= 0:
            return (zero(length),)
        return (data(available, self.data_source, host), zero(length - available))

    def _subclusters(self, entry: int, bitmap: int, within: int, span: int, hole: Any) -> Iterator[Segment]:
        """Segments of one cluster with extended L2: each subcluster allocated, zero or not."""
        host = entry & q.L2_OFFSET_MASK
        is_data = bool(host) or bool(entry & q.L2_COPIED and self.data_source is not self.source)
        if is_data and host & (self.cluster_size - 1):
            raise self._fail(f"data cluster offset {host} is not cluster-aligned")
        sbits = self.subcluster_bits
        pos, stop = within, within + span
        while pos < stop:
            sub = pos >> sbits
            part = min(((sub + 1) << sbits) - pos, stop - pos)
            allocated, zeroed = bitmap >> sub & 1, bitmap >> (32 + sub) & 1
            if allocated and zeroed:
                raise self._fail(f"subcluster {sub} is marked both allocated and zero (entry 0x{entry:016x})")
            if allocated:
                if not is_data:
                    raise self._fail(f"subcluster {sub} allocated in a cluster without a host offset")
                yield from self._stored(host + pos, part)
            else:
                yield zero(part) if zeroed else hole(part)
            pos += part

    def _compressed(self, entry: int) -> bytes:
        return self._cluster_cache.get(entry, self._decompress)

    def _decompress(self, entry: int) -> bytes:
        if self.data_source is not self.source:
            raise self._fail("compressed cluster in an image with an external data file (not allowed)")
        shift = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        size = min(sectors * 512 - (host & 511), self.source.size - host)
        if size <= 0:
            raise self._fail(f"compressed cluster at {host} lies past the end of the file", host)
        payload = self.source.read_at(host, size)
        out = self._inflate(payload, host)
        if len(out) != self.cluster_size:
            raise self._fail(
                f"compressed cluster decompresses to {len(out)} bytes, not {self.cluster_size}", host
            )
        return out

    def _inflate(self, payload: bytes, host: int) -> bytes:
        if self.header.compression_type == q.COMPRESSION_ZLIB:
            try:
                return zlib.decompressobj(-15).decompress(payload, self.cluster_size)
            except zlib.error as exc:
                raise self._fail(f"bad zlib-compressed cluster: {exc}", host) from exc
        try:
            import zstandard
        except ImportError:
            raise self._fail(
                "zstd-compressed clusters need the zstandard package: pip install vmforensics[zstd]", host
            ) from None
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
                chunks = []
                wanted = self.cluster_size
                while wanted:
                    chunk = reader.read(wanted)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    wanted -= len(chunk)
                return b"".join(chunks)
        except zstandard.ZstdError as exc:
            raise self._fail(f"bad zstd-compressed cluster: {exc}", host) from exc

    # --- describing ---------------------------------------------------------------------------

    def _allocated(self) -> Iterator[tuple[int, int]]:
        """Guest ranges stored in this layer (data, compressed or allocated subclusters)."""
        cbits = self.cluster_bits
        per_table = 1 << self.l2_bits
        start = stop = -1
        needed = -(-self._size // (per_table << cbits))
        pages = self.l1.pages(0, needed, maybe_used=_NOT_ALL_ZERO)  # an empty page costs one comparison
        used = (index for first, page in pages for index, entry in enumerate(page, first) if entry)
        for l1_index in used:
            base = l1_index * per_table
            table = self._l2_table(l1_index)
            if table is None:
                continue
            ranges = self._table_ranges(table, base) if self.extended_l2 else self._stored_runs(table, base)
            for r_off, r_len in ranges:
                if r_off >= self._size:
                    break
                r_len = min(r_len, self._size - r_off)
                if r_off == stop:
                    stop += r_len
                    continue
                if stop > start:
                    yield (start, stop - start)
                start, stop = r_off, r_off + r_len
        if stop > start:
            yield (start, stop - start)

    def _stored_runs(self, table: array[int], base: int) -> Iterator[tuple[int, int]]:
        """Runs of stored clusters (plain or compressed) in a standard L2 table, as guest ranges.

        The entries are classified by C-level maps into one flag byte each, and the runs found by a
        regular expression: no Python code runs per entry (a 1 TiB image has 16M of them).
        """
        and_, ne, cbits = operator.and_, operator.ne, self.cluster_bits
        present = q.L2_OFFSET_MASK | q.L2_COMPRESSED
        if self.data_source is not self.source:  # an external data file maps clusters 1:1
            present |= q.L2_COPIED
        stored = map(bool, map(and_, table, repeat(present)))
        not_zero = map(ne, map(and_, table, repeat(q.L2_ZERO | q.L2_COMPRESSED)), repeat(q.L2_ZERO))
        flags = bytes(map(and_, stored, not_zero))
        for run in _STORED_RUN.finditer(flags):
            yield ((base + run.start()) << cbits, (run.end() - run.start()) << cbits)

    def _table_ranges(self, table: array[int], base: int) -> Iterator[tuple[int, int]]:
        """Stored guest ranges of an extended L2 table: compressed clusters and allocated subclusters."""
        cbits, sbits = self.cluster_bits, self.subcluster_bits
        for i in range(1 << self.l2_bits):
            guest = (base + i) << cbits
            entry = table[i * 2]
            if entry & q.L2_COMPRESSED:
                yield (guest, self.cluster_size)
                continue
            bitmap = table[i * 2 + 1] & 0xFFFFFFFF
            if bitmap:
                yield from ((guest + (s << sbits), 1 << sbits) for s in range(32) if bitmap >> s & 1)

    def _describe(self) -> dict[str, Any]:
        h = self.header
        features = [
            self.feature_names.get(("incompatible", b), q.INCOMPAT_NAMES.get(b, f"bit {b}"))
            for b in range(64)
            if h.incompatible >> b & 1
        ]
        details: dict[str, Any] = {
            "version": h.version,
            "cluster_size": self.cluster_size,
            "compression_type": "zstd" if h.compression_type == q.COMPRESSION_ZSTD else "zlib",
            "extended_l2": self.extended_l2,
            "incompatible_features": features,
            "compatible_features": h.compatible,
            "autoclear_features": h.autoclear,
            "snapshots": [
                {
                    "id": s.id,
                    "name": s.name,
                    "vm_state_size": s.vm_state_size,
                    "date": datetime.fromtimestamp(s.date, UTC).isoformat(),
                    "vm_clock_nsec": s.vm_clock_nsec,
                    "disk_size": s.disk_size,
                }
                for s in self.snapshots
            ],
        }
        identifiers = {}
        if self.backing_name is not None:
            identifiers["backing_file"] = self.backing_name
            identifiers["backing_format"] = self.backing_format or "(probed)"
        if self.data_file_name:
            identifiers["data_file"] = self.data_file_name
        return {
            "subtype": f"v{h.version} (compat={'1.1' if h.version == 3 else '0.10'})",
            "identifiers": identifiers,
            "details": details,
            "files": [s.name for s in self.sources],
        }


_NOT_ALL_ZERO = not_all(0, 8)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return Qcow2Image(source, resolver)
