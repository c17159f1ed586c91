"""Raw images and -flat extents: the guest's bytes, stored as they are."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vmforensics.images.base import DiskImage, ImageSource, Resolver, Segment, data

log = logging.getLogger(__name__)

NO_SIGNATURE = (
    "no known image signature was found, so the file's own bytes are read as a raw disk "
    "(open it with format='raw' to say that it is one)"
)


class RawImage(DiskImage):
    """The file's bytes as the disk; ``subtype`` says what it was recognised as (``iso9660``)."""

    format_name = "raw"

    def __init__(self, source: ImageSource, *, strict: bool = False, subtype: str = "raw"):
        super().__init__(source.size, path=source.name, sources=[source], strict=strict)
        self.source = source
        self.subtype = subtype
        self._linear = source

    @classmethod
    def unrecognised(cls, source: ImageSource, *, strict: bool = False) -> RawImage:
        """A file that matched no signature: raw, with a warning (never an error, even when strict)."""
        image = cls(source, strict=strict)
        log.warning("%s: %s", source.name, NO_SIGNATURE)
        image.warnings.append(NO_SIGNATURE)
        return image

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int]:
        return self.source, offset

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        return (data(length, self.source, offset),)

    def _describe(self) -> dict[str, Any]:
        return {"subtype": self.subtype}


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return RawImage(source, strict=resolver.strict)
