"""The one stream base every disk-image reader shares.

A format reader only describes its layout: :meth:`DiskImage._segments` says, for a span of the
virtual disk, which pieces come from which file offset, which are zero, which come from the parent
and which are bytes the reader produced (a decompressed grain). This base turns that into a
seekable :class:`io.RawIOBase` with few system calls: adjacent pieces of the same file are merged
into one ``preadv`` straight into the caller's buffer. Reads that fall in one stored run skip the
segments: :meth:`DiskImage._direct` names the file offset and the read is a single ``pread``
(docs/performance.md has the measurements behind these choices).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import io
import itertools
import logging
import mmap
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum
from typing import Any, BinaryIO, ClassVar, Generic, NamedTuple, TypeVar

import attrs

from vmforensics.confine import Confinement, PathPolicy, Refusal
from vmforensics.errors import ImageFormatError, RefusedPathError

log = logging.getLogger(__name__)

#: No header field may make a reader allocate more than this at once (tables, descriptors).
MAX_ALLOCATION = 64 * 1024 * 1024
#: Snapshot chains deeper than this are refused (VMware allows 32 snapshots, Hyper-V 50
#: checkpoints). Each layer costs about five Python frames while it opens, so this also keeps a
#: crafted chain well inside the interpreter's recursion limit (170 layers exhausted it).
MAX_CHAIN_DEPTH = 128

Opener = Callable[[str], BinaryIO]
"""Opens a file by path for binary reading; raises FileNotFoundError (or OSError) if it cannot."""


class Kind(Enum):
    DATA = "data"  # bytes at ``offset`` in ``source``
    ZERO = "zero"  # reads as zeros (unallocated in a base image, or explicitly zeroed)
    PARENT = "parent"  # not in this layer: read the same range of the parent
    BYTES = "bytes"  # ``data`` produced by the reader (for example a decompressed cluster)


class Segment(NamedTuple):
    """``length`` bytes of the virtual disk, following the previous segment."""

    length: int
    kind: Kind
    source: ImageSource | None = None
    offset: int = 0
    data: bytes | memoryview | None = None


def zero(length: int) -> Segment:
    return Segment(length, Kind.ZERO)


def from_parent(length: int) -> Segment:
    return Segment(length, Kind.PARENT)


def data(length: int, source: ImageSource, offset: int) -> Segment:
    return Segment(length, Kind.DATA, source, offset)


def produced(payload: bytes | memoryview) -> Segment:
    return Segment(len(payload), Kind.BYTES, data=payload)


_ZEROS = bytes(1 << 20)

#: read_at reuses one buffer per thread up to this size: a fresh large buffer costs a page fault
#: per 4 KiB on first touch, which made reads several times slower than the copy itself.
SCRATCH_LIMIT = 16 << 20
_SCRATCH = threading.local()


def _scratch_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer: the kernel copies file data into it up to 4x faster than into a
    heap buffer whose start is not 64-byte aligned (measured with preadv from the page cache)."""
    return mmap.mmap(-1, max(size, mmap.PAGESIZE))


def zero_parts(length: int) -> Iterator[memoryview]:
    """``length`` zero bytes as views of one shared buffer (for joining, without a fill)."""
    zeros = memoryview(_ZEROS)
    for start in range(0, length, len(_ZEROS)):
        yield zeros[: min(len(_ZEROS), length - start)]


def fill_zero(view: memoryview) -> None:
    for start in range(0, len(view), len(_ZEROS)):
        chunk = view[start : start + len(_ZEROS)]
        chunk[:] = _ZEROS[: len(chunk)]


