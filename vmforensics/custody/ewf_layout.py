"""EWF-E01 (EnCase 6) on-disk structures, as libyal's "Expert Witness Compression Format" notes
describe them. Only the layout: which bytes each section holds. The writing logic is in ewf.py.

All integers are little-endian; every checksum is an Adler-32 (zlib's, initial value 1).
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"EVF\x09\x0d\x0a\xff\x00"
#: signature, start of fields (1), segment number, end of fields (0)
FILE_HEADER = struct.Struct("<8sBHH")
#: type (NUL padded), next section offset (from the file's start), section size, 40 bytes padding
SECTION = struct.Struct("<16sQQ40x")
SECTION_SIZE = SECTION.size + 4  # and the Adler-32 of the above: 76 bytes
VOLUME_SIZE = 1052  # the EnCase 1-7 "volume"/"data" payload, checksum included
#: entry count, 4 padding, base offset (EnCase 6: entries are relative to it), 4 padding
TABLE_HEADER = struct.Struct("<I4xQ4x")
TABLE_HEADER_SIZE = TABLE_HEADER.size + 4
DIGEST_SIZE = 80  # MD5 (16), SHA-1 (20), 40 padding, Adler-32
HASH_SIZE = 36  # MD5 (16), 16 unknown, Adler-32
COMPRESSED = 0x80000000  # table entry flag: the chunk is a zlib stream
MAX_TABLE_OFFSET = 0x7FFFFFFF

SECTOR_SIZE = 512
SECTORS_PER_CHUNK = 64
CHUNK_SIZE = SECTOR_SIZE * SECTORS_PER_CHUNK

MEDIA_FIXED = 0x01
MEDIA_FLAGS = 0x01 | 0x02  # an image file of a physical device (a whole disk, not a volume)
#: compression name -> (volume section level, zlib level); "none" stores chunks with an Adler-32
COMPRESSION = {"none": (0, 0), "fast": (1, 1), "best": (2, 9)}

#: The header2 (EnCase 5-7, UTF-16LE) and header (EnCase 4-7, ASCII) identifiers, in order.
HEADER2_MAIN = ("a", "c", "n", "e", "t", "md", "sn", "av", "ov", "m", "u", "p", "dc")
HEADER_MAIN = ("c", "n", "a", "e", "t", "av", "ov", "m", "u", "p")
#: The empty "srce" and "sub" categories EnCase 6 writes after "main".
HEADER2_TAIL = (
    "srce\n0\t1\np\tn\tid\tev\ttb\tlo\tpo\tah\tgu\taq\n0\t0\n\t\t\t\t\t-1\t-1\t\t\t\n\n"
    "sub\n0\t1\np\tn\tid\tnu\tco\tgu\n0\t0\n\t\t\t\t1\t\n\n"
)


def adler32(data: bytes | memoryview) -> bytes:
    return struct.pack("<I", zlib.adler32(data))


def file_header(segment: int) -> bytes:
    return FILE_HEADER.pack(SIGNATURE, 1, segment, 0)


def section(kind: bytes, offset: int, size: int, *, last: bool = False) -> bytes:
    """The 76-byte descriptor of a section of ``size`` bytes (descriptor included) at ``offset``.

    A "next" or "done" section (``last``) points at itself and has size 0, as EnCase writes them.
    """
    following = offset if last else offset + size
    head = SECTION.pack(kind, following, 0 if last else size)
    return head + adler32(head)


def volume(*, chunks: int, sectors: int, compression_level: int, guid: bytes) -> bytes:
    """The volume (first segment) / data (later segments) payload: the media's geometry."""
    payload = bytearray(VOLUME_SIZE - 4)
    payload[0] = MEDIA_FIXED
    struct.pack_into("<IIIQ", payload, 4, chunks, SECTORS_PER_CHUNK, SECTOR_SIZE, sectors)
    payload[36] = MEDIA_FLAGS
    payload[52] = compression_level
    struct.pack_into("<I", payload, 56, SECTORS_PER_CHUNK)  # error granularity
    payload[64:80] = guid
    return bytes(payload) + adler32(payload)


def table(base: int, entries: list[int]) -> bytes:
    """A table (or table2) payload: header, one offset per chunk relative to ``base``, footer."""
    head = TABLE_HEADER.pack(len(entries), base)
    array = struct.pack(f"<{len(entries)}I", *entries)
    return head + adler32(head) + array + adler32(array)


def digest(md5: bytes, sha1: bytes) -> bytes:
    payload = md5 + sha1 + bytes(40)
    return payload + adler32(payload)


def hash_(md5: bytes) -> bytes:
    payload = md5 + bytes(16)
    return payload + adler32(payload)
