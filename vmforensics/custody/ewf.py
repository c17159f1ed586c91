"""EWF-E01 export: any disk :func:`~vmforensics.images.open_image` reads, written as EnCase 6
segment files (header2/header with the case, volume, sectors of zlib chunks, table/table2, digest
and hash with the media's MD5 and SHA-1, done) in one streaming pass.

The output is deterministic: the same disk, case fields and options give the same bytes (times
come from the case, never the clock; the set GUID is derived), so an export recorded under custody
can be re-derived and compared byte for byte by ``verify``. Every segment holds the same number of
chunks, chosen so that a segment never exceeds the segment size even when nothing compresses; a
segment therefore depends only on its own chunks (and the last on the whole media's hashes).

Under custody, :func:`export_e01_into` writes each segment as a derived artifact of kind "e01"
(vmforensics.custody.derived) into ``derived/e01/`` of a sealed evidence directory.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import platform
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody import ewf_layout as ewf
from vmforensics.custody.derived import DerivedResult, Sink, derive
from vmforensics.custody.models import Manifest
from vmforensics.errors import EvidenceError, UsageError
from vmforensics.images.base import DiskImage
from vmforensics.progress import Progress, ProgressOption

KIND = "e01"
MIB = 1 << 20
DEFAULT_SEGMENT_SIZE = 1500 * MIB
MIN_SEGMENT_SIZE = 1 * MIB
#: chunks per sectors/table/table2 group: bounds what is held before a group is written (16 MiB)
GROUP = 512
#: chunks read (and checked for zeros) at once
BLOCK_CHUNKS = 32
_WORKERS = min(4, os.cpu_count() or 1)
_ZERO_BLOCK = bytes(BLOCK_CHUNKS * ewf.CHUNK_SIZE)
_CONTROL = {c: " " for c in range(32)}
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vmforensics:e01-export")


@attrs.frozen
class E01Case:
    """What the header sections say: the case fields, the acquisition time and the software.

    ``acquired`` (POSIX seconds, UTC) is written as both acquisition and system date; take it from
    the manifest so that the output does not depend on when the export ran.
    """

    case_number: str
    examiner: str
    evidence_number: str = ""
    description: str = ""
    notes: str = ""
    acquired: int = attrs.field(
        default=0, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.lt(1 << 32))
    )
    model: str = ""
    serial: str = ""
    software: str = attrs.field(factory=lambda: __import__("vmforensics").__version__[:11])
    platform: str = attrs.field(factory=lambda: platform.system()[:23])
    guid: str = attrs.field(
        factory=lambda: str(uuid.uuid4()), validator=lambda _, __, value: uuid.UUID(value)
    )

    @classmethod
    def from_manifest(cls, manifest: Manifest, disk: str) -> E01Case:
        """The case fields of a sealed acquisition; the GUID is derived from its id and the disk."""
        import datetime as dt

        when = manifest.finished or manifest.started
        acquired = int(dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()) if when else 0
        vm = manifest.source.vm
        return cls(
            case_number=manifest.case.case_id,
            examiner=manifest.case.examiner,
            evidence_number=manifest.case.evidence_id or "",
            description=manifest.case.description or f"{vm.name if vm else 'disk'}: {disk}",
            notes=manifest.case.notes or f"vmforensics acquisition {manifest.acquisition_id}",
            acquired=acquired,
            model=f"{manifest.source.kind} virtual disk",
            software=manifest.tool.version[:11],
            platform=(manifest.examiner_host.os or "")[:23],
            guid=str(uuid.uuid5(_ID_NAMESPACE, f"{manifest.acquisition_id}\0{disk}")),
        )

    def header2(self) -> bytes:
        """The header2 payload: UTF-16LE text with a byte order mark, zlib compressed."""
        values = {
            "a": self.description,
            "c": self.case_number,
            "n": self.evidence_number,
            "e": self.examiner,
            "t": self.notes,
            "md": self.model,
            "sn": self.serial,
            "av": self.software,
            "ov": self.platform,
            "m": str(self.acquired),
            "u": str(self.acquired),
            "p": "0",
            "dc": "",
        }
        text = _category(ewf.HEADER2_MAIN, values, "\n", count=3) + ewf.HEADER2_TAIL
        return zlib.compress(b"\xff\xfe" + text.encode("utf-16-le", errors="replace"), 9)

    def header(self) -> bytes:
        """The header payload: ASCII text (CR LF lines), zlib compressed; dates as "Y M D h m s" UTC."""
        import time

        stamp = time.gmtime(self.acquired)
        date = f"{stamp.tm_year} {stamp.tm_mon} {stamp.tm_mday} {stamp.tm_hour} {stamp.tm_min} {stamp.tm_sec}"
        values = {
            "c": self.case_number,
            "n": self.evidence_number,
            "a": self.description,
            "e": self.examiner,
            "t": self.notes,
            "av": self.software,
            "ov": self.platform,
            "m": date,
            "u": date,
            "p": "0",
        }
        text = _category(ewf.HEADER_MAIN, values, "\r\n", count=1)
        return zlib.compress(text.encode("ascii", errors="replace"), 9)


def _category(names: Sequence[str], values: Mapping[str, str], eol: str, *, count: int) -> str:
    # the text is tab- and line-separated: a tab or line break inside a value would shift fields
    row = "\t".join(str(values[name]).translate(_CONTROL) for name in names)
    return eol.join((str(count), "main", "\t".join(names), row, "", ""))


@attrs.frozen
class Layout:
    """How the media's chunks are spread over segment files (every segment but the last full)."""

    media_size: int
    chunks_per_segment: int

    @property
    def chunks(self) -> int:
        return -(-self.media_size // ewf.CHUNK_SIZE)

    @property
    def segments(self) -> int:
        return max(1, -(-self.chunks // self.chunks_per_segment))

    def span(self, segment: int) -> tuple[int, int]:
        """(first chunk, chunk count) of segment ``segment`` (1-based)."""
        if not 1 <= segment <= self.segments:
            raise ValueError(f"segment {segment} is not one of 1..{self.segments}")
        first = (segment - 1) * self.chunks_per_segment
        return first, min(self.chunks_per_segment, self.chunks - first)


def plan(media_size: int, segment_size: int, case: E01Case) -> Layout:
    """The layout whose segments never exceed ``segment_size``, even if no chunk compresses."""
    if media_size % ewf.SECTOR_SIZE:
        raise UsageError(
            f"the disk is {media_size} bytes, not a whole number of {ewf.SECTOR_SIZE}-byte sectors; "
            "EWF cannot hold it without changing it"
        )
    if segment_size < MIN_SEGMENT_SIZE:
        raise UsageError(f"a segment size of {segment_size} bytes is too small (at least {MIN_SEGMENT_SIZE})")
    first_head = 13 + 2 * (ewf.SECTION_SIZE + len(case.header2())) + ewf.SECTION_SIZE + len(case.header())
    head = max(first_head + ewf.SECTION_SIZE + ewf.VOLUME_SIZE, 13 + ewf.SECTION_SIZE + ewf.VOLUME_SIZE)
    tail = 4 * ewf.SECTION_SIZE + ewf.VOLUME_SIZE + ewf.DIGEST_SIZE + ewf.HASH_SIZE
    group = ewf.SECTION_SIZE + 2 * (ewf.SECTION_SIZE + ewf.TABLE_HEADER_SIZE + 4)

    def worst(chunks: int) -> int:
        return head + tail + chunks * (ewf.CHUNK_SIZE + 4 + 8) + -(-chunks // GROUP) * group

    per_segment = max(1, (segment_size - head - tail) // (ewf.CHUNK_SIZE + 4 + 8 + 1))
    while per_segment > 1 and worst(per_segment) > segment_size:
        per_segment -= 1
    layout = Layout(media_size, per_segment)
    if layout.segments > len(_EXTENSIONS):
        raise UsageError(
            f"{layout.segments} segments are more than EWF can name; choose a larger segment size"
        )
    return layout


def _extensions() -> list[str]:
    names = [f"E{n:02d}" for n in range(1, 100)]
    for first in range(ord("E"), ord("Z") + 1):
        names += [f"{chr(first)}{chr(a)}{chr(b)}" for a in range(65, 91) for b in range(65, 91)]
    return names


_EXTENSIONS = _extensions()


def segment_names(first: str, count: int) -> list[str]:
    """``web01.E01`` -> ``web01.E01``, ``web01.E02``, ... (then .EAA ... .ZZZ after .E99); the
    extensions keep the case of the first (``web01.e01`` -> ``web01.e02``)."""
    stem, dot, suffix = first.rpartition(".")
    if not dot or suffix.upper() != "E01":
        raise UsageError(f"{first!r}: the first segment of an E01 export must end in .E01")
    return [f"{stem}.{ext if suffix.isupper() else ext.lower()}" for ext in _EXTENSIONS[:count]]


@attrs.frozen
class SegmentFile:
    path: str
    size: int
    sha256: str


@attrs.frozen
class E01Export:
    """What :func:`export_e01` wrote: the segment files and the media's hashes."""

    segments: tuple[SegmentFile, ...]
    media_size: int
    md5: str
    sha1: str
    sha256: str  # of the media (the disk's raw bytes), as `qemu-img convert -O raw | sha256sum`

    def __repr__(self) -> str:
        return f"E01Export({len(self.segments)} segment(s), {self.media_size} bytes, md5 {self.md5})"


class _Digests:
    """MD5 and SHA-1 (the hash and digest sections) and SHA-256 of the media, in order. The three
    run side by side on their own threads (hashlib releases the GIL), apart from the compression
    queue; one block is in flight at a time. Close it to end the threads."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(3, thread_name_prefix="e01-hash")
        self.hashes = (hashlib.md5(), hashlib.sha1(), hashlib.sha256())
        self.pending: list[Future[None]] = []

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def update(self, data: bytes | memoryview) -> None:
        self._drain()
        self.pending = [self.pool.submit(h.update, data) for h in self.hashes]

    def _drain(self) -> None:
        for future in self.pending:
            future.result()
        self.pending = []

    def md5_sha1(self) -> tuple[bytes, bytes]:
        self._drain()
        return self.hashes[0].digest(), self.hashes[1].digest()

    def facts(self) -> dict[str, str]:
        self._drain()
        return dict(zip(("md5", "sha1", "sha256"), (h.hexdigest() for h in self.hashes), strict=True))


def _store(chunk: bytes | memoryview, level: int) -> tuple[bytes, bool]:
    """A chunk as stored: a zlib stream, or (no compression, or no gain) its bytes and Adler-32."""
    if level:
        packed = zlib.compress(chunk, level)
        if len(packed) <= len(chunk):
            return packed, True
    return bytes(chunk) + ewf.adler32(chunk), False


_ZERO_CHUNKS: dict[int, tuple[bytes, bool]] = {}


def _zero_chunk(level: int) -> tuple[bytes, bool]:
    if level not in _ZERO_CHUNKS:
        _ZERO_CHUNKS[level] = _store(bytes(ewf.CHUNK_SIZE), level)
    return _ZERO_CHUNKS[level]


def _stored_chunks(
    image: DiskImage,
    first: int,
    count: int,
    level: int,
    pool: ThreadPoolExecutor,
    digests: _Digests | None,
    progress: Progress | None,
) -> Iterator[tuple[bytes, bool]]:
    """Chunks ``first .. first+count`` as stored, in order; compressed on ``pool`` with a bounded
    number of blocks in flight, so memory stays flat whatever the disk's size."""
    pending: collections.deque[list[Future[tuple[bytes, bool]] | tuple[bytes, bool]]] = collections.deque()
    end = min(image.size, (first + count) * ewf.CHUNK_SIZE)
    offset = first * ewf.CHUNK_SIZE
    while offset < end or pending:
        while offset < end and len(pending) < 2 * _WORKERS + 2:
            length = min(BLOCK_CHUNKS * ewf.CHUNK_SIZE, end - offset)
            data = image.read_at(offset, length)
            if len(data) != length:
                raise EvidenceError(
                    f"{image.path}: short read at offset {offset} ({len(data)} of {length} bytes)"
                )
            if digests is not None:
                digests.update(data)
            if progress is not None:
                progress.advance(length)
            view = memoryview(data)
            block: list[Future[tuple[bytes, bool]] | tuple[bytes, bool]] = []
            zeros = data == _ZERO_BLOCK[:length]
            for start in range(0, length, ewf.CHUNK_SIZE):
                chunk = view[start : start + ewf.CHUNK_SIZE]
                if zeros and len(chunk) == ewf.CHUNK_SIZE:
                    block.append(_zero_chunk(level))
                else:
                    block.append(pool.submit(_store, chunk, level))
            pending.append(block)
            offset += length
        for item in pending.popleft():
            yield item.result() if isinstance(item, Future) else item


def _hash_before(image: DiskImage, end: int, digests: _Digests) -> None:
    """The media's bytes before ``end`` into ``digests`` (the last segment's hashes cover all)."""
    for offset in range(0, end, len(_ZERO_BLOCK)):
        digests.update(image.read_at(offset, min(len(_ZERO_BLOCK), end - offset)))


def _write_segment(
    sink: Sink,
    layout: Layout,
    number: int,
    case: E01Case,
    compression: str,
    chunks: Iterable[tuple[bytes, bool]],
    digests: _Digests | None,
) -> None:
    """Segment file ``number`` into ``sink``; ``digests`` (the last segment only) has seen the
    media up to this segment's end once ``chunks`` is exhausted."""
    level, _ = ewf.COMPRESSION[compression]
    count = layout.span(number)[1]
    volume = ewf.volume(
        chunks=layout.chunks,
        sectors=layout.media_size // ewf.SECTOR_SIZE,
        compression_level=level,
        guid=uuid.UUID(case.guid).bytes_le,
    )

    def put(kind: bytes, payload: bytes = b"", *, last: bool = False) -> None:
        sink.write(ewf.section(kind, sink.position, ewf.SECTION_SIZE + len(payload), last=last))
        sink.write(payload)

    sink.write(ewf.file_header(number))
    if number == 1:
        header2 = case.header2()
        put(b"header2", header2)
        put(b"header2", header2)
        put(b"header", case.header())
        put(b"volume", volume)
    else:
        put(b"data", volume)
    source = iter(chunks)
    left = count
    while left:
        group = [next(source) for _ in range(min(GROUP, left))]
        left -= len(group)
        base = sink.position
        entries, relative = [], ewf.SECTION_SIZE
        for stored, compressed in group:
            entries.append(relative | (ewf.COMPRESSED if compressed else 0))
            relative += len(stored)
        sink.write(ewf.section(b"sectors", base, relative))
        for stored, _ in group:
            sink.write(stored)
        table = ewf.table(base, entries)
        put(b"table", table)
        put(b"table2", table)
    if number < layout.segments:
        put(b"next", last=True)
        return
    if digests is None:
        raise ValueError("the last segment needs the media's digests")
    if layout.segments == 1:
        put(b"data", volume)
    md5, sha1 = digests.md5_sha1()
    put(b"digest", ewf.digest(md5, sha1))
    put(b"hash", ewf.hash_(md5))
    put(b"done", last=True)


def _open_disk(disk: str | os.PathLike[str] | DiskImage) -> tuple[DiskImage, bool]:
    if isinstance(disk, DiskImage):
        return disk, False
    from vmforensics.images import open_image

    return open_image(disk), True


def export_e01(
    disk: str | os.PathLike[str] | DiskImage,
    path: str | os.PathLike[str],
    *,
    case: E01Case,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    compression: str = "fast",
    progress: ProgressOption = True,
) -> E01Export:
    """Write ``disk`` (a path any reader opens, or an open image) as E01 segment files, the first
    at ``path`` (which must end in .E01). Files are created exclusively, never overwritten; after
    a failure the segments this call created are removed."""
    if compression not in ewf.COMPRESSION:
        raise UsageError(f"unknown compression {compression!r} (choose from {', '.join(ewf.COMPRESSION)})")
    image, owned = _open_disk(disk)
    created: list[Path] = []
    try:
        layout = plan(image.size, segment_size, case)
        names = [Path(name) for name in segment_names(os.fspath(path), layout.segments)]
        bar = Progress(progress, total=image.size, description="export e01") if progress else None
        written = []
        try:
            with (
                ThreadPoolExecutor(_WORKERS, thread_name_prefix="e01") as pool,
                contextlib.closing(_Digests()) as digests,
            ):
                for number, name in enumerate(names, 1):
                    try:
                        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    except FileExistsError as exc:
                        raise UsageError(f"{name} already exists; an export never overwrites a file") from exc
                    created.append(name)
                    try:
                        if bar is not None:
                            bar.start_file(name.name, layout.span(number)[1] * ewf.CHUNK_SIZE)
                        sink = Sink(fd)
                        chunks = _stored_chunks(
                            image, *layout.span(number), _level(compression), pool, digests, bar
                        )
                        _write_segment(sink, layout, number, case, compression, chunks, digests)
                        sink.finish()
                    finally:
                        os.close(fd)
                    written.append(SegmentFile(str(name), sink.position, sink.sha256))
                facts = digests.facts()
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        for name in created:
            name.unlink(missing_ok=True)
        raise
    finally:
        if owned:
            image.close()
    return E01Export(tuple(written), image.size, facts["md5"], facts["sha1"], facts["sha256"])


def _level(compression: str) -> int:
    return ewf.COMPRESSION[compression][1]


# --- under custody: one derived artifact per segment ---------------------------------------------


def produce(inputs: Sequence[Path], params: Mapping[str, Any], sink: Sink) -> dict[str, Any]:
    """The derived-artifact producer of kind "e01" (PRODUCERS): segment ``params["segment"]`` of
    the export of ``inputs[0]`` (a disk image) with the recorded case fields and layout."""
    from vmforensics.images import open_image

    case, compression, number, per_segment = _checked(params)
    with open_image(inputs[0]) as image:
        if image.size != params["media_size"]:
            raise EvidenceError(
                f"{inputs[0]} reads as {image.size} bytes, not the recorded {params['media_size']}"
            )
        layout = Layout(image.size, per_segment)
        if layout.segments != params["segments"] or not 1 <= number <= layout.segments:
            raise EvidenceError(
                f"the recorded layout ({per_segment} chunks per segment) gives {layout.segments} segments, "
                f"not segment {number} of {params['segments']}"
            )
        first, count = layout.span(number)
        last = number == layout.segments
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="e01") as pool, contextlib.ExitStack() as stack:
            digests = stack.enter_context(contextlib.closing(_Digests())) if last else None
            if digests is not None:
                _hash_before(image, first * ewf.CHUNK_SIZE, digests)
            chunks = _stored_chunks(image, first, count, _level(compression), pool, digests, None)
            _write_segment(sink, layout, number, case, compression, chunks, digests)
            media = digests.facts() if digests is not None else None
    facts: dict[str, Any] = {"segment": number, "segments": layout.segments, "chunks": [first, count]}
    if media is not None:
        facts["media"] = {"size": image.size, **media}
    facts["zlib"] = zlib.ZLIB_RUNTIME_VERSION
    return facts


def _checked(params: Mapping[str, Any]) -> tuple[E01Case, str, int, int]:
    """The recorded conversion, refused unless every field has its type (a ledger after the seal
    is not signed: verify re-derives from what it says, so it is read as hostile)."""
    case, compression = params.get("case"), params.get("compression")
    numbers = [params.get(key) for key in ("segment", "segments", "chunks_per_segment", "media_size")]
    fields = {f.name for f in attrs.fields(E01Case)}
    if (
        not isinstance(case, dict)
        or set(case) != fields
        or not all(isinstance(case[name], int if name == "acquired" else str) for name in fields)
        or compression not in ewf.COMPRESSION
        or not all(type(n) is int and n >= 1 for n in numbers)
    ):
        raise EvidenceError("the recorded E01 conversion is malformed; nothing can be re-derived from it")
    try:
        recorded = E01Case(**case)
    except ValueError as exc:
        raise EvidenceError(f"the recorded E01 case fields are refused: {exc}") from exc
    return recorded, str(compression), int(numbers[0]), int(numbers[2])


def export_e01_into(
    root: str | os.PathLike[str],
    disk: str,
    *,
    name: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    compression: str = "fast",
    progress: ProgressOption = True,
) -> list[DerivedResult]:
    """Export the sealed disk ``disk`` (its local path in the manifest) of the evidence directory
    ``root`` as E01 under ``derived/e01/``: one "derived" ledger event per segment, re-derived by
    ``verify``. Stops at the first failed segment (recorded, as every failure is). Progress moves
    once per segment."""
    from vmforensics.custody.export import load_manifest
    from vmforensics.images import open_image

    root = Path(root)
    if compression not in ewf.COMPRESSION:
        raise UsageError(f"unknown compression {compression!r} (choose from {', '.join(ewf.COMPRESSION)})")
    manifest, _ = load_manifest(root)
    listed = {f.local_path for f in manifest.files}
    if disk not in listed:
        raise UsageError(
            f"{disk} is not a file of the sealed acquisition in {root} (give its path in the manifest)"
        )
    with open_image(root / disk) as image:
        size = image.size
        files = [layer_file for layer in image.info().chain for layer_file in layer.files]
    inputs = [disk] + [p for p in dict.fromkeys(_relative(root, f) for f in files) if p != disk]
    case = E01Case.from_manifest(manifest, disk)
    layout = plan(size, segment_size, case)
    first = name or f"{Path(disk).stem}.E01"
    if "/" in first or "\\" in first or first.startswith("."):
        raise UsageError(f"{first!r}: give a file name (it is written under derived/e01/)")
    params = {
        "format": "e01",
        "case": attrs.asdict(case),
        "compression": compression,
        "segment_size": segment_size,
        "media_size": size,
        "chunks_per_segment": layout.chunks_per_segment,
        "segments": layout.segments,
    }
    results = []
    bar = Progress(progress, total=size, description="export e01") if progress else None
    try:
        if bar is not None:
            bar.start_file(first, size)
        for number, output in enumerate(segment_names(first, layout.segments), 1):
            result = derive(root, manifest, KIND, inputs, {**params, "segment": number}, f"e01/{output}")
            results.append(result)
            if not result.ok:
                break
            if bar is not None:
                bar.advance(min(size, layout.span(number)[1] * ewf.CHUNK_SIZE))
    finally:
        if bar is not None:
            bar.close()
    return results


def _relative(root: Path, path: str) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError as exc:
        raise EvidenceError(f"{path} is outside the evidence directory; nothing is derived from it") from exc