class ImageSource:
    """One file of an image (the image itself, an extent, a data file), read by absolute offset.

    Uses ``os.preadv`` on real files (no shared file position, no intermediate copy) and falls back
    to seek+readinto under a lock for other file objects (archives, remote streams).
    """

    def __init__(self, fileobj: BinaryIO, name: str, *, owned: bool = True):
        self.fileobj = fileobj
        self.name = name
        self._owned = owned
        self._lock = threading.Lock()
        try:
            self._fd: int | None = fileobj.fileno()
            os.preadv  # noqa: B018 - not on every platform
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        if self._fd is not None:
            self.size = os.fstat(self._fd).st_size
        else:
            with self._lock:
                self.size = fileobj.seek(0, io.SEEK_END)
        # pread may go straight to the descriptor only if no subclass changes what reads return
        self._pread_fd = self._fd if type(self).readinto_at is ImageSource.readinto_at else None

    def readinto_at(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` exactly from ``offset``; a short read means a truncated file."""
        if offset < 0 or offset + len(view) > self.size:
            raise ImageFormatError(
                f"{len(view)} bytes needed but the file is {self.size} bytes long (truncated?)",
                offset=offset,
                path=self.name,
            )
        done = 0
        while done < len(view):
            if self._fd is not None:
                got = os.preadv(self._fd, [view[done:]], offset + done)
            else:
                with self._lock:
                    self.fileobj.seek(offset + done)
                    got = self.fileobj.readinto(view[done:]) or 0
            if got == 0:
                raise ImageFormatError(
                    f"file ends before {len(view)} bytes could be read here (truncated?)",
                    offset=offset + done,
                    path=self.name,
                )
            done += got

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` as a new object: one copy, one call on a real file."""
        fd = self._pread_fd
        if fd is not None and offset >= 0 and offset + length <= self.size:
            got = os.pread(fd, length, offset)
            if len(got) == length:
                return got
        buf = bytearray(length)
        self.readinto_at(memoryview(buf), offset)
        return bytes(buf)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes (headers, tables); refuses absurd sizes from headers."""
        if length < 0 or offset < 0:
            raise ImageFormatError(f"negative read of {length} bytes", offset=offset, path=self.name)
        if length > MAX_ALLOCATION:
            raise ImageFormatError(
                f"a structure of {length} bytes exceeds the {MAX_ALLOCATION}-byte limit",
                offset=offset,
                path=self.name,
            )
        if offset + length > self.size:
            raise ImageFormatError(
                f"{length} bytes needed but the file is {self.size} bytes long",
                offset=offset,
                path=self.name,
            )
        return self.pread(offset, length)

    def next_data(self, offset: int) -> int:
        """Where the file's data next begins at or after ``offset`` (SEEK_DATA; ``offset`` where
        the file cannot tell, the file's size where only a hole follows)."""
        return offset if self._pread_fd is None else self._seek_data(self._pread_fd, offset)

    def _seek_data(self, fd: int, offset: int) -> int:
        try:
            return os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:  # ENXIO: no data after offset; others: no SEEK_DATA here
            return self.size if exc.errno == errno.ENXIO else offset

    def identity(self) -> object:
        """What makes two sources the same file: device and inode, else the normalised name."""
        if self._fd is not None:
            info = os.fstat(self._fd)
            return (info.st_dev, info.st_ino)
        return posixpath.normpath(self.name.replace("\\", "/"))

    def close(self) -> None:
        if self._owned:
            self.fileobj.close()

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, size={self.size})"


class FilePool:
    """At most ``limit`` pooled files open at once, the least recently read closed first.

    A descriptor naming thousands of extent files (a split VMDK of a large disk, with its
    snapshots' deltas split too) would otherwise need a descriptor each and meet the process's
    file limit (1024 by default) before the first read. Reads of pooled files are serialised.
    """

    def __init__(self, limit: int = 64):
        self.limit = limit
        self.lock = threading.RLock()
        self._open: OrderedDict[int, PooledSource] = OrderedDict()

    @contextlib.contextmanager
    def held(self, source: PooledSource) -> Iterator[None]:
        """``source`` open (opened again if it was closed) for the duration of one read."""
        with self.lock:
            if id(source) in self._open:
                self._open.move_to_end(id(source))
            else:
                while len(self._open) >= self.limit:
                    _, oldest = self._open.popitem(last=False)
                    oldest.release()
                source.reacquire()
                self._open[id(source)] = source
            yield

    def discard(self, source: PooledSource) -> None:
        with self.lock:
            self._open.pop(id(source), None)


