"""The Transport protocol: how acquirers read files from where a VM lives.

A transport lists and reads remote files and says how it verified the peer (for the manifest).
It never writes to the source. Streams returned by :meth:`Transport.open_read` start at an
offset so that an interrupted copy resumes where the evidence on disk ends.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, Protocol

import attrs


@attrs.frozen
class RemoteStat:
    """What the source says about a file (untrusted: names and sizes are checked by the caller)."""

    path: str
    size: int
    mtime: float | None = None
    is_dir: bool = False
    is_symlink: bool = False
    #: The file type in words (``confine.file_type``: "regular file", "FIFO"...) from the entry's
    #: own mode, links not followed, where the transport reports it; None where it cannot.
    kind: str | None = None


class ReadStream(Protocol):
    """A forward-only byte stream: ``readinto`` returns 0 at the end of the file."""

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class Transport(abc.ABC):
    """Read-only access to files on a hypervisor host, datastore or share."""

    #: URL scheme that names this transport (``file``, ``ssh``, ``smb``, ``https``).
    scheme: str = ""

    @abc.abstractmethod
    def stat(self, path: str) -> RemoteStat:
        """Facts about one file; raises SourceError if it does not exist."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[RemoteStat]:
        """The entries of a directory, with full paths (not recursive)."""

    @abc.abstractmethod
    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        """A stream of the file's bytes from ``offset`` to its end."""

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        """The file's digest computed on the source side, or None where that is not possible."""
        return None

    def reconnect(self) -> None:  # noqa: B027 - optional hook
        """Re-establish a dropped connection (same peer, same verification); default: nothing."""

    def describe(self) -> dict[str, Any]:
        """How files travel and how the peer was verified, for the manifest (never secrets)."""
        return {"transport": self.scheme}

    def walk(self, path: str) -> Iterator[RemoteStat]:
        """Every file below ``path`` (symbolic links are reported, not followed)."""
        for entry in self.listdir(path):
            if entry.is_dir and not entry.is_symlink:
                yield from self.walk(entry.path)
            else:
                yield entry

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
