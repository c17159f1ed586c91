"""Read-only readers for VMDK, VHD, VHDX, qcow2 and raw disk images, with parent chains."""

from vmforensics.images.base import DiskImage, ImageInfo
from vmforensics.images.open import open_image

__all__ = ["DiskImage", "ImageInfo", "open_image"]
