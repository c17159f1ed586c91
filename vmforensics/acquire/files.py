"""FilesAcquirer: arbitrary files (host logs, an exported VM, a datastore folder) over any
transport, with the same ledger, signed manifest and verification as a VM acquisition.

The paths given are the examiner's; everything below them is the source's, so the walk follows
no symbolic link at any depth and only regular files are planned (a link, FIFO, socket or device
is an omission with its type). Locally the walk goes by directory descriptor (``openat`` with
``O_DIRECTORY | O_NOFOLLOW`` per component, the opened directory compared with what was listed)
and the files are read through a :class:`~vmforensics.confine.Confinement` beneath the given
paths, so a directory swapped for a link between listing and reading is refused. Other
transports cannot open by descriptor: each directory is ``lstat``-ed again before it is listed,
and over SSH/SFTP, before each file is read, every component below its root is ``lstat``-ed (a link or a
non-directory refuses it, and so does a leaf the server reports as anything but a regular file).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import guess_vendor, role_for
from vmforensics.confine import Confinement, file_type
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import SourceError, UsageError
from vmforensics.transport.base import ReadStream, RemoteStat, Transport
from vmforensics.transport.local import LocalTransport

_REGULAR = "regular file"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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
        self._reader: Transport | None = None

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
        roots: list[str] = []
        for path in self._paths:
            entry = self._transport.stat(path)
            if entry.is_dir and not entry.is_symlink:
                if not self._recursive:
                    raise UsageError(f"{path} is a directory: add --recursive to acquire what is below it")
                roots.append(path)
                found.extend(self._walk(session, path))
            else:
                roots.append(posixpath.dirname(path) or ".")
                found.append(entry)
        self._reader = self._checked_reader(roots)
        vendor = guess_vendor([posixpath.basename(e.path) for e in found])
        host = session.source.host or "local"
        planned = []
        for entry in found:
            if entry.is_symlink:
                session.omit(entry.path, "other", "symbolic link: not followed")
                continue
            if entry.kind is not None and entry.kind not in (_REGULAR, "directory"):
                session.omit(entry.path, "other", f"{entry.kind}: not a regular file, not read")
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

    def _walk(self, session: Session, root: str) -> Iterator[RemoteStat]:
        if isinstance(self._transport, LocalTransport):
            return _walk_local(session, root)
        return _walk_remote(session, self._transport, root)

    def _checked_reader(self, roots: list[str]) -> Transport:
        """The transport the copier reads through: confined locally, component-checked over SSH."""
        if isinstance(self._transport, LocalTransport):
            if self._transport.confinement is not None:
                return self._transport
            return LocalTransport(Confinement(sorted(set(roots))))
        if self._transport.scheme == "ssh":
            return ComponentChecked(self._transport, roots)
        return self._transport

    def transport(self, session: Session) -> Transport:
        return self._reader or self._transport

    def disconnect(self, session: Session) -> None:
        self._transport.close()

    def source_roots(self, target: str) -> list[Path]:
        return [Path(p) for p in self._paths] if isinstance(self._transport, LocalTransport) else []


def _walk_local(session: Session, root: str) -> Iterator[RemoteStat]:
    """Every entry below ``root`` by directory descriptor; a swapped directory is an omission."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the examiner's own path
    except OSError as exc:
        raise SourceError(f"cannot open the directory {root}: {exc.strerror or exc}") from exc
    yield from _walk_fd(session, fd, root)


def _walk_fd(session: Session, fd: int, where: str) -> Iterator[RemoteStat]:
    try:
        with os.scandir(fd) as listing:
            entries = sorted(((e.name, e.stat(follow_symlinks=False)) for e in listing), key=lambda e: e[0])
    except OSError as exc:
        os.close(fd)
        session.omit(where, "other", f"directory cannot be listed: {exc.strerror or exc}")
        return
    try:
        for name, info in entries:
            path = posixpath.join(where, name)
            if not stat.S_ISDIR(info.st_mode):
                yield RemoteStat(
                    path,
                    info.st_size,
                    info.st_mtime,
                    is_symlink=stat.S_ISLNK(info.st_mode),
                    kind=file_type(info.st_mode),
                )
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    session.omit(
                        path, "other", "listed as a directory, now not one (a symbolic link?): not followed"
                    )
                else:
                    session.omit(path, "other", f"directory cannot be opened: {exc.strerror or exc}")
                continue
            opened = os.fstat(child)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                os.close(child)
                session.omit(path, "other", "directory replaced while it was walked: not followed")
                continue
            yield from _walk_fd(session, child, path)
    finally:
        os.close(fd)


def _walk_remote(session: Session, transport: Transport, root: str) -> Iterator[RemoteStat]:
    """Every entry below ``root``; each directory is ``lstat``-ed again right before it is listed."""
    for entry in transport.listdir(root):
        if not entry.is_dir or entry.is_symlink:
            yield entry
            continue
        try:
            again = transport.stat(entry.path)
        except SourceError as exc:
            session.omit(entry.path, "other", f"directory vanished while walked: {exc}")
            continue
        if again.is_symlink or not again.is_dir:
            session.omit(
                entry.path, "other", "listed as a directory, now a symbolic link or file: not followed"
            )
            continue
        yield from _walk_remote(session, transport, entry.path)


class ComponentChecked(Transport):
    """A remote transport whose reads ``lstat`` every component below their root first."""

    def __init__(self, inner: Transport, roots: Sequence[str]):
        self.inner = inner
        self.scheme = inner.scheme
        self.roots = sorted({posixpath.normpath(r) for r in roots}, key=len, reverse=True)

    def stat(self, path: str) -> RemoteStat:
        return self.inner.stat(path)

    def listdir(self, path: str) -> list[RemoteStat]:
        return self.inner.listdir(path)

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        self.check(path)
        return self.inner.open_read(path, offset)

    def check(self, path: str) -> None:
        """Raise SourceError unless no component below the root is a link and the leaf is regular."""
        normal = posixpath.normpath(path)
        root = next((r for r in self.roots if normal == r or normal.startswith(r.rstrip("/") + "/")), None)
        if root is None:
            raise SourceError(f"{path} is not below the paths given")
        parts = [p for p in normal[len(root) :].split("/") if p]
        here = root
        for index, part in enumerate(parts):
            here = posixpath.join(here, part)
            info = self.inner.stat(here)
            if info.is_symlink:
                raise SourceError(f"{path}: {here} is a symbolic link (not followed)")
            last = index == len(parts) - 1
            if not last and not info.is_dir:
                raise SourceError(f"{path}: {here} is not a directory")
            if last and (info.is_dir or info.kind not in (None, _REGULAR)):
                raise SourceError(f"{path} is a {info.kind or 'directory'}, not a regular file")

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        self.check(path)
        return self.inner.remote_hash(path, algorithm)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


def _dest_name(host: str, path: str) -> str:
    """``<host>/<path as on the source>``: keeps the source's layout; checked again on write."""
    clean = path.replace("\\", "/").lstrip("/")
    if len(clean) > 1 and clean[1] == ":":  # C:/… on a Windows host
        clean = clean[0] + clean[2:]
    return f"{host}/{clean}"
