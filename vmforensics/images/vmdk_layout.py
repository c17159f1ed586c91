"""VMDK on-disk structures: sparse (KDMV), COWD and SESparse headers, markers, text descriptors.

Only layouts and their parsing live here; vmdk.py holds the reading logic. References: libyal's
"VMWare Virtual Disk Format (VMDK)" notes, VMware's Virtual Disk Format 5.0, and QEMU's
block/vmdk.c for SESparse (documented nowhere official). All integers are little-endian; a sector
is 512 bytes.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from vmforensics.errors import ImageFormatError

SECTOR = 512

SPARSE_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SESPARSE_MAGIC = 0x00000000CAFEBABE
SESPARSE_VOLATILE_MAGIC = 0x00000000CAFECAFE
SESPARSE_VERSION = 0x0000000200000001

#: Sparse header flags.
FLAG_REDUNDANT_GD = 1 << 1
FLAG_ZEROED_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

COMPRESSION_DEFLATE = 1
GD_AT_END = 0xFFFFFFFFFFFFFFFF

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

#: No parent ("ffffffff") in a descriptor's parentCID.
NO_PARENT_CID = 0xFFFFFFFF

#: Grain table entries of a COWD extent (fixed by the format).
COWD_GT_ENTRIES = 4096

_SPARSE = struct.Struct("<4sIIQQQQIQQQB4sH")
_COWD = struct.Struct("<4sIIIIIII")
_SESPARSE = struct.Struct("<26Q")
_SESPARSE_VOLATILE = struct.Struct("<4Q")
MARKER = struct.Struct("<QII")
GRAIN_MARKER = struct.Struct("<QI")


class SparseHeader(NamedTuple):
    """The 512-byte header of a hosted sparse extent (also the streamOptimized footer)."""

    version: int
    flags: int
    capacity: int  # sectors
    grain_sectors: int
    descriptor_offset: int  # sectors
    descriptor_sectors: int
    gt_entries: int
    rgd_offset: int  # sectors
    gd_offset: int  # sectors, or GD_AT_END
    overhead: int  # sectors
    unclean: int
    compression: int

    @classmethod
    def parse(cls, raw: bytes, *, path: str, offset: int = 0) -> SparseHeader:
        _need(raw, _SPARSE, "sparse header", path, offset)
        (
            magic,
            version,
            flags,
            capacity,
            grain,
            desc_off,
            desc_size,
            gtes,
            rgd,
            gd,
            overhead,
            unclean,
            _newline_check,
            compression,
        ) = _SPARSE.unpack_from(raw)
        if magic != SPARSE_MAGIC:
            raise ImageFormatError(f"no KDMV sparse header magic (found {magic!r})", offset=offset, path=path)
        return cls(
            version,
            flags,
            capacity,
            grain,
            desc_off,
            desc_size,
            gtes,
            rgd,
            gd,
            overhead,
            unclean,
            compression,
        )

    @property
    def zeroed_grains(self) -> bool:
        return bool(self.flags & FLAG_ZEROED_GRAIN)

    @property
    def compressed(self) -> bool:
        return self.compression == COMPRESSION_DEFLATE or bool(self.flags & FLAG_COMPRESSED)

    @property
    def markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)


class CowdHeader(NamedTuple):
    """The 2048-byte header of an ESX COWD (vmfsSparse, ``-delta.vmdk``) extent."""

    version: int
    flags: int
    capacity: int  # sectors
    grain_sectors: int
    gd_offset: int  # sectors
    gd_entries: int
    next_free_sector: int

    @classmethod
    def parse(cls, raw: bytes, *, path: str) -> CowdHeader:
        _need(raw, _COWD, "COWD header", path)
        magic, version, flags, capacity, grain, gd_off, gd_entries, free = _COWD.unpack_from(raw)
        if magic != COWD_MAGIC:
            raise ImageFormatError(f"no COWD header magic (found {magic!r})", offset=0, path=path)
        return cls(version, flags, capacity, grain, gd_off, gd_entries, free)


class SesparseHeader(NamedTuple):
    """The constant header of an ESXi SESparse (``-sesparse.vmdk``) extent; sizes in sectors."""

    version: int
    capacity: int
    grain_sectors: int
    gt_sectors: int
    flags: int
    volatile_offset: int
    gd_offset: int
    gd_sectors: int
    gt_offset: int
    gt_area_sectors: int
    grains_offset: int
    grains_sectors: int

    @classmethod
    def parse(cls, raw: bytes, *, path: str) -> SesparseHeader:
        _need(raw, _SESPARSE, "SESparse header", path)
        f = _SESPARSE.unpack_from(raw)
        if f[0] != SESPARSE_MAGIC:
            raise ImageFormatError(f"no SESparse header magic (found 0x{f[0]:x})", offset=0, path=path)
        # magic, version, capacity, grain, gt size, flags, 4 reserved, volatile off/size,
        # journal header off/size, journal off/size, gd off/size, gts off/size, free bitmap off/size,
        # backmap off/size, grains off/size
        return cls(f[1], f[2], f[3], f[4], f[5], f[10], f[16], f[17], f[18], f[19], f[24], f[25])


def _need(raw: bytes, layout: struct.Struct, what: str, path: str, offset: int = 0) -> None:
    if len(raw) < layout.size:
        raise ImageFormatError(
            f"file too short for the {what} ({len(raw)} of {layout.size} bytes)", offset=offset, path=path
        )


def sesparse_volatile(raw: bytes) -> tuple[int, int]:
    """(magic, replay_journal) of the SESparse volatile header."""
    magic, _free_gt, _txn, replay = _SESPARSE_VOLATILE.unpack_from(raw)
    return magic, replay


class ExtentLine(NamedTuple):
    """One line of a descriptor's extent description."""

    access: str  # RW, RDONLY, NOACCESS
    sectors: int
    type: str  # FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE
    filename: str | None
    start: int  # sectors into the file (flat extents)


