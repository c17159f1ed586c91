"""Planning a QEMU VM's files for the evidence: disk chains, memory, state, config and logs.

Evidence layout (under ``files/``)::

    disks/<drive>/<base name of each chain member>   (one folder per drive; qcow2 backing names
                                                      are host paths, resolved by base name)
    memory/…  config/…  logs/…

A path is planned only after the host confirms it is a file (or a block device, which is then
read at ``blockdev --getsize64``); anything else becomes an omission with the reason. The images
a drive has open are named by QEMU; the backing files below them are named inside image headers
(source content), so they go through :class:`~vmforensics.confine.RemoteConfinement`: beneath the
folders of the drives' images, the Proxmox storages and the examiner's ``allowed_roots``, with no
symbolic link on any component below the root and a regular file at the end — checked with a
local :class:`~vmforensics.confine.Confinement` on this machine (and read through it), with
``stat -c %F`` on every component over SSH — and the folded path is what is read.
"""

from __future__ import annotations

import posixpath
from typing import Any

from vmforensics.acquire.base import PlannedFile, Session
from vmforensics.confine import (
    NOT_REGULAR,
    OUTSIDE,
    SYMLINK,
    UNREADABLE,
    ConfinedPath,
    Confinement,
    Refusal,
    RemoteConfinement,
)
from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import Layer
from vmforensics.transport.base import Transport
from vmforensics.transport.local import LocalTransport


def safe_name(name: str) -> str:
    """A host-given name as one evidence path component ('/', '\\' and control characters replaced)."""
    cleaned = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name)[:200]
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}_"


class Plan:
    """Planned files with unique evidence names; block devices measured; the rest omitted with reasons."""

    def __init__(self, session: Session, host: QemuHost, roots: list[str]):
        self.session = session
        self.host = host
        allowed = session.options.get("allowed_roots") or ()
        self.confinement = RemoteConfinement(roots, allowed) if roots or allowed else None
        #: On this machine: the same roots, resolved by descriptor (openat2 / O_NOFOLLOW per component).
        self.local = Confinement(roots, allowed) if self.confinement and host.ssh is None else None
        self.files: list[PlannedFile] = []
        self.devices: dict[str, int] = {}
        #: Planned paths that were named by source content (read through :meth:`confined_reader`).
        self.confined_paths: set[str] = set()
        self._by_source: dict[str, str] = {}
        self._taken: set[str] = set()

    def add(
        self, path: str, dest: str, role: str, label: str | None = None, *, confined: bool = False
    ) -> str | None:
        """Plan ``path`` (a file or block device on the host) as ``dest``; None when omitted.

        ``confined``: the path comes from source content and must pass the confinement.
        """
        if path in self._by_source:
            return self._by_source[path]
        if not path.startswith("/") or "\0" in path:
            self.session.omit(path, role, "not a path on the host (a network or virtual image)")
            return None
        label = label or path
        if confined:
            resolved = self.check(path)
            if isinstance(resolved, Refusal):
                self.session.omit(path, role, str(resolved))
                return None
            path = resolved.path  # the folded path is read: on the host '..' after a link goes elsewhere
            self.confined_paths.add(path)
        size: int | None
        if path.startswith("/dev/"):
            try:
                size = self.host.block_size(path)
            except SourceError as exc:
                self.session.omit(path, role, f"block device not readable on the host: {exc}")
                return None
            self.devices[path] = size
        else:
            try:
                info = self.host.files.stat(path)
            except SourceError as exc:
                self.session.omit(path, role, f"not readable on the host: {exc}")
                return None
            if info.is_dir:
                self.session.omit(path, role, "a directory where a file was expected")
                return None
            size = info.size
        dest = self._unique(dest)
        self.files.append(PlannedFile(path, dest, role, size, label))
        self._by_source[path] = dest
        self._taken.add(dest)
        return dest

    def check(self, path: str) -> ConfinedPath | Refusal:
        """Whether a host path named by source content may be opened (never opens it on the host)."""
        if self.confinement is None:
            return Refusal(
                path, "named by an image, and the acquisition has no root to confine it to", OUTSIDE
            )
        resolved = self.confinement.resolve(path)
        if isinstance(resolved, Refusal):
            return resolved
        if self.local is not None:
            checked = self.local.check(resolved.path)
            return checked if isinstance(checked, Refusal) else resolved
        return _check_components(self.host, resolved)

    def confined_reader(self) -> Transport | None:
        """On this machine, the transport that reads confined files by descriptor beneath the roots."""
        return LocalTransport(self.local) if self.local is not None else None

    def chain(
        self, drive: str, layers: tuple[Layer, ...], cut: bool, *, first_confined: bool = False
    ) -> dict[str, Any]:
        """Plan every layer of one drive's chain; describe what went where.

        Layers below the top are named by the image above them, so confined; ``first_confined``
        confines the top too (a Proxmox volume path, built from the VM's config)."""
        planned = []
        for depth, layer in enumerate(layers):
            dest = self.add(
                layer.filename,
                f"disks/{safe_name(drive)}/{safe_name(posixpath.basename(layer.filename))}",
                "disk",
                confined=depth > 0 or first_confined,
            )
            planned.append(
                {
                    "source": layer.filename,
                    "format": layer.format,
                    "virtual_size": layer.virtual_size,
                    "evidence": f"files/{dest}" if dest else None,
                }
            )
        names = [posixpath.basename(layer.filename) for layer in layers]
        if cut:
            self.session.omit(
                layers[-1].filename, "disk", f"backing chain of {drive} is deeper than the limit: cut here"
            )
        return {
            "drive": drive,
            "layers": planned,
            "opens_in_evidence": bool(planned)
            and not cut
            and len(set(names)) == len(names)
            and all(p["evidence"] for p in planned),
        }

    def _unique(self, dest: str) -> str:
        if dest not in self._taken:
            return dest
        folder, name = posixpath.split(dest)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        count = 2
        while (
            candidate := posixpath.join(folder, f"{stem}~{count}{'.' + ext if ext else ''}")
        ) in self._taken:
            count += 1
        return candidate


def _check_components(host: QemuHost, resolved: ConfinedPath) -> ConfinedPath | Refusal:
    """Over SSH: ``stat -c %F`` (links reported, not followed) on every component below the root."""
    reference = resolved.reference
    parts = [p for p in resolved.relative.split("/") if p]
    if not parts:
        return Refusal(reference, f"{resolved.path} is a root folder, not a file", NOT_REGULAR, resolved.path)
    components = [posixpath.join(resolved.root, *parts[: i + 1]) for i in range(len(parts))]
    result = host.run(["stat", "-c", "%F", "--", *components], check=False)
    types = result.stdout.decode("utf-8", "replace").splitlines()
    if result.status != 0 or len(types) != len(components):
        message = result.stderr.decode("utf-8", "replace").strip().replace("\n", " ")[:500]
        return Refusal(reference, f"{resolved.path} cannot be checked on the host: {message or result.status}",
                       UNREADABLE, resolved.path)  # fmt: skip
    for here, kind in zip(components[:-1], types[:-1], strict=True):
        if kind != "directory":
            what = SYMLINK if kind == "symbolic link" else NOT_REGULAR
            return Refusal(reference, f"{resolved.path} is reached through {here}, a {kind}", what, resolved.path,
                           kind)  # fmt: skip
    if types[-1] not in ("regular file", "regular empty file"):
        what = SYMLINK if types[-1] == "symbolic link" else NOT_REGULAR
        return Refusal(reference, f"{resolved.path} is a {types[-1]}, not a regular file", what, resolved.path,
                       types[-1])  # fmt: skip
    return resolved
