"""FilesAcquirer: arbitrary files (host logs, an exported VM, a datastore folder) over any
transport, with the same ledger, signed manifest and verification as a VM acquisition."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import guess_vendor, role_for
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import SourceError, UsageError
from vmforensics.transport.base import RemoteStat, Transport
from vmforensics.transport.local import LocalTransport


class FilesAcquirer(Acquirer):
    """Acquire ``paths`` (files, or directories with ``recursive``) through one transport."""

    kind = "files"
    preserve_modes = ("none",)

    def __init__(self, transport: Transport, paths: Sequence[str], *, recursive: bool = False):
        if not paths:
            raise UsageError("no files to acquire")
        self._transport = transport
        self._paths = list(paths)
        self._recursive = recursive

    def connect(self, session: Session) -> None:
        facts = self._transport.describe()
        session.source = SourceInfo(kind="files", host=facts.get("host"), connection=facts)

    def identify(self, session: Session, target: str) -> VMIdentity:
        session.clock = measure_clock(
            lambda: None, method="none: the transport cannot read the source's clock"
        )
        return VMIdentity(name=target, details={"paths": self._paths, "recursive": self._recursive})

    def enumerate(self, session: Session) -> list[PlannedFile]:
        found: list[RemoteStat] = []
        for path in self._paths:
            entry = self._transport.stat(path)
            if entry.is_dir and not entry.is_symlink:
                if not self._recursive:
                    raise UsageError(f"{path} is a directory: add --recursive to acquire what is below it")
                found.extend(self._transport.walk(path))
            else:
                found.append(entry)
        vendor = guess_vendor([posixpath.basename(e.path) for e in found])
        host = session.source.host or "local"
        planned = []
        for entry in found:
            if entry.is_symlink:
                session.omit(entry.path, "other", "symbolic link: not followed")
                continue
            role = role_for(vendor, entry.path) if vendor else "file"
            planned.append(
                PlannedFile(
                    source_path=entry.path,
                    dest_name=_dest_name(host, entry.path),
                    role=role,
                    size_reported=entry.size,
                    label=entry.path,
                )
            )
        if not planned:
            raise SourceError("nothing to acquire: every path was empty or a symbolic link")
        return planned

    def transport(self, session: Session) -> Transport:
        return self._transport

    def disconnect(self, session: Session) -> None:
        self._transport.close()

    def source_roots(self, target: str) -> list[Path]:
        return [Path(p) for p in self._paths] if isinstance(self._transport, LocalTransport) else []


def _dest_name(host: str, path: str) -> str:
    """``<host>/<path as on the source>``: keeps the source's layout; checked again on write."""
    clean = path.replace("\\", "/").lstrip("/")
    if len(clean) > 1 and clean[1] == ":":  # C:/… on a Windows host
        clean = clean[0] + clean[2:]
    return f"{host}/{clean}"