class Descriptor(NamedTuple):
    """A parsed text descriptor: header fields, extent lines and the disk database."""

    fields: dict[str, str]
    extents: list[ExtentLine]
    ddb: dict[str, str]
    unrecognised: list[str]  # lines that are none of the above (reported, not fatal)

    def cid(self, name: str) -> int | None:
        """A content identifier (``CID`` or ``parentCID``) as an integer, None when absent or bad."""
        value = self.fields.get(name.lower())
        try:
            return int(value, 16) if value else None
        except ValueError:
            return None


_EXTENT_RE = re.compile(
    r"^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Za-z]+)"
    r'(?:\s+"(?P<name>[^"]*)"(?:\s+(?P<start>\d+))?)?(?:\s.*)?$'
)
_FIELD_RE = re.compile(r"^(?P<key>[A-Za-z0-9_.]+)\s*=\s*(?P<value>.*)$")

#: A descriptor is a few KiB; refuse to treat anything much larger as one.
MAX_DESCRIPTOR = 1 << 20


def decode_descriptor_text(raw: bytes) -> str:
    """The descriptor's text: up to the first NUL, UTF-8 (older VMware wrote Windows-1252)."""
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def parse_descriptor(text: str, *, path: str, offset: int = 0) -> Descriptor:
    """Parse a descriptor; raises ImageFormatError when it is not one or a line is malformed."""
    fields: dict[str, str] = {}
    extents: list[ExtentLine] = []
    ddb: dict[str, str] = {}
    unrecognised: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        extent = _EXTENT_RE.match(line)
        if extent:
            kind = extent["type"].upper()
            name = extent["name"]
            if kind != "ZERO" and name is None:
                raise ImageFormatError(
                    f"extent line without a file name: {line[:200]!r}", offset=offset, path=path
                )
            extents.append(
                ExtentLine(extent["access"], int(extent["sectors"]), kind, name, int(extent["start"] or 0))
            )
            continue
        field = _FIELD_RE.match(line)
        if field:
            value = field["value"].strip().strip('"')
            key = field["key"]
            if key.lower().startswith("ddb."):
                ddb[key[4:]] = value
            else:
                fields[key.lower()] = value
            continue
        unrecognised.append(line[:200])
    if "createtype" not in fields and not extents:
        raise ImageFormatError("not a VMDK descriptor (no createType, no extents)", offset=offset, path=path)
    return Descriptor(fields, extents, ddb, unrecognised)