class PooledSource(ImageSource):
    """A file an image refers to (an extent, a data file, a parent) whose descriptor the pool
    may close while it is not read; it is opened again through the same (confined) opener, and
    refused if it is no longer the same file (device, inode and size)."""

    def __init__(self, fileobj: BinaryIO, name: str, reopen: Callable[[], BinaryIO], pool: FilePool):
        super().__init__(fileobj, name)
        if self._fd is None:
            raise TypeError("only a file with a descriptor can be pooled")
        info = os.fstat(self._fd)
        self._key = (info.st_dev, info.st_ino)
        self._reopen = reopen
        self._pool = pool
        with pool.held(self):
            pass

    def release(self) -> None:
        """Close the descriptor (the pool's lock is held)."""
        if self._fd is not None:
            self.fileobj.close()
            self._fd = None

    def reacquire(self) -> None:
        """Open the file again if its descriptor was closed (the pool's lock is held)."""
        if self._fd is not None:
            return
        if self._reopen is None:
            raise ImageFormatError("the file was closed", path=self.name)
        try:
            fileobj = self._reopen()
        except (OSError, RefusedPathError) as exc:
            raise ImageFormatError(f"cannot open the file again: {exc}", path=self.name) from exc
        info = os.fstat(fileobj.fileno())
        if (info.st_dev, info.st_ino) != self._key or info.st_size != self.size:
            fileobj.close()
            raise ImageFormatError(
                "is no longer the file the image was opened with (replaced or resized)", path=self.name
            )
        self.fileobj, self._fd = fileobj, fileobj.fileno()

    def readinto_at(self, view: memoryview, offset: int) -> None:
        with self._pool.held(self):
            super().readinto_at(view, offset)

    def next_data(self, offset: int) -> int:
        with self._pool.held(self):
            return self._seek_data(self._fd, offset)  # type: ignore[arg-type]

    def identity(self) -> object:
        return self._key

    def close(self) -> None:
        with self._pool.lock:
            self._pool.discard(self)
            self.release()
            self._reopen = None

    def __repr__(self) -> str:
        return f"PooledSource({self.name!r}, size={self.size})"


K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A small LRU cache for decoded tables (grain tables, L2 tables, BAT pages)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, load: Callable[[K], V]) -> V:
        try:
            self._items.move_to_end(key)
            return self._items[key]
        except KeyError:
            value = load(key)
            self._items[key] = value
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value


@attrs.frozen
class ImageInfo:
    """What an image is: format, subtype, size, identifiers, files, warnings and its parent's info."""

    format: str
    subtype: str
    size: int
    path: str
    files: tuple[str, ...] = ()
    identifiers: dict[str, str] = attrs.field(factory=dict)
    allocated: int | None = None
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = attrs.field(factory=dict)
    parent: ImageInfo | None = None

    @property
    def chain(self) -> list[ImageInfo]:
        """This layer first, then each parent down to the base."""
        layers: list[ImageInfo] = []
        layer: ImageInfo | None = self
        while layer is not None:
            layers.append(layer)
            layer = layer.parent
        return layers

    @property
    def all_warnings(self) -> list[str]:
        return [f"{layer.path}: {w}" for layer in self.chain for w in layer.warnings]

    def _repr_html_(self) -> str:
        from vmforensics.reports import image_info_html

        return image_info_html(self)


