"""The backing chain of an image no QEMU has open, read one layer at a time on the host.

``qemu-img info --backing-chain`` would open every file the chain names (a FIFO named as a
backing file blocks it; a file outside the roots is opened on the host) before anything could be
checked. Here each file is checked first (``check``: beneath the roots, no symbolic link, a
regular file, files.py), then ``qemu-img info -U -f FORMAT`` reads that one layer, which never
opens its backing file. The format is the one declared (the header's backing format) or, when
none is, qcow2 if the file starts with qcow2's magic and raw otherwise: qemu-img never probes, so
a planted VMDK descriptor is never followed. A declared format whose driver opens files it names
itself (VMDK extents), or a qcow2 with an external data file, ends the chain as a refusal.
"""

from __future__ import annotations

import json
import posixpath
import struct
from collections.abc import Callable

from vmforensics.confine import INVALID, MISSING, ConfinedPath, Refusal
from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import MAX_DEPTH, Layer, layers_from_image

#: Formats whose qemu driver opens only the file it is given during ``qemu-img info``.
SAFE_FORMATS = ("qcow2", "raw", "qed", "qcow", "vpc", "vhdx", "vdi", "parallels")
_QCOW2_MAGIC = b"QFI\xfb"
_INCOMPAT_DATA_FILE = 1 << 2

Check = Callable[[str], ConfinedPath | Refusal]


def read_chain(
    host: QemuHost, qemu_img: str, path: str, image_format: str | None, check: Check
) -> tuple[tuple[Layer, ...], bool, Refusal | None]:
    """(layers top first, cut at MAX_DEPTH, the refusal that ended the chain early or None)."""
    layers: list[Layer] = []
    current: str | None = path
    declared = image_format
    while current is not None:
        if len(layers) >= MAX_DEPTH:
            return tuple(layers), True, None
        checked = check(current)
        if isinstance(checked, Refusal):
            return tuple(layers), False, checked
        where = checked.path
        if any(layer.filename == where for layer in layers):
            return (
                tuple(layers),
                False,
                Refusal(current, f"{where} is already in the chain (a loop)", INVALID, where),
            )
        head = _head(host, where)
        image_format = declared or ("qcow2" if head[:4] == _QCOW2_MAGIC else "raw")
        if image_format not in SAFE_FORMATS:
            why = f"{where} is a {image_format!r} image: qemu-img would open the files it names; not read"
            return tuple(layers), False, Refusal(current, why, INVALID, where)
        if image_format == "qcow2" and _has_data_file(head):
            why = f"{where} uses an external data file, which qemu-img would open; not read"
            return tuple(layers), False, Refusal(current, why, INVALID, where)
        result = host.run(
            [qemu_img, "info", "-U", "--output=json", "-f", image_format, "--", where], check=False
        )
        if result.status != 0:
            message = result.stderr.decode("utf-8", "replace").strip()[:500]
            return (
                tuple(layers),
                False,
                Refusal(current, f"qemu-img info of {where} failed: {message}", MISSING, where),
            )
        try:
            entry = json.loads(result.stdout)
        except ValueError as exc:
            raise SourceError(f"qemu-img info of {where} did not return JSON: {exc}") from exc
        found, _ = layers_from_image({**entry, "backing-image": None} if isinstance(entry, dict) else None)
        if not found:
            raise SourceError(f"qemu-img info of {where} named no image")
        layer = found[0]
        layers.append(Layer(where, layer.format, layer.virtual_size, layer.backing_filename))
        declared = (
            entry.get("backing-filename-format")
            if isinstance(entry.get("backing-filename-format"), str)
            else None
        )
        current = layer.backing_filename
        if current is not None and not current.startswith("/"):
            current = posixpath.join(posixpath.dirname(where), current)
    return tuple(layers), False, None


def _head(host: QemuHost, path: str) -> bytes:
    """The first 104 bytes (a qcow2 v3 header) of a checked file."""
    stream = host.files.open_read(path)
    try:
        buffer = bytearray(104)
        view, filled = memoryview(buffer), 0
        while filled < len(buffer) and (count := stream.readinto(view[filled:])):
            filled += count
        return bytes(buffer[:filled])
    finally:
        stream.close()


def _has_data_file(head: bytes) -> bool:
    if len(head) < 80 or struct.unpack_from(">I", head, 4)[0] < 3:
        return False
    return bool(struct.unpack_from(">Q", head, 72)[0] & _INCOMPAT_DATA_FILE)
