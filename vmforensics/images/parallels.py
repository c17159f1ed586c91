"""Parallels reader: expanding (.hds, "WithoutFreeSpace"/"WithouFreSpacExt") and plain images, and
the DiskDescriptor.xml of a .hdd bundle with its split parts and snapshots.

An expanding image is a 64-byte header, a block allocation table (BAT) of 32-bit entries (0: not
in this file) and clusters. A bundle's descriptor divides the disk into storages (split parts,
each a sector range) and names, for every snapshot, one image file per storage; snapshot N's
layer reads what its images do not hold from snapshot N-1's layer. Opened through the descriptor,
each snapshot of the chain is one layer here, the top one first.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple
from xml.etree.ElementTree import Element

from vmforensics.errors import ImageFormatError
from vmforensics.images import safe_xml
from vmforensics.images.base import MAX_CHAIN_DEPTH, DiskImage, ImageSource, Kind, Resolver, Segment, data
from vmforensics.images.paged import PagedTable, not_all
from vmforensics.images.parallels_layout import (
    BAT_OFFSET,
    DEFAULT_TOP_GUID,
    DESCRIPTOR_NAME,
    HEADER,
    IN_USE,
    MAGIC_V1,
    MAGIC_V2,
    NULL_GUID,
    SECTOR,
    Header,
)

log = logging.getLogger(__name__)

MAX_CLUSTER_SIZE = 256 << 20
#: A descriptor splitting the disk into more parts than this is refused.
MAX_STORAGES = 4096
#: A bundle whose snapshot chain and storages name more files than this is refused (open files).
MAX_PARTS = 4096


class Expanding:
    """One expanding image file: its header and BAT, and where each cluster is stored."""

    def __init__(self, source: ImageSource):
        #: Inconsistencies found, as (message, offset), for the layer to report.
        self.notes: list[tuple[str, int | None]] = []
        header = Header.parse(source.read_at(0, HEADER.size))
        if header.magic not in (MAGIC_V1, MAGIC_V2):
            raise ImageFormatError("no Parallels signature ('WithoutFreeSpace')", offset=0, path=source.name)
        if not 0 < header.tracks * SECTOR <= MAX_CLUSTER_SIZE:
            raise ImageFormatError(
                f"invalid Parallels cluster size of {header.tracks} sectors", offset=28, path=source.name
            )
        self.header = header
        self.source = source
        self.cluster = header.tracks * SECTOR
        self.unit = header.entry_unit
        self.size = header.sectors * SECTOR
        # the BAT's length follows from the disk size (256 MiB for 64 TiB of 1 MiB clusters):
        # it must lie within the file, and is read a page at a time
        self.bat = PagedTable(source, BAT_OFFSET, header.bat_entries, width=4, what="BAT")
        needed = -(-self.size // self.cluster)
        if header.bat_entries < needed:
            self.notes.append(
                (
                    f"{source.name}: BAT has {header.bat_entries} entries but the disk needs {needed}; "
                    "the rest reads as unallocated",
                    32,
                )
            )
        if header.inuse == IN_USE:
            self.notes.append((f"{source.name}: image is marked in use (not closed cleanly)", 48))

    def stored(self, index: int) -> int | None:
        """File offset of cluster ``index``, or None when this file does not hold it."""
        entry = self.bat[index] if index < len(self.bat) else 0
        return entry * self.unit if entry else None

    def describe(self) -> dict[str, Any]:
        h = self.header
        return {
            "file": self.source.name,
            "type": "Compressed",
            "signature": h.magic.decode("ascii"),
            "version": h.version,
            "cluster_size": self.cluster,
            "bat_entries": h.bat_entries,
            "in_use": h.inuse == IN_USE,
            "format_extension_offset": h.ext_off,
        }


class Piece(NamedTuple):
    """A byte range of the disk and the file that holds it for one layer."""

    start: int
    end: int
    expanding: Expanding | None  # None: a plain image, the range's bytes as they are
    source: ImageSource
    file: str


class ParallelsImage(DiskImage):
    """One layer of a Parallels disk: an expanding file on its own, or one snapshot of a bundle."""

    format_name = "parallels"

    def __init__(
        self,
        pieces: list[Piece],
        size: int,
        *,
        path: str,
        resolver: Resolver,
        sources: list[ImageSource],
        parent: DiskImage | None = None,
        snapshot: str | None = None,
        subtype: str = "expanding",
        notes: Sequence[tuple[str, int | None]] = (),
    ):
        super().__init__(size, path=path, sources=sources, parent=parent, strict=resolver.strict)
        self.pieces = pieces
        self._starts = [p.start for p in pieces]
        self.snapshot = snapshot
        self.subtype = subtype
        self._absent = Kind.PARENT if parent is not None else Kind.ZERO
        for message, offset in notes:
            self.warn(message, offset=offset)

    def _piece(self, offset: int) -> Piece | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self.pieces[i].end:
            return self.pieces[i]
        return None

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        piece = self._piece(offset)
        if piece is None or offset + length > piece.end:
            return None
        within = offset - piece.start
        if piece.expanding is None:
            return piece.source, within
        index, inside = divmod(within, piece.expanding.cluster)
        if inside + length > piece.expanding.cluster:
            return None
        stored = piece.expanding.stored(index)
        return None if stored is None else (piece.source, stored + inside)

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, Kind, ImageSource | None, int]]:
        """(length, kind, source, file offset) for consecutive parts of the span."""
        pos, end = offset, offset + length
        while pos < end:
            piece = self._piece(pos)
            if piece is None:  # a gap no storage covers
                following = bisect.bisect_right(self._starts, pos)
                stop = min(end, self._starts[following] if following < len(self._starts) else end)
                yield stop - pos, Kind.ZERO, None, 0
                pos = stop
                continue
            stop = min(end, piece.end)
            if piece.expanding is None:
                yield stop - pos, Kind.DATA, piece.source, pos - piece.start
                pos = stop
                continue
            cluster = piece.expanding.cluster
            while pos < stop:
                index, inside = divmod(pos - piece.start, cluster)
                count = min(cluster - inside, stop - pos)
                stored = piece.expanding.stored(index)
                if stored is None:
                    yield count, self._absent, None, 0
                else:
                    yield count, Kind.DATA, piece.source, stored + inside
                pos += count

    def _segments(self, offset: int, length: int) -> Iterator[Segment]:
        pending_kind: Kind | None = None
        pending = 0
        for count, kind, source, at in self._runs(offset, length):
            if kind is Kind.DATA:
                if pending:
                    yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                    pending = 0
                assert source is not None
                yield data(count, source, at)
                continue
            if pending and kind is not pending_kind:
                yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                pending = 0
            pending_kind = kind
            pending += count
        if pending:
            yield Segment(pending, pending_kind)  # type: ignore[arg-type]

    def _allocated(self) -> Iterable[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []

        def add(start: int, stop: int) -> None:
            stop = min(stop, self.size)
            if start >= stop:
                return
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], stop - ranges[-1][0])
            else:
                ranges.append((start, stop - start))

        for piece in self.pieces:
            if piece.expanding is None:
                add(piece.start, piece.end)
                continue
            cluster = piece.expanding.cluster
            clusters = min(len(piece.expanding.bat), -(-(piece.end - piece.start) // cluster))
            for first, page in piece.expanding.bat.pages(0, clusters, maybe_used=_NOT_ALL_ZERO):
                for index, entry in enumerate(page, first):
                    if entry and index < clusters:
                        at = piece.start + index * cluster
                        add(at, min(at + cluster, piece.end))
        return ranges

    def _describe(self) -> dict[str, Any]:
        parts = []
        for piece in self.pieces:
            part = (
                piece.expanding.describe()
                if piece.expanding is not None
                else {"file": piece.file, "type": "Plain"}
            )
            parts.append({"start": piece.start, "end": piece.end, **part})
        details: dict[str, Any] = {"parts": parts}
        identifiers = {}
        if self.snapshot is not None:
            identifiers["snapshot_guid"] = self.snapshot
        return {"subtype": self.subtype, "identifiers": identifiers, "details": details}


# --- a single expanding file ------------------------------------------------------------------


def _open_single(source: ImageSource, resolver: Resolver) -> ParallelsImage:
    expanding = Expanding(source)
    notes = list(expanding.notes)
    try:
        beside = resolver.open_source(DESCRIPTOR_NAME, source.name, what="bundle descriptor")
    except ImageFormatError:
        pass
    else:
        beside.close()
        notes.append(
            (
                f"this file is one part of a Parallels bundle: open {beside.name} to read the disk with its "
                "snapshots and split parts (read alone, what it defers to its parent reads as zeros)",
                None,
            )
        )
    piece = Piece(0, expanding.size, expanding, source, source.name)
    return ParallelsImage(
        [piece], expanding.size, path=source.name, resolver=resolver, sources=[source], notes=notes
    )


# --- a bundle, through its DiskDescriptor.xml -------------------------------------------------


class Storage(NamedTuple):
    start: int  # sectors
    end: int
    images: dict[str, tuple[str, str]]  # snapshot GUID -> (Type, File)


def _guid(text: str | None, what: str, path: str) -> str:
    try:
        return "{" + str(uuid.UUID((text or "").strip().strip("{}"))) + "}"
    except ValueError:
        raise ImageFormatError(f"descriptor {what} {text!r} is not a GUID", path=path) from None


def _integer(element: Element, tag: str, path: str) -> int:
    text = element.findtext(tag)
    try:
        value = int((text or "").strip())
    except ValueError:
        raise ImageFormatError(f"descriptor <{tag}> {text!r} is not a number", path=path) from None
    if value < 0:
        raise ImageFormatError(f"descriptor <{tag}> {value} is negative", path=path)
    return value


def parse_descriptor(raw: bytes, path: str) -> tuple[list[Storage], dict[str, str], str | None, int | None]:
    """Storages (sorted, not overlapping), snapshot GUID -> parent GUID, the top GUID if named,
    and the disk size in sectors if given."""
    root = safe_xml.parse(raw, path=path, what="Parallels DiskDescriptor.xml")
    if root.tag != "Parallels_disk_image":
        raise ImageFormatError(f"descriptor root is <{root.tag}>, not <Parallels_disk_image>", path=path)
    storages: list[Storage] = []
    for element in root.iterfind("StorageData/Storage"):
        if len(storages) >= MAX_STORAGES:
            raise ImageFormatError(f"descriptor has more than {MAX_STORAGES} storages", path=path)
        images: dict[str, tuple[str, str]] = {}
        for image in element.iterfind("Image"):
            guid = _guid(image.findtext("GUID"), "image GUID", path)
            kind = (image.findtext("Type") or "").strip()
            name = (image.findtext("File") or "").strip()
            if kind not in ("Compressed", "Plain"):
                raise ImageFormatError(
                    f"descriptor image type {kind!r} is not Compressed or Plain", path=path
                )
            if not name:
                raise ImageFormatError(f"descriptor image {guid} names no file", path=path)
            images[guid] = (kind, name)
        start, end = _integer(element, "Start", path), _integer(element, "End", path)
        if end <= start:
            raise ImageFormatError(f"descriptor storage ends ({end}) before it starts ({start})", path=path)
        storages.append(Storage(start, end, images))
    if not storages:
        raise ImageFormatError("descriptor names no storage", path=path)
    storages.sort(key=lambda s: (s.start, s.end))
    for before, after in itertools.pairwise(storages):
        if after.start < before.end:
            raise ImageFormatError(f"descriptor storages overlap at sector {after.start}", path=path)
    shots: dict[str, str] = {}
    for shot in root.iterfind("Snapshots/Shot"):
        shots[_guid(shot.findtext("GUID"), "snapshot GUID", path)] = _guid(
            shot.findtext("ParentGUID"), "parent GUID", path
        )
    top_text = root.findtext("Snapshots/TopGUID")
    top = _guid(top_text, "TopGUID", path) if top_text and top_text.strip() else None
    size_text = root.findtext("Disk_Parameters/Disk_size")
    size = _integer(root, "Disk_Parameters/Disk_size", path) if size_text is not None else None
    return storages, shots, top, size


def _chain(shots: dict[str, str], top: str | None, path: str) -> list[str]:
    """Snapshot GUIDs from the top down to the base."""
    if top is None:
        if DEFAULT_TOP_GUID in shots or not shots:
            top = DEFAULT_TOP_GUID
        else:
            leaves = set(shots) - set(shots.values())
            if len(leaves) != 1:
                raise ImageFormatError(
                    f"descriptor names no TopGUID and {len(leaves)} snapshots are leaves", path=path
                )
            top = leaves.pop()
    chain = [top]
    while True:
        parent = shots.get(chain[-1], NULL_GUID) if shots else NULL_GUID
        if chain[-1] not in shots and shots:
            raise ImageFormatError(f"descriptor has no snapshot {chain[-1]}", path=path)
        if parent == NULL_GUID:
            return chain
        if parent in chain:
            raise ImageFormatError(f"descriptor snapshot chain loops back to {parent}", path=path)
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise ImageFormatError(f"descriptor snapshot chain deeper than {MAX_CHAIN_DEPTH}", path=path)
        chain.append(parent)


def _open_bundle(source: ImageSource, resolver: Resolver) -> ParallelsImage:
    path = source.name
    storages, shots, top, disk_sectors = parse_descriptor(source.read_at(0, source.size), path)
    chain = _chain(shots, top, path)
    if len(chain) * len(storages) > MAX_PARTS:
        raise ImageFormatError(
            f"descriptor needs {len(chain)} snapshots x {len(storages)} storages = "
            f"{len(chain) * len(storages)} files, more than the {MAX_PARTS} read",
            path=path,
        )
    size = storages[-1].end * SECTOR
    notes: list[tuple[str, int | None]] = []
    if disk_sectors is not None and disk_sectors * SECTOR != size:
        notes.append(
            (f"Disk_size is {disk_sectors} sectors but the storages end at {storages[-1].end}", None)
        )
    layer: ParallelsImage | None = None
    opened: list[ImageSource] = []
    try:
        for depth, guid in enumerate(reversed(chain)):
            is_top = depth == len(chain) - 1
            pieces: list[Piece] = []
            layer_sources: list[ImageSource] = [source] if is_top else []
            layer_notes = list(notes) if is_top else []
            for storage in storages:
                if guid not in storage.images:
                    raise ImageFormatError(
                        f"storage of sectors {storage.start}-{storage.end} has no image for snapshot {guid}",
                        path=path,
                    )
                kind, name = storage.images[guid]
                part = resolver.open_source(name, path, what=f"Parallels image of snapshot {guid}")
                opened.append(part)
                layer_sources.append(part)
                start, end = storage.start * SECTOR, storage.end * SECTOR
                expanding = None
                if kind == "Compressed":
                    expanding = Expanding(part)
                    layer_notes.extend(expanding.notes)
                    if expanding.size != end - start:
                        layer_notes.append(
                            (
                                f"{part.name} holds {expanding.size} bytes but its storage is {end - start}",
                                None,
                            )
                        )
                elif part.size < end - start:
                    layer_notes.append(
                        (f"plain image {part.name} is shorter than its storage (truncated?)", None)
                    )
                pieces.append(Piece(start, end, expanding, part, part.name))
            layer = ParallelsImage(
                pieces,
                size,
                path=path,
                resolver=resolver,
                sources=layer_sources,
                parent=layer,
                snapshot=guid,
                subtype="bundle",
                notes=layer_notes,
            )
            opened = []
    except BaseException:
        for part in opened:
            part.close()
        if layer is not None:
            layer.close()
        raise
    assert layer is not None
    return layer


_NOT_ALL_ZERO = not_all(0, 4)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    if source.read_at(0, min(source.size, 16)) in (MAGIC_V1, MAGIC_V2):
        return _open_single(source, resolver)
    return _open_bundle(source, resolver)
