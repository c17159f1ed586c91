"""pytsk3 bridge: any DiskImage as a ``pytsk3.Img_Info`` for volume and file-system analysis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytsk3

if TYPE_CHECKING:
    from vmforensics.images.base import DiskImage


class TskImage(pytsk3.Img_Info):
    """Serves The Sleuth Kit's reads from a DiskImage (external image type)."""

    def __init__(self, image: DiskImage):
        self.image = image
        super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

    def read(self, offset: int, size: int) -> bytes:
        return self.image.read_at(offset, size)

    def get_size(self) -> int:
        return self.image.size

    def close(self) -> None:
        """The DiskImage owns the files; closing it is the caller's job."""


def as_tsk(image: DiskImage) -> TskImage:
    return TskImage(image)
