"""open_image: detect a disk image's format by its magic (never its extension) and open it."""

from __future__ import annotations

import importlib
import os
from typing import BinaryIO

from vmforensics.errors import ImageFormatError
from vmforensics.images.base import DiskImage, ImageSource, Opener, Resolver

#: Format name -> module under vmforensics.images that provides ``open_layer(source, resolver)``.
FORMAT_MODULES = {
    "vmdk": "vmforensics.images.vmdk",
    "vhd": "vmforensics.images.vhd",
    "vhdx": "vmforensics.images.vhdx",
    "qcow2": "vmforensics.images.qcow2",
    "raw": "vmforensics.images.raw",
}

_SESPARSE_MAGIC = (0x00000000CAFEBABE).to_bytes(8, "little")


def detect_format(source: ImageSource) -> str:
    """Name the format of ``source`` from its leading (and, for fixed VHD, trailing) bytes."""
    head = source.read_at(0, min(source.size, 1024))
    if head[:4] in (b"KDMV", b"COWD") or head[:8] == _SESPARSE_MAGIC:
        return "vmdk"
    text_head = head.lstrip()
    if text_head.startswith(b"# Disk DescriptorFile") or (b"createType" in head and b"\0" not in head):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:8] == b"conectix":
        return "vhd"
    if source.size >= 512 and source.read_at(source.size - 512, 8) == b"conectix":
        return "vhd"
    if source.size >= 511 and source.read_at(source.size - 511, 8) == b"conectix":
        return "vhd"  # pre-Virtual-PC-2004 images have a 511-byte footer
    return "raw"


def open_source_image(source: ImageSource, *, resolver: Resolver, format: str | None = None) -> DiskImage:
    """Open an already opened file as a disk image, resolving parents and extents via ``resolver``."""
    name = format or detect_format(source)
    if name not in FORMAT_MODULES:
        raise ImageFormatError(f"unknown image format {name!r} (known: {', '.join(FORMAT_MODULES)})")
    module = importlib.import_module(FORMAT_MODULES[name])
    try:
        return module.open_layer(source, resolver)
    except BaseException:
        source.close()
        raise


def open_image(
    image: str | os.PathLike[str] | BinaryIO,
    opener: Opener | None = None,
    *,
    strict: bool = False,
    format: str | None = None,
) -> DiskImage:
    """Open a disk image of any supported format as a seekable raw stream.

    ``image`` is a path or a binary file object (its ``name`` is used to find related files).
    Descriptors, extents and parent chains are followed through ``opener`` (default: the local
    file system). Inconsistencies become ``info().warnings`` unless ``strict`` is true, in which
    case they raise :class:`~vmforensics.errors.ImageFormatError`; a missing file always raises.
    """
    resolver = Resolver(opener, strict=strict)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            source = ImageSource(resolver.opener(path), path)
        except OSError as exc:
            raise ImageFormatError(f"cannot open image: {exc.strerror or exc}", path=path) from exc
    else:
        source = ImageSource(image, str(getattr(image, "name", "<stream>")), owned=False)
    return open_source_image(source, resolver=resolver, format=format)
