"""Planning a QEMU VM's files for the evidence: disk chains, memory, state, config and logs.

Evidence layout (under ``files/``)::

    disks/<drive>/<base name of each chain member>   (one folder per drive; qcow2 backing names
                                                      are host paths, resolved by base name)
    memory/…  config/…  logs/…

A path is planned only after the host confirms it is a file (or a block device, which is then
read at ``blockdev --getsize64``); anything else becomes an omission with the reason.
"""

from __future__ import annotations

import posixpath
from typing import Any

from vmforensics.acquire.base import PlannedFile, Session
from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import Layer


def safe_name(name: str) -> str:
    """A host-given name as one evidence path component ('/', '\\' and control characters replaced)."""
    cleaned = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name)[:200]
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}_"


class Plan:
    """Planned files with unique evidence names; block devices measured; the rest omitted with reasons."""

    def __init__(self, session: Session, host: QemuHost):
        self.session = session
        self.host = host
        self.files: list[PlannedFile] = []
        self.devices: dict[str, int] = {}
        self._by_source: dict[str, str] = {}
        self._taken: set[str] = set()

    def add(self, path: str, dest: str, role: str, label: str | None = None) -> str | None:
        """Plan ``path`` (a file or block device on the host) as ``dest``; None when omitted."""
        if path in self._by_source:
            return self._by_source[path]
        if not path.startswith("/") or "\0" in path:
            self.session.omit(path, role, "not a path on the host (a network or virtual image)")
            return None
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
        self.files.append(PlannedFile(path, dest, role, size, label or path))
        self._by_source[path] = dest
        self._taken.add(dest)
        return dest

    def chain(self, drive: str, layers: tuple[Layer, ...], cut: bool) -> dict[str, Any]:
        """Plan every layer of one drive's chain; describe what went where."""
        planned = []
        for layer in layers:
            dest = self.add(
                layer.filename,
                f"disks/{safe_name(drive)}/{safe_name(posixpath.basename(layer.filename))}",
                "disk",
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
