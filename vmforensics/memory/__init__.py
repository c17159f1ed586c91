"""Guest memory from hypervisor saved states: ``open_memory(path)`` -> :class:`GuestMemory`, and
converters to raw, ELF and LiME images (docs/memory.md)."""

from vmforensics.memory.base import GuestMemory, MemoryInfo, MemoryRange
from vmforensics.memory.convert import FORMATS, Conversion, convert, digest
from vmforensics.memory.open import detect, open_memory

__all__ = [
    "FORMATS",
    "Conversion",
    "GuestMemory",
    "MemoryInfo",
    "MemoryRange",
    "convert",
    "detect",
    "digest",
    "open_memory",
]
