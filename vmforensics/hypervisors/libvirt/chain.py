"""A disk's backing chain, read layer by layer with ``qemu-img info`` on the host.

Every file of a chain is checked before anything opens it: the disk the domain XML names, each
backing file and each qcow2 external data file goes through ``check`` (beneath the roots, no
symbolic link, a regular file or block device: roots.check_member), and its format is decided
from its first bytes (layer_head.py) so that qemu-img runs only with ``-f`` for a format that
opens no other file. ``qemu-img info`` without ``--backing-chain`` never opens a backing file;
the next layer's name is taken from its output and checked in turn. The first file that fails
ends the chain as ``refused``, with the layer whose header named it.

``-U`` (force-share) lets qemu-img read images a running guest holds open; it only ever reads.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any

import attrs

from vmforensics.confine import INVALID, MISSING, ConfinedPath, Refusal
from vmforensics.errors import SourceError
from vmforensics.hypervisors.libvirt.commands import Host
from vmforensics.hypervisors.libvirt.layer_head import SAFE_FORMATS, read_head
from vmforensics.transport.base import Transport

#: Chains deeper than this are refused (qemu itself stops far earlier in practice).
MAX_DEPTH = 256

#: Decides whether a host path named by the XML or an image may be opened (roots.check_member).
Check = Callable[[str], ConfinedPath | Refusal]


@attrs.frozen
class Layer:
    """One image of a chain, top first."""

    path: str
    format: str | None
    virtual_size: int | None
    backing_name: str | None  # as written in this image's header
    backing_path: str | None  # the header's name joined to this image's folder (as qemu-img gives it)
    backing_format: str | None
    data_file: str | None  # qcow2 external data file (checked, normalised)

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in attrs.asdict(self).items() if value is not None}


@attrs.frozen
class Chain:
    """The layers that were checked and read, and why the chain ends early when it does."""

    layers: tuple[Layer, ...]
    broken: str | None = None  # a checked file qemu-img could not read
    error: str | None = None
    refused: Refusal | None = None  # a file the chain names that was never opened, and why
    refused_by: Layer | None = None  # the layer whose header names it (None: the domain XML)
    refused_name: str | None = None  # the exact text that header gives


def read_chain(host: Host, files: Transport, path: str, image_format: str | None, check: Check) -> Chain:
    """The chain below ``path`` (inclusive), each file checked before qemu-img opens it."""
    layers: list[Layer] = []
    current: str | None = path
    current_format = image_format
    named_by: Layer | None = None
    seen: set[str] = set()
    while current is not None:
        checked = check(current)
        if isinstance(checked, Refusal) and checked.kind == MISSING:
            return Chain(tuple(layers), current, checked.reason)
        if isinstance(checked, Refusal):
            name = named_by.backing_name if named_by else None
            return Chain(tuple(layers), refused=checked, refused_by=named_by, refused_name=name)
        where = checked.path
        if where in seen or len(layers) >= MAX_DEPTH:
            return Chain(tuple(layers), current, "the backing chain loops or is too deep")
        seen.add(where)
        try:
            head = read_head(files, where, current_format)
        except SourceError as exc:
            return Chain(tuple(layers), current, str(exc))
        if head.format not in SAFE_FORMATS:
            refusal = Refusal(
                current,
                f"{where} is a {head.format!r} image: qemu-img would open the files it names (VMDK "
                "extents, or a format vmforensics cannot check) before they are checked; not read",
                INVALID,
                where,
            )
            name = named_by.backing_name if named_by else None
            return Chain(tuple(layers), refused=refusal, refused_by=named_by, refused_name=name)
        data_file = None
        if head.data_file is not None:
            data = check(posixpath.join(posixpath.dirname(where), head.data_file) if head.data_file else "")
            if isinstance(data, Refusal):  # the layer is safe to copy; qemu-img would open the data file
                plain = Layer(where, head.format, None, None, None, None, None)
                return Chain((*layers, plain), refused=data, refused_by=plain, refused_name=head.data_file)
            data_file = data.path
        result = host.qemu_img("info", "-U", "--output=json", "-f", head.format, "--", where, check=False)
        if result.status != 0:
            message = (result.stderr.strip() or result.stdout.strip()).replace("\n", " ")
            return Chain(tuple(layers), current, message or f"qemu-img exited with {result.status}")
        layer = attrs.evolve(
            _layer(_entries(f"[{result.stdout}]", where)[0]), path=where, data_file=data_file
        )
        layers.append(layer)
        named_by = layer
        current = layer.backing_path
        if current is not None and not posixpath.isabs(current):  # json:, protocol: or relative text
            current = posixpath.join(posixpath.dirname(where), current)
        current_format = layer.backing_format
    return Chain(tuple(layers))


def _entries(text: str, path: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"qemu-img info of {path} did not return JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SourceError(f"qemu-img info of {path} returned an unexpected document")
    if len(entries) > MAX_DEPTH:
        raise SourceError(f"the backing chain of {path} is deeper than {MAX_DEPTH} images")
    return entries


def _layer(entry: dict[str, Any]) -> Layer:
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise SourceError("qemu-img info returned a layer without a file name")
    return Layer(
        path=filename,
        format=_str(entry.get("format")),
        virtual_size=entry.get("virtual-size") if isinstance(entry.get("virtual-size"), int) else None,
        backing_name=_str(entry.get("backing-filename")),
        backing_path=_str(entry.get("full-backing-filename") or entry.get("backing-filename")),
        backing_format=_str(entry.get("backing-filename-format")),
        data_file=None,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
