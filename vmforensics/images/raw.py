"""Raw images and -flat extents: the guest's bytes, stored as they are."""

from __future__ import annotations

from collections.abc import Iterable

from vmforensics.images.base import DiskImage, ImageSource, Resolver, Segment, data


class RawImage(DiskImage):
    format_name = "raw"

    def __init__(self, source: ImageSource, *, strict: bool = False):
        super().__init__(source.size, path=source.name, sources=[source], strict=strict)
        self.source = source
        self._linear = source

    def _direct(self, offset: int, length: int) -> tuple[ImageSource, int]:
        return self.source, offset

    def _segments(self, offset: int, length: int) -> Iterable[Segment]:
        return (data(length, self.source, offset),)


def open_layer(source: ImageSource, resolver: Resolver) -> DiskImage:
    return RawImage(source, strict=resolver.strict)
