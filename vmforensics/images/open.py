"""open_image: detect a disk image's format by its magic (never its extension) and open it."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import BinaryIO

from vmforensics.confine import Confinement, open_named_file
from vmforensics.errors import ImageFormatError, RefusedPathError
from vmforensics.images.base import DiskImage, ImageSource, Opener, Resolver
from vmforensics.images.raw import RawImage
from vmforensics.images.signatures import identify

#: Format name -> module under vmforensics.images that provides ``open_layer(source, resolver)``.
FORMAT_MODULES = {
    "vmdk": "vmforensics.images.vmdk",
    "vhd": "vmforensics.images.vhd",
    "vhdx": "vmforensics.images.vhdx",
    "qcow2": "vmforensics.images.qcow2",
    "vdi": "vmforensics.images.vdi",
    "qed": "vmforensics.images.qed",
    "parallels": "vmforensics.images.parallels",
    "qcow1": "vmforensics.images.qcow1",
    "asif": "vmforensics.images.asif",
    "raw": "vmforensics.images.raw",
}


def detect_format(source: ImageSource) -> str:
    """Name what ``source`` is from its bytes (see :mod:`vmforensics.images.signatures`).

    The name is a key of :data:`FORMAT_MODULES` when the package reads the format, another name
    (``"dmg"``, ``"ewf"``...) when it only recognises it, and ``"raw"`` when no signature matched.
    """
    signature = identify(source)
    return "raw" if signature is None else signature.format


def open_source_image(source: ImageSource, *, resolver: Resolver, format: str | None = None) -> DiskImage:
    """Open an already opened file as a disk image, resolving parents and extents via ``resolver``.

    Without ``format`` the file's signature decides; a recognised format that is not read is
    refused by name, and a file with no known signature opens as raw with a warning saying so.
    """
    try:
        if format is not None:
            if format not in FORMAT_MODULES:
                raise ImageFormatError(
                    f"unknown image format {format!r} (known: {', '.join(FORMAT_MODULES)})", path=source.name
                )
            return importlib.import_module(FORMAT_MODULES[format]).open_layer(source, resolver)
        signature = identify(source)
        if signature is None:
            return RawImage.unrecognised(source, strict=resolver.strict)
        if signature.reader not in FORMAT_MODULES:
            advice = f"; {signature.advice}" if signature.advice else ""
            raise ImageFormatError(
                f"this is a {signature.description} ({signature.format!r}), which vmforensics recognises "
                f"but does not read{advice}",
                path=source.name,
            )
        if signature.reader == "raw":
            return RawImage(source, strict=resolver.strict, subtype=signature.format)
        return importlib.import_module(FORMAT_MODULES[signature.reader]).open_layer(source, resolver)
    except BaseException:
        source.close()
        raise


def open_image(
    image: str | os.PathLike[str] | BinaryIO,
    opener: Opener | None = None,
    *,
    strict: bool = False,
    format: str | None = None,
    allowed_roots: Iterable[str | os.PathLike[str]] = (),
) -> DiskImage:
    """Open a disk image of any supported format as a seekable raw stream.

    ``image`` is a path or a binary file object (its ``name`` is used to find related files).
    Descriptors, extents and parent chains are followed through ``opener``; by default they are
    opened from the local file system only beneath the image's own folder tree (and any of
    ``allowed_roots``), through no symbolic link and only as regular files (vmforensics.confine).
    A caller's ``opener`` takes responsibility for what it opens. Inconsistencies become
    ``info().warnings`` unless ``strict`` is true, in which case they raise
    :class:`~vmforensics.errors.ImageFormatError`; a missing or refused file always raises.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if opener is None:
            resolver = Resolver(
                strict=strict,
                confinement=Confinement([os.path.dirname(os.path.abspath(path))], allowed_roots),
            )
            try:
                source = ImageSource(os.fdopen(open_named_file(path), "rb"), path)
            except RefusedPathError as exc:
                raise ImageFormatError(f"cannot open image: {exc.refusal.reason}", path=path) from exc
        else:
            resolver = Resolver(opener, strict=strict)
            try:
                source = ImageSource(resolver.opener(path), path)
            except OSError as exc:
                raise ImageFormatError(f"cannot open image: {exc.strerror or exc}", path=path) from exc
    else:
        name = str(getattr(image, "name", "<stream>"))
        resolver = Resolver(
            opener,
            strict=strict,
            confinement=None
            if opener is not None
            else Confinement([os.path.dirname(os.path.abspath(name))], allowed_roots),
        )
        source = ImageSource(image, name, owned=False)
    with resolver.layer(source):
        return open_source_image(source, resolver=resolver, format=format)