class DiskImage(io.RawIOBase):
    """A read-only, seekable view of a virtual disk's guest-visible bytes.

    Subclasses set ``format_name`` and implement :meth:`_segments` (and usually :meth:`_direct`,
    :meth:`_allocated` and :meth:`_describe`).
    """

    format_name: ClassVar[str] = "raw"

    def __init__(
        self,
        size: int,
        *,
        path: str,
        sources: Sequence[ImageSource] = (),
        parent: DiskImage | None = None,
        strict: bool = False,
    ):
        super().__init__()
        if size < 0:
            raise ImageFormatError(f"negative virtual size {size}", path=path)
        self._size = size
        self.path = path
        self.sources = list(sources)
        self.parent = parent
        self.strict = strict
        self.warnings: list[str] = []
        self._pos = 0
        #: Set by a layer that is one file's bytes from a fixed offset (raw, fixed VHD, one flat
        #: VMDK extent): every read is then a single pread, with no lookup at all.
        self._linear: ImageSource | None = None
        self._linear_offset = 0

    # --- what a format implements -------------------------------------------------------------

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        """Describe ``[offset, offset+length)`` (within ``size``) as consecutive segments."""
        raise NotImplementedError

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        """``(source, file offset)`` when the whole span is stored as one run of one file, else None.

        The fast path of every read: when it answers, no segment is built. A format answers for the
        cases it can tell cheaply (a read within one stored block) and leaves the rest to
        :meth:`_segments`. The span lies within ``size``; the run must lie within the file.
        """
        return None

    def _allocated(self) -> Iterable[tuple[int, int]]:
        """Ranges (offset, length) this layer itself holds data for, in order. Default: all."""
        return [(0, self._size)] if self._size else []

    def _describe(self) -> dict[str, Any]:
        """Format-specific facts for :meth:`info`: subtype, identifiers, details, files."""
        return {"subtype": self.format_name}

    # --- shared behaviour ---------------------------------------------------------------------

    def warn(self, message: str, *, offset: int | None = None) -> None:
        """Report an inconsistency: raise when strict, else record it and log it."""
        if self.strict:
            raise ImageFormatError(message, offset=offset, path=self.path)
        if offset is not None:
            message = f"{message} (offset {offset})"
        log.warning("%s: %s", self.path, message)
        self.warnings.append(message)

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = self.readinto_at(view, self._pos)
        self._pos += count
        return count

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        data = self.read_at(self._pos, max(0, self._size - self._pos))
        self._pos += len(data)
        return data

    def read_at(self, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes at ``offset`` without moving the stream position."""
        if self.closed:
            raise ValueError("I/O operation on closed disk image")
        count = length if offset + length <= self._size else self._size - offset
        if count <= 0:
            return b""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        if self._linear is not None:
            return self._linear.pread(self._linear_offset + offset, count)
        stored = self._direct(offset, count)
        if stored is not None:
            return stored[0].pread(stored[1], count)
        buf = getattr(_SCRATCH, "buf", None)  # taken while in use: a nested read makes its own
        _SCRATCH.buf = None
        if buf is None or len(buf) < count:
            buf = _scratch_buffer(count)
        try:
            parts: list[Any] = []
            self._fill(memoryview(buf)[:count], offset, parts)
            return b"".join(parts)
        finally:
            if len(buf) <= SCRATCH_LIMIT:
                _SCRATCH.buf = buf

    def readinto_at(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from virtual ``offset``; returns the count (short only at the end)."""
        if self.closed:
            raise ValueError("I/O operation on closed disk image")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        count = max(0, min(len(view), self._size - offset))
        if count == 0:
            return 0
        view = view[:count]
        stored = self._direct(offset, count)
        if stored is not None:
            stored[0].readinto_at(view, stored[1])
        else:
            self._fill(view, offset, None)
        return count

    def _fill(self, view: memoryview, offset: int, parts: list[Any] | None) -> None:
        """Read the segments of ``[offset, offset+len(view))``: file data lands in ``view``.

        Without ``parts`` everything is copied into ``view``. With ``parts`` (for :meth:`read_at`,
        which joins them into its result), zeros and produced bytes are listed as they are rather
        than copied into ``view`` first: one copy less for decompressed grains and holes.
        """
        count = len(view)
        done = 0
        run_source: ImageSource | None = None
        run_offset = run_start = run_length = 0
        for seg in self._segments(offset, count):
            if seg.length <= 0:
                raise ImageFormatError(
                    f"reader produced an empty segment at virtual offset {offset + done}", path=self.path
                )
            if done + seg.length > count:
                raise ImageFormatError(
                    f"reader produced segments past the requested span at {offset + done}", path=self.path
                )
            if seg.kind is Kind.DATA and seg.source is run_source and seg.offset == run_offset + run_length:
                run_length += seg.length
                done += seg.length
                continue
            if run_source is not None:
                run = view[run_start : run_start + run_length]
                run_source.readinto_at(run, run_offset)
                if parts is not None:
                    parts.append(run)
                run_source = None
            part = view[done : done + seg.length]
            if seg.kind is Kind.DATA:
                run_source, run_offset, run_start, run_length = seg.source, seg.offset, done, seg.length
            elif seg.kind is Kind.ZERO or (seg.kind is Kind.PARENT and self.parent is None):
                if parts is None:
                    fill_zero(part)
                else:
                    parts.extend(zero_parts(seg.length))
            elif seg.kind is Kind.PARENT:
                assert self.parent is not None
                got = self.parent.readinto_at(part, offset + done)
                if got < len(part):  # parent smaller than the child: the rest reads as zeros
                    fill_zero(part[got:])
                if parts is not None:
                    parts.append(part)
            else:
                assert seg.data is not None
                if parts is None:
                    part[:] = seg.data
                else:
                    parts.append(seg.data)
            done += seg.length
        if run_source is not None:
            run = view[run_start : run_start + run_length]
            run_source.readinto_at(run, run_offset)
            if parts is not None:
                parts.append(run)
        if done != count:
            raise ImageFormatError(
                f"reader described {done} of {count} bytes at virtual offset {offset}", path=self.path
            )

    def extents(self) -> Iterator[tuple[int, int]]:
        """Allocated ranges (offset, length) of the whole chain, merged and in order.

        Lazy: each layer's ranges are merged as they are produced, so memory stays flat however
        many ranges a (possibly crafted) image has, and the first range comes without a full walk.
        """
        ranges: Iterable[tuple[int, int]] = self._allocated()
        if self.parent is not None:
            size = self._size
            inherited = itertools.takewhile(lambda r: r[0] < size, self.parent.extents())
            ranges = heapq.merge(ranges, ((o, min(n, size - o)) for o, n in inherited))
        start = end = -1
        for off, length in ranges:
            if length <= 0:
                continue
            if off <= end:
                end = max(end, off + length)
                continue
            if end > start >= 0:
                yield (start, end - start)
            start, end = off, off + length
        if end > start >= 0:
            yield (start, end - start)

    def info(self) -> ImageInfo:
        described = dict(self._describe())
        return ImageInfo(
            format=self.format_name,
            subtype=described.pop("subtype", self.format_name),
            size=self._size,
            path=self.path,
            files=tuple(described.pop("files", [s.name for s in self.sources])),
            identifiers=described.pop("identifiers", {}),
            allocated=described.pop("allocated", sum(n for _, n in self._allocated())),
            warnings=tuple(self.warnings),
            details=described.pop("details", {}),
            parent=self.parent.info() if self.parent is not None else None,
        )

    def as_tsk(self) -> Any:
        """This image as a ``pytsk3.Img_Info`` for ``pytsk3.Volume_Info`` / ``pytsk3.FS_Info``."""
        from vmforensics.images.tsk import as_tsk

        return as_tsk(self)

    def close(self) -> None:
        if not self.closed:
            for source in self.sources:
                source.close()
            if self.parent is not None:
                self.parent.close()
        super().close()

    def __enter__(self) -> DiskImage:
        return self

    def __repr__(self) -> str:
        chain = f", parent={self.parent!r}" if self.parent is not None else ""
        return f"<{type(self).__name__} {self.path!r} size={self._size}{chain}>"


class Resolver:
    """Opens the other files an image refers to (extents, parents, backing and data files).

    Names found inside images are untrusted. The referring file's own directory is searched (the
    name as a relative path, then its base name), and an absolute name only where it lies beneath
    the confinement's roots. With ``confinement`` (the default of :func:`open_image`: the opened
    image's folder tree) a name outside the roots, behind a symbolic link or naming anything but a
    regular file is refused with ImageFormatError naming the reference. A caller's ``opener``
    without a confinement takes that responsibility itself (an acquirer's transport, an archive).
    Every layer, whichever the format, goes through :meth:`layer`, which refuses loops and depth.
    """

    def __init__(
        self,
        opener: Opener | None = None,
        *,
        strict: bool = False,
        confinement: PathPolicy | None = None,
    ):
        if opener is None:
            if not isinstance(confinement, Confinement):
                raise TypeError("a Resolver without an opener needs a local Confinement")
            opener = confinement.opener()
        self.opener: Opener = opener
        self.confinement = confinement
        self.strict = strict
        self._chain: list[object] = []  # identities of the layers being opened, to refuse loops
        self.pool = FilePool()

    def _pooled(self, path: str) -> ImageSource:
        """``path`` opened, in the pool when it is a real file (so it may be closed while unused)."""
        fileobj = self.opener(path)
        try:
            fileobj.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return ImageSource(fileobj, path)
        return PooledSource(fileobj, path, lambda: self.opener(path), self.pool)

    def candidates(self, name: str, relative_to: str) -> list[str]:
        """Where ``name``, found in ``relative_to``, may be: as given (relative or, when confined,
        absolute), then its base name beside ``relative_to``."""
        base_dir = posixpath.dirname(relative_to.replace("\\", "/"))
        clean = name.replace("\\", "/")
        out: list[str] = []
        drive_or_absolute = clean.startswith("/") or (len(clean) > 1 and clean[1] == ":")
        if not drive_or_absolute:
            out.append(
                posixpath.normpath(posixpath.join(base_dir, clean)) if base_dir else posixpath.normpath(clean)
            )
        elif self.confinement is not None and clean.startswith("/"):
            out.append(posixpath.normpath(clean))
        leaf = posixpath.basename(clean)
        if leaf and leaf not in (".", ".."):
            same_dir = posixpath.join(base_dir, leaf) if base_dir else leaf
            if same_dir not in out:
                out.append(same_dir)
        return out

    def open_source(self, names: str | Sequence[str], relative_to: str, *, what: str) -> ImageSource:
        """Open the first of ``names`` that exists; else refuse, naming the file that is needed."""
        wanted = [names] if isinstance(names, str) else list(names)
        tried: list[str] = []
        refused: list[Refusal] = []
        for name in wanted:
            if "\0" in name:
                raise ImageFormatError(f"{what} name {name!r} contains a NUL byte", path=relative_to)
            for path in self.candidates(name, relative_to):
                if path in tried:
                    continue
                tried.append(path)
                if self.confinement is not None:
                    where = self.confinement.resolve(path, os.getcwd())
                    if isinstance(where, Refusal):
                        refused.append(attrs.evolve(where, reference=name))
                        continue
                try:
                    return self._pooled(path)
                except FileNotFoundError:
                    continue
                except RefusedPathError as exc:
                    raise ImageFormatError(
                        f"refuses to open {what} {name!r}: {exc.refusal.reason}", path=relative_to
                    ) from exc
                except OSError as exc:
                    raise ImageFormatError(f"cannot open {what} {path!r}: {exc}", path=relative_to) from exc
        outside = "".join(f"; {r.path} is outside the image's folder tree" for r in refused)
        advice = (
            " (pass allowed_roots= to open_image, or --allow-root, if it really lives there)"
            if refused
            else ""
        )
        raise ImageFormatError(
            f"needs {what} {wanted[0]!r}, which was not found{outside}{advice} "
            f"(looked for: {', '.join(p for p in tried if all(p != r.path for r in refused)) or 'nothing'})",
            path=relative_to,
        )

    @contextlib.contextmanager
    def layer(self, source: ImageSource) -> Iterator[None]:
        """Hold ``source`` as a layer being opened: refuse it if it is already one (a loop, by
        device and inode where the file has them) or if the chain is already too deep."""
        key = source.identity()
        if key in self._chain:
            raise ImageFormatError(f"parent chain loops back to {source.name!r}", path=source.name)
        if len(self._chain) >= MAX_CHAIN_DEPTH:
            raise ImageFormatError(f"parent chain deeper than {MAX_CHAIN_DEPTH} images", path=source.name)
        self._chain.append(key)
        try:
            yield
        finally:
            self._chain.pop()

    def open_parent(
        self,
        names: str | Sequence[str],
        relative_to: str,
        *,
        format: str | None = None,
        what: str = "parent image",
    ) -> DiskImage:
        """Open the parent image (format detected by magic unless given) from the first name that exists."""
        from vmforensics.images.open import open_source_image

        source = self.open_source(names, relative_to, what=what)
        try:
            with self.layer(source):
                return open_source_image(source, resolver=self, format=format)
        except ImageFormatError:
            source.close()
            raise
