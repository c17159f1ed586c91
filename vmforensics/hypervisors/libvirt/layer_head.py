"""What a chain member's first bytes say before ``qemu-img`` is allowed to open it.

``qemu-img info`` of one layer opens the file it is given and, depending on the format, files
the image names itself: a VMDK descriptor's extents, a qcow2 external data file (QEMU before
9.1 without the CVE-2024-4467 fix). Without ``-f`` it also probes the format from the content,
so a planted VMDK descriptor would be followed. The format is therefore decided here (the
declared one, or vmforensics' own signatures), qemu-img runs only with ``-f`` for a format whose
driver opens nothing but its own file, and a qcow2's data file name is read from its header so
that it can be checked before qemu-img sees the image.
"""

from __future__ import annotations

import attrs

from vmforensics.images import qcow2_layout as q
from vmforensics.images.signatures import HEAD_BYTES, SIGNATURES, Probe
from vmforensics.transport.base import Transport

#: Formats (qemu's names) whose driver opens only the file it is given during ``qemu-img info``
#: (backing files are never opened by a single-layer ``info``; qcow2 data files are checked first).
SAFE_FORMATS = ("qcow2", "raw", "qed", "qcow", "vpc", "vhdx", "vdi", "parallels")
#: vmforensics' format names -> qemu's.
_QEMU_NAMES = {
    "qcow2": "qcow2",
    "qcow1": "qcow",
    "qed": "qed",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "parallels": "parallels",
    "vmdk": "vmdk",
}
#: A qcow2 cluster is at most 2 MiB; its header extensions lie inside the first cluster.
_MAX_HEAD = 1 << q.MAX_CLUSTER_BITS


@attrs.frozen
class LayerHead:
    """The format qemu-img will be told, and (qcow2) the external data file the header names."""

    format: str
    data_file: str | None = None


def read_head(files: Transport, path: str, declared: str | None) -> LayerHead:
    """The layer's format (``declared`` wins; else its signature, else raw) and qcow2 data file."""
    head = _read(files, path, HEAD_BYTES)
    if declared:
        image_format = declared
    else:
        probe = Probe(head, b"", len(head))  # tail signatures (VHD footer) need the end: read below
        signature = next((s for s in SIGNATURES if s.matches(probe)), None)
        if signature is None:
            size = files.stat(path).size
            tail = _read(files, path, 512, max(size - 512, 0))
            signature = next((s for s in SIGNATURES if s.matches(Probe(head, tail, size))), None)
        image_format = "raw" if signature is None or signature.reader == "raw" else signature.format
        image_format = _QEMU_NAMES.get(image_format, image_format)
    data_file = None
    if image_format == "qcow2" and head[:4] == q.MAGIC:
        data_file = _qcow2_data_file(files, path, head)
    return LayerHead(image_format, data_file)


def _qcow2_data_file(files: Transport, path: str, head: bytes) -> str | None:
    """The data-file extension's text, read as QEMU does (bounded by the first cluster)."""
    if len(head) < q.V2_HEADER_LENGTH:
        return None
    header = q.decode_header(head)
    if header.version < 3 or not q.MIN_CLUSTER_BITS <= header.cluster_bits <= q.MAX_CLUSTER_BITS:
        return None
    end = 1 << header.cluster_bits
    if header.backing_file_offset and header.backing_file_offset > header.header_length:
        end = min(end, header.backing_file_offset)
    if end > len(head):
        head = _read(files, path, min(end, _MAX_HEAD))
    pos = header.header_length
    while pos + q.EXTENSION.size <= min(end, len(head)):
        kind, length = q.EXTENSION.unpack_from(head, pos)
        if kind == q.EXT_END:
            break
        body = head[pos + q.EXTENSION.size : pos + q.EXTENSION.size + length]
        if kind == q.EXT_DATA_FILE:
            return body.decode("utf-8", "replace")
        pos += q.EXTENSION.size + ((length + 7) & ~7)
    if header.incompatible & q.INCOMPAT_DATA_FILE:
        return ""  # the flag without a name: qemu-img would refuse it, and so is it here
    return None


def _read(files: Transport, path: str, length: int, offset: int = 0) -> bytes:
    stream = files.open_read(path, offset)
    try:
        buffer = bytearray(length)
        view, filled = memoryview(buffer), 0
        while filled < length and (count := stream.readinto(view[filled:])):
            filled += count
        return bytes(buffer[:filled])
    finally:
        stream.close()
