"""VDI reader: VirtualBox dynamic, fixed and differencing images (header versions 0.0 and 1.1).

A VDI file is a pre-header and header, a block map of 32-bit entries and the blocks. An entry is
the index of the stored block, or "free" (zeros in a base image, the parent's bytes in a
differencing one) or "zero". A differencing image names its parent only by UUID (``uuidLinkage``),
so the parent is looked for where VirtualBox keeps disks: ``{uuid}.vdi`` beside the child (the
Snapshots folder), the disks a ``.vbox`` registry beside it or one folder up names, and the
``.vdi`` files in those two folders; the one whose UUID matches is the parent.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import uuid
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from vmforensics.confine import Confinement
from vmforensics.errors import ImageFormatError
from vmforensics.images import safe_xml
from vmforensics.images.base import DiskImage, ImageSource, Kind, Resolver, Segment, data
from vmforensics.images.paged import PagedTable
from vmforensics.images.vdi_layout import (
    BLOCK_FREE,
    BLOCK_ZERO,
    HEADER_0,
    HEADER_1,
    PREHEADER,
    SECTOR,
    SIGNATURE,
    SIGNATURE_OFFSET,
    Header,
    ImageType,
    decode_header,
)

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 1 << 28
#: How many .vdi files beside the child (and one folder up) are examined for the parent's UUID.
MAX_CANDIDATES = 256
#: A folder listed while looking for a parent yields at most this many names.
MAX_LISTED = 4096
#: A .vbox registry larger than this is not read while looking for a parent.
MAX_REGISTRY_BYTES = 4 << 20

_SUBTYPES = {
    ImageType.NORMAL: "dynamic",
    ImageType.FIXED: "fixed",
    ImageType.UNDO: "undo",
    ImageType.DIFF: "differencing",
}


def read_header(source: ImageSource) -> Header:
    """Check the signature and version and decode the header; ImageFormatError otherwise."""
    pre = source.read_at(0, PREHEADER.size)
    _, signature, version = PREHEADER.unpack(pre)
    if signature != SIGNATURE:
        raise ImageFormatError(
            f"no VDI signature (0x{SIGNATURE:08x}); found 0x{signature:08x}",
            offset=SIGNATURE_OFFSET,
            path=source.name,
        )
    major = version >> 16
    if major not in (0, 1):
        raise ImageFormatError(
            f"unsupported VDI header version {major}.{version & 0xFFFF}",
            offset=SIGNATURE_OFFSET + 4,
            path=source.name,
        )
    size = HEADER_0.size if major == 0 else HEADER_1.size
    return decode_header(pre + source.read_at(PREHEADER.size, size))


def names_beside(resolver: Resolver, path: str, up: int) -> list[str]:
    """File names in ``path``'s folder (``up`` folders higher), relative to ``path``'s folder.

    Only a local, confined resolver can list; opening a name still goes through the resolver,
    which refuses what lies outside its roots, behind a symbolic link or is not a regular file.
    """
    if not isinstance(resolver.confinement, Confinement):
        return []
    folder = os.path.dirname(path) or "."
    for _ in range(up):
        folder = os.path.join(folder, os.pardir)
    try:
        with os.scandir(folder) as entries:
            names = sorted(
                e.name for e in itertools.islice(entries, MAX_LISTED) if e.is_file(follow_symlinks=False)
            )
    except OSError:
        return []
    return [posixpath.join(*[os.pardir] * up, name) if up else name for name in names]


class VdiImage(DiskImage):
    """One VDI file (and, for a differencing image, its parent chain)."""

    format_name = "vdi"

    def __init__(self, source: ImageSource, resolver: Resolver):
        header = read_header(source)
        self.header = header
        self.source = source
        where = PREHEADER.size
        if header.version >> 16 == 1 and header.header_size < HEADER_1.size:
            raise ImageFormatError(
                f"VDI header size {header.header_size} is too small", offset=where, path=source.name
            )
        if header.image_type not in iter(ImageType):
            raise ImageFormatError(
                f"unknown VDI image type {header.image_type}", offset=where + 4, path=source.name
            )
        self.image_type = ImageType(header.image_type)
        block = header.block_size
        if not (SECTOR <= block <= MAX_BLOCK_SIZE and block & (block - 1) == 0):
            raise ImageFormatError(f"invalid VDI block size {block}", offset=where + 304, path=source.name)
        if header.block_extra > MAX_BLOCK_SIZE or header.block_extra % SECTOR:
            raise ImageFormatError(
                f"invalid VDI extra block data size {header.block_extra}",
                offset=where + 308,
                path=source.name,
            )
        super().__init__(header.disk_size, path=source.name, sources=[source], strict=resolver.strict)
        self.block_size = block
        self._stride = block + header.block_extra
        self._first = header.data_offset + header.block_extra
        # the map's length follows from the disk size (256 MiB for 64 TiB of 1 MiB blocks): it
        # must lie within the file, and is read a page at a time
        self._map = PagedTable(source, header.blocks_offset, header.blocks, width=4, what="block map")
        needed = -(-header.disk_size // block)
        if header.blocks < needed:
            self.warn(
                f"block map has {header.blocks} entries but the disk needs {needed}; the rest reads as unallocated",
                offset=where + 312,
            )
        self._absent = Kind.PARENT if self.image_type in (ImageType.DIFF, ImageType.UNDO) else Kind.ZERO
        self.parent_path: str | None = None
        if self._absent is Kind.PARENT:
            self._open_parent(resolver)
        elif self._is_linear():
            self._linear, self._linear_offset = source, self._first

    def _is_linear(self) -> bool:
        """Fixed images store block i at index i: the whole disk is one run of the file."""
        blocks = -(-self.size // self.block_size)
        if self.header.block_extra or len(self._map) < blocks or self._first + self.size > self.source.size:
            return False
        return all(
            page == array("I", range(first, first + len(page))) for first, page in self._map.pages(0, blocks)
        )  # stops at the first page that differs

    # --- the parent ---------------------------------------------------------------------------

    def _parent_candidates(self, resolver: Resolver) -> Iterator[str]:
        linkage = self.header.uuid_linkage
        yield f"{{{linkage}}}.vdi"
        for up in (0, 1):
            for name in names_beside(resolver, self.path, up):
                if name.lower().endswith((".vbox", ".vbox-prev")):
                    yield from self._registry_locations(resolver, name, linkage)
        seen = 0
        for up in (0, 1):
            for name in names_beside(resolver, self.path, up):
                if name.lower().endswith(".vdi") and seen < MAX_CANDIDATES:
                    seen += 1
                    yield name

    def _registry_locations(self, resolver: Resolver, name: str, wanted: uuid.UUID) -> list[str]:
        """Where a .vbox registry says the disk ``wanted`` is (relative to this image)."""
        try:
            registry = resolver.open_source(name, self.path, what="VirtualBox registry")
        except ImageFormatError:
            return []
        try:
            if registry.size > MAX_REGISTRY_BYTES:
                self.warn(f"VirtualBox registry {registry.name} is {registry.size} bytes; not read")
                return []
            root = safe_xml.parse(
                registry.read_at(0, registry.size), path=registry.name, what="VirtualBox registry"
            )
        except ImageFormatError as exc:
            self.warn(f"VirtualBox registry {registry.name} unreadable: {exc.reason}")
            return []
        finally:
            registry.close()
        out = []
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] != "HardDisk":
                continue
            try:
                found = uuid.UUID(element.get("uuid", "").strip("{}"))
            except ValueError:
                continue
            location = element.get("location", "")
            if found == wanted and location:
                folder = posixpath.dirname(
                    posixpath.relpath(registry.name, posixpath.dirname(self.path) or ".")
                )
                out.append(posixpath.join(folder, location.replace("\\", "/")) if folder else location)
        return out

    def _open_parent(self, resolver: Resolver) -> None:
        linkage = self.header.uuid_linkage
        tried: list[str] = []
        for name in self._parent_candidates(resolver):
            if name in tried:
                continue
            tried.append(name)
            try:
                candidate = resolver.open_source(name, self.path, what="parent image")
            except ImageFormatError:
                continue
            try:
                if posixpath.normpath(candidate.name) == posixpath.normpath(self.path):
                    continue
                header = read_header(candidate)
            except ImageFormatError:
                continue
            finally:
                candidate.close()
            if header.uuid_create != linkage:
                continue
            self.parent_path = candidate.name
            self.parent = resolver.open_parent(name, self.path)  # the name as found, relative to this image
            if header.uuid_modify != self.header.uuid_parent_modify and self.header.uuid_parent_modify.int:
                self.warn(
                    f"parent {candidate.name} was modified ({header.uuid_modify}) after this image was made "
                    f"from it ({self.header.uuid_parent_modify})",
                    offset=PREHEADER.size + 368,
                )
            return
        above = any(name.startswith("../") for name in tried)
        hint = (
            "; a parent in the folder above (VirtualBox keeps snapshots in Snapshots/) is read only when "
            "open_image is given allowed_roots= (or --allow-root) naming the VM's folder"
            if above
            else "; put the parent disk, or the VM's .vbox, beside it"
        )
        raise ImageFormatError(
            f"differencing VDI needs its parent with UUID {linkage}, which was not found "
            f"(looked at: {', '.join(tried) or 'nothing'}){hint}",
            offset=PREHEADER.size + 352 if self.header.version >> 16 else PREHEADER.size + 332,
            path=self.path,
        )

    # --- reading ------------------------------------------------------------------------------

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int] | None:
        block, within = divmod(offset, self.block_size)
        if within + length > self.block_size or block >= len(self._map):
            return None
        entry = self._map[block]
        if entry >= BLOCK_ZERO:
            return None
        return self.source, self._first + entry * self._stride + within

    def _segments(self, offset: int, length: int) -> Iterator[Segment]:
        table, entries, block_size, absent = self._map, len(self._map), self.block_size, self._absent
        pending_kind: Kind | None = None
        pending = 0
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, block_size)
            count = min(block_size - within, end - pos)
            pos += count
            entry = table[block] if block < entries else BLOCK_FREE
            if entry < BLOCK_ZERO:
                if pending:
                    yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                    pending = 0
                yield data(count, self.source, self._first + entry * self._stride + within)
                continue
            kind = Kind.ZERO if entry == BLOCK_ZERO else absent
            if pending and kind is not pending_kind:
                yield Segment(pending, pending_kind)  # type: ignore[arg-type]
                pending = 0
            pending_kind = kind
            pending += count
        if pending:
            yield Segment(pending, pending_kind)  # type: ignore[arg-type]

    def _allocated(self) -> Iterable[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        blocks = min(len(self._map), -(-self.size // self.block_size))
        stored = (
            block
            for first, page in self._map.pages(0, blocks, maybe_used=_may_hold_stored)
            for block, entry in enumerate(page, first)
            if entry < BLOCK_ZERO and block < blocks
        )
        for block in stored:
            start = block * self.block_size
            stop = min(start + self.block_size, self.size)
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], stop - ranges[-1][0])
            else:
                ranges.append((start, stop - start))
        return ranges

    def _describe(self) -> dict[str, Any]:
        h = self.header
        identifiers = {"uuid": str(h.uuid_create), "modification_uuid": str(h.uuid_modify)}
        if self._absent is Kind.PARENT:
            identifiers["parent_uuid"] = str(h.uuid_linkage)
            identifiers["parent_modification_uuid"] = str(h.uuid_parent_modify)
        details: dict[str, Any] = {
            "version": f"{h.version >> 16}.{h.version & 0xFFFF}",
            "file_info": h.file_info,
            "comment": h.comment,
            "block_size": h.block_size,
            "block_extra": h.block_extra,
            "blocks": h.blocks,
            "blocks_allocated": h.blocks_allocated,
            "blocks_offset": h.blocks_offset,
            "data_offset": h.data_offset,
        }
        if self.parent_path is not None:
            details["parent_path"] = self.parent_path
        return {"subtype": _SUBTYPES[self.image_type], "identifiers": identifiers, "details": details}


def _may_hold_stored(raw: bytes) -> bool:
    """Whether a page of the (little-endian) block map has an entry other than free or zero."""
    return bool(raw[1::4].strip(b"\xff") or raw[2::4].strip(b"\xff") or raw[3::4].strip(b"\xff")) or bool(
        raw[0::4].translate(None, b"\xfe\xff")
    )


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return VdiImage(source, resolver)
