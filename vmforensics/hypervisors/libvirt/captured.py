"""A transport that also serves command output captured from the host (domain and snapshot XML).

Such documents are not files on the host (or the files hold secrets that must not be kept), so
they are captured once, secrets removed, and streamed into the evidence like any other file:
hashed, sealed and listed in the manifest under a ``virsh:`` name that says where they came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vmforensics.transport.base import ReadStream, RemoteStat, Transport

PREFIX = "virsh:"


class _BytesStream:
    def __init__(self, data: bytes):
        self._view = memoryview(data)

    def readinto(self, buffer: memoryview) -> int:
        count = min(len(buffer), len(self._view))
        buffer[:count] = self._view[:count]
        self._view = self._view[count:]
        return count

    def close(self) -> None:
        self._view = memoryview(b"")


class CapturedTransport(Transport):
    """``virsh:`` names from memory, every other path through ``inner``."""

    def __init__(self, inner: Transport, captured: dict[str, bytes]):
        self.inner = inner
        self.captured = captured
        self.scheme = inner.scheme

    def stat(self, path: str) -> RemoteStat:
        if path in self.captured:
            return RemoteStat(path=path, size=len(self.captured[path]))
        return self.inner.stat(path)

    def listdir(self, path: str) -> list[RemoteStat]:
        return self.inner.listdir(path)

    def walk(self, path: str) -> Iterator[RemoteStat]:
        return self.inner.walk(path)

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        if path in self.captured:
            return _BytesStream(self.captured[path][offset:])
        return self.inner.open_read(path, offset)

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        if path in self.captured:
            return None
        return self.inner.remote_hash(path, algorithm)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
