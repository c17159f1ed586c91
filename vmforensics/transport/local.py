"""Files already reachable on this machine: a mounted datastore, an NFS export, a copied VM folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from typing import Any
from urllib.parse import unquote, urlsplit

from vmforensics.confine import Confinement, file_type
from vmforensics.errors import SourceError, UsageError
from vmforensics.transport.base import RemoteStat, Transport


class _FileStream:
    def __init__(self, fd: int):
        self._fd = fd

    def readinto(self, buffer: memoryview) -> int:
        return os.readv(self._fd, [buffer])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_O_NOATIME = getattr(os, "O_NOATIME", 0)


def _stat(path: str, info: os.stat_result) -> RemoteStat:
    return RemoteStat(
        path=path,
        size=info.st_size,
        mtime=info.st_mtime,
        is_dir=stat.S_ISDIR(info.st_mode),
        is_symlink=stat.S_ISLNK(info.st_mode),
        kind=file_type(info.st_mode),
    )


class LocalTransport(Transport):
    """Reads local regular files without following symbolic links and without changing access times.

    With a :class:`~vmforensics.confine.Confinement` every file is opened through it: beneath its
    roots, through no symbolic link on any component. Without one only the last component is
    guarded (``O_NOFOLLOW``), as for files the examiner named. Either way a FIFO, socket, device
    or directory is refused without blocking (opened ``O_NONBLOCK``, checked with ``fstat``).
    """

    scheme = "file"
    confinement: Confinement | None = None

    def __init__(self, confinement: Confinement | None = None):
        self.confinement = confinement

    def stat(self, path: str) -> RemoteStat:
        try:
            return _stat(path, os.lstat(path))
        except OSError as exc:
            raise SourceError(f"cannot stat {path}: {exc.strerror or exc}") from exc

    def listdir(self, path: str) -> list[RemoteStat]:
        try:
            with os.scandir(path) as entries:
                return sorted(
                    (_stat(entry.path, entry.stat(follow_symlinks=False)) for entry in entries),
                    key=lambda s: s.path,
                )
        except OSError as exc:
            raise SourceError(f"cannot list {path}: {exc.strerror or exc}") from exc

    def open_read(self, path: str, offset: int = 0) -> _FileStream:
        fd = self._open_regular(path)
        try:
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        return _FileStream(fd)

    def _open_regular(self, path: str) -> int:
        if self.confinement is not None:
            return self.confinement.open_regular(os.path.abspath(path))  # RefusedPathError is a SourceError
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags | _O_NOATIME)
            except PermissionError:  # O_NOATIME needs ownership; fall back without it
                fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise SourceError(f"cannot open {path}: it is a socket, not a regular file") from exc
            raise SourceError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise SourceError(f"cannot open {path}: it is a {file_type(mode)}, not a regular file")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        """An independent second read of the source file (OpenSSL-backed hashlib)."""
        stream = self.open_read(path)
        try:
            with os.fdopen(os.dup(stream._fd), "rb") as f:
                return hashlib.file_digest(f, algorithm).hexdigest()
        finally:
            stream.close()

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"transport": "file", "host": os.uname().nodename}
        if self.confinement is not None:
            described["confinement"] = self.confinement.describe()
        return described

    @classmethod
    def from_url(cls, url: str, **options: Any) -> tuple[LocalTransport, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("file", "") or parts.netloc not in ("", "localhost"):
            raise UsageError(f"not a local file URL: {url!r}")
        if options:
            raise UsageError(f"file:// URLs take no options (got {', '.join(options)})")
        return cls(), unquote(parts.path)
