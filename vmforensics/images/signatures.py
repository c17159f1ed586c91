"""Every container signature open_image knows, readable or not, with the format each is named as.

A file is recognised by its bytes, never its name. A signature the package cannot read is still
recognised, so that a VirtualBox disk, a DMG or an E01 is refused by name instead of being read as
a "raw disk" of the container's own bytes. Only a file that matches nothing here opens as raw,
with a warning that no signature was found.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from vmforensics.images.base import ImageSource

#: How much of the file's start the signatures look at (ISO 9660 volume descriptors end near 36 KiB).
HEAD_BYTES = 0x9006
#: How much of the file's end (VHD footer, UDIF "koly" trailer).
TAIL_BYTES = 512


@attrs.frozen
class Probe:
    """The bytes signatures are matched against: the file's start, its last 512 bytes, its size."""

    head: bytes
    tail: bytes
    size: int

    @classmethod
    def of(cls, source: ImageSource) -> Probe:
        head = source.read_at(0, min(source.size, HEAD_BYTES))
        tail_length = min(source.size, TAIL_BYTES)
        tail = source.read_at(source.size - tail_length, tail_length)
        return cls(head, tail, source.size)

    def at(self, offset: int, magic: bytes) -> bool:
        return self.head[offset : offset + len(magic)] == magic

    def u32be(self, offset: int) -> int | None:
        raw = self.head[offset : offset + 4]
        return struct.unpack(">I", raw)[0] if len(raw) == 4 else None


@attrs.frozen
class Signature:
    """One way a container announces itself.

    ``format`` names what the file is; ``reader`` is the key of FORMAT_MODULES that reads it
    (usually the same name; None when the package recognises the format but cannot read it, and
    ``advice`` then says what to do instead).
    """

    format: str
    description: str
    matches: Callable[[Probe], bool]
    reader: str | None = attrs.field(default=attrs.Factory(lambda self: self.format, takes_self=True))
    advice: str = ""


def at(offset: int, magic: bytes) -> Callable[[Probe], bool]:
    return lambda probe: probe.at(offset, magic)


def _qcow_version(version: int) -> Callable[[Probe], bool]:
    return lambda probe: probe.at(0, b"QFI\xfb") and probe.u32be(4) == version


def _vhd_footer(probe: Probe) -> bool:
    if probe.at(0, b"conectix"):
        return True
    # a fixed VHD ends with its 512-byte footer (511 bytes before Virtual PC 2004)
    return probe.tail[:8] == b"conectix" or (len(probe.tail) >= 511 and probe.tail[1:9] == b"conectix")


def _vmdk_descriptor(probe: Probe) -> bool:
    head = probe.head[:1024]
    if head.lstrip().startswith(b"# Disk DescriptorFile"):
        return True
    return b"createType" in head and b"\0" not in head


