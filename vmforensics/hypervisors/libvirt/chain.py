"""A disk's backing chain as ``qemu-img info --backing-chain`` reports it on the host.

``-U`` (force-share) lets qemu-img read images a running guest holds open; it only ever reads.
Names inside images are untrusted: they are used as host paths to read (the host resolved them
itself) and reduced to a base name for the evidence, never used as a local path.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import attrs

from vmforensics.errors import SourceError
from vmforensics.hypervisors.libvirt.commands import Host

#: Chains deeper than this are refused (qemu itself stops far earlier in practice).
MAX_DEPTH = 256


@attrs.frozen
class Layer:
    """One image of a chain, top first."""

    path: str
    format: str | None
    virtual_size: int | None
    backing_name: str | None  # as written in this image's header
    backing_path: str | None  # where qemu-img found it on the host
    backing_format: str | None
    data_file: str | None  # qcow2 external data file

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in attrs.asdict(self).items() if value is not None}


@attrs.frozen
class Chain:
    """The layers that could be opened, and why the chain ends early when it does."""

    layers: tuple[Layer, ...]
    broken: str | None = None  # the backing file that could not be opened
    error: str | None = None


def read_chain(host: Host, path: str, image_format: str | None) -> Chain:
    """The chain below ``path`` (inclusive); a missing backing file ends it with ``broken`` set."""
    args = ["info", "-U", "--backing-chain", "--output=json"]
    if image_format:
        args += ["-f", image_format]
    result = host.qemu_img(*args, "--", path, check=False)
    if result.status == 0:
        return Chain(tuple(_layer(entry) for entry in _entries(result.stdout, path)))
    return _walk(host, path, image_format)


def _walk(host: Host, path: str, image_format: str | None) -> Chain:
    """Layer by layer, to find which file of the chain is missing or unreadable."""
    layers: list[Layer] = []
    current: str | None = path
    current_format = image_format
    seen: set[str] = set()
    while current is not None:
        if current in seen or len(layers) >= MAX_DEPTH:
            return Chain(tuple(layers), current, "the backing chain loops or is too deep")
        seen.add(current)
        args = ["info", "-U", "--output=json"] + (["-f", current_format] if current_format else [])
        result = host.qemu_img(*args, "--", current, check=False)
        if result.status != 0:
            message = (result.stderr.strip() or result.stdout.strip()).replace("\n", " ")
            return Chain(tuple(layers), current, message or f"qemu-img exited with {result.status}")
        entries = _entries(f"[{result.stdout}]", current)
        layer = _layer(entries[0])
        layers.append(layer)
        current = layer.backing_path
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
    data = (entry.get("format-specific") or {}).get("data") or {}
    data_file = data.get("data-file") if isinstance(data, dict) else None
    if isinstance(data_file, str) and not posixpath.isabs(data_file):
        data_file = posixpath.join(posixpath.dirname(filename), data_file)
    return Layer(
        path=filename,
        format=_str(entry.get("format")),
        virtual_size=entry.get("virtual-size") if isinstance(entry.get("virtual-size"), int) else None,
        backing_name=_str(entry.get("backing-filename")),
        backing_path=_str(entry.get("full-backing-filename") or entry.get("backing-filename")),
        backing_format=_str(entry.get("backing-filename-format")),
        data_file=_str(data_file),
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