def _xml_root(name: bytes) -> Callable[[Probe], bool]:
    def matches(probe: Probe) -> bool:
        text = probe.head[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
        return text.startswith(b"<") and b"<" + name in text

    return matches


def _plist_with(*keys: bytes) -> Callable[[Probe], bool]:
    def matches(probe: Probe) -> bool:
        text = probe.head[:8192]
        is_plist = (text.lstrip().startswith(b"<?xml") and b"<plist" in text) or text.startswith(b"bplist00")
        return is_plist and any(key in text for key in keys)

    return matches


def _aff4_zip(probe: Probe) -> bool:
    return probe.at(0, b"PK\x03\x04") and (
        b"information.turtle" in probe.head or b"container.description" in probe.head
    )


def _vmware_state(probe: Probe) -> bool:
    raw = probe.head[:4]
    return len(raw) == 4 and struct.unpack("<I", raw)[0] in (0xBED2BED0, 0xBAD1BAD1, 0xBED2BED2, 0xBED3BED3)


def _bzip2(probe: Probe) -> bool:
    return probe.at(0, b"BZh") and probe.head[3:4].isdigit() and probe.at(4, b"1AY&SY")


_DECOMPRESS = "decompress it first and open the result"
_NOT_A_DISK = "it is not a disk image"

#: In the order they are tried: the first match names the file.
SIGNATURES: tuple[Signature, ...] = (
    Signature("vmdk", "VMware hosted sparse extent (KDMV)", at(0, b"KDMV")),
    Signature("vmdk", "VMware ESX sparse extent (COWD)", at(0, b"COWD")),
    Signature("vmdk", "VMware SE sparse extent", at(0, (0xCAFEBABE).to_bytes(8, "little"))),
    Signature("vhdx", "Microsoft VHDX", at(0, b"vhdxfile")),
    # any version but 1 goes to the qcow2 reader, which names an unsupported version itself
    Signature("qcow2", "QEMU qcow2", lambda p: p.at(0, b"QFI\xfb") and p.u32be(4) != 1),
    Signature("qcow1", "QEMU qcow version 1", _qcow_version(1)),
    Signature("qed", "QEMU enhanced disk (QED)", at(0, b"QED\0")),
    Signature("vdi", "VirtualBox disk image (VDI)", at(64, b"\x7f\x10\xda\xbe")),
    Signature("parallels", "Parallels expanding disk (WithoutFreeSpace)", at(0, b"WithoutFreeSpace")),
    Signature("parallels", "Parallels expanding disk (WithouFreSpacExt)", at(0, b"WithouFreSpacExt")),
    Signature(
        "parallels", "Parallels bundle descriptor (DiskDescriptor.xml)", _xml_root(b"Parallels_disk_image")
    ),
    Signature("asif", "Apple sparse image format (ASIF)", at(0, b"shdw")),
    Signature("vhd", "Microsoft VHD", _vhd_footer),
    Signature("vmdk", "VMware disk descriptor", _vmdk_descriptor),
    Signature("iso9660", "ISO 9660 CD/DVD image", at(0x8001, b"CD001"), "raw"),
    Signature("iso9660", "UDF CD/DVD image", at(0x8001, b"BEA01"), "raw"),
    # --- recognised, not read -------------------------------------------------------------------
    Signature(
        "cd-raw-sectors",
        "CD image of raw 2352-byte sectors (BIN)",
        at(0, b"\x00" + b"\xff" * 10 + b"\x00"),
        None,
        "convert it to 2048-byte sectors (ISO) first",
    ),
    Signature(
        "dmg", "Apple UDIF disk image (DMG)", lambda p: p.tail[:4] == b"koly", None, "convert it to raw first"
    ),
    Signature("sparseimage", "Apple sparse image (UDSP)", at(0, b"sprs"), None, "convert it to raw first"),
    Signature(
        "sparsebundle",
        "Apple sparse bundle property list",
        _plist_with(b"com.apple.diskimage.sparsebundle", b"diskimage-bundle-type"),
        None,
        "the disk is the bands/ folder beside it; convert the bundle to raw first",
    ),
    Signature("ewf", "EnCase/Expert Witness image (E01)", at(0, b"EVF\x09\x0d\x0a\xff\x00"), None),
    Signature("ewf", "EnCase logical evidence file (L01)", at(0, b"LVF\x09\x0d\x0a\xff\x00"), None),
    Signature("ewf2", "EnCase 7 image (Ex01)", at(0, b"EVF2\r\n\x81\x00"), None),
    Signature("ewf2", "EnCase 7 logical evidence file (Lx01)", at(0, b"LEF2\r\n\x81\x00"), None),
    Signature("aff", "Advanced Forensic Format (AFF)", at(0, b"AFF10\r\n\0"), None),
    Signature("aff4", "AFF4 forensic container", _aff4_zip, None),
    Signature(
        "vmware-saved-state",
        "VMware saved state (.vmss/.vmsn)",
        _vmware_state,
        None,
        f"{_NOT_A_DISK}; read it as guest memory",
    ),
    Signature(
        "virtualbox-saved-state",
        "VirtualBox saved state (.sav)",
        at(0, b"\x7fVirtualBox SavedState V"),
        None,
        f"{_NOT_A_DISK}; it holds a saved machine's memory",
    ),
    Signature("bochs", "Bochs disk image", at(0, b"Bochs Virtual HD Image"), None),
    Signature("cloop", "compressed loop image (cloop)", lambda p: b"#V2.0 Format" in p.head[:128], None),
    Signature("gzip", "gzip-compressed file", at(0, b"\x1f\x8b\x08"), None, _DECOMPRESS),
    Signature("xz", "xz-compressed file", at(0, b"\xfd7zXZ\0"), None, _DECOMPRESS),
    Signature("zstd", "zstd-compressed file", at(0, b"\x28\xb5\x2f\xfd"), None, _DECOMPRESS),
    Signature("bzip2", "bzip2-compressed file", _bzip2, None, _DECOMPRESS),
    Signature("7z", "7-Zip archive", at(0, b"7z\xbc\xaf\x27\x1c"), None, "extract it first"),
    Signature("zip", "ZIP archive", at(0, b"PK\x03\x04"), None, "extract it first"),
    Signature("tar", "tar archive", at(257, b"ustar"), None, "extract it first"),
)


def identify(source: ImageSource) -> Signature | None:
    """The first signature ``source`` matches, or None when it has none this package knows."""
    probe = Probe.of(source)
    return next((signature for signature in SIGNATURES if signature.matches(probe)), None)
