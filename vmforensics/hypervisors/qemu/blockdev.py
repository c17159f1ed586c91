"""Block devices (LVM-thin, ZFS zvols, mapped RBD) read at their size, beside the host's files.

A file transport sees a block device as a file of size 0, so each device planned for the evidence
is measured once on the host (``blockdev --getsize64``) and read by ``dd`` with exactly that many
bytes expected; every other path goes to the host's file transport unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.transport.base import ReadStream, RemoteStat, Transport
from vmforensics.transport.ssh_streams import ChannelSource, ExactStream

#: ``dd`` block size for device reads.
_BLOCK = 4 << 20


class _DeviceFile:
    """A local block device from an offset, exactly ``length`` bytes."""

    def __init__(self, path: str, offset: int, length: int):
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._left = length

    def readinto(self, buffer: memoryview) -> int:
        if self._left <= 0:
            return 0
        count = os.readv(self._fd, [buffer[: min(len(buffer), self._left)]])
        self._left -= count
        return count

    def close(self) -> None:
        os.close(self._fd)


class BlockDeviceTransport(Transport):
    """``devices`` (path -> size in bytes) through ``dd`` on the host, other paths through its files."""

    def __init__(
        self,
        host: QemuHost,
        devices: dict[str, int],
        confined: Transport | None = None,
        confined_paths: Iterable[str] = (),
    ):
        self.host = host
        self.inner = host.files
        self.devices = dict(devices)
        self.scheme = self.inner.scheme
        #: Files named by source content, read by descriptor beneath the roots (this machine only).
        self.confined = confined
        self.confined_paths = frozenset(confined_paths)

    def stat(self, path: str) -> RemoteStat:
        if path in self.devices:
            return RemoteStat(path=path, size=self.devices[path])
        return self.inner.stat(path)

    def listdir(self, path: str) -> list[RemoteStat]:
        return self.inner.listdir(path)

    def walk(self, path: str) -> Iterator[RemoteStat]:
        return self.inner.walk(path)

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        if path not in self.devices:
            if self.confined is not None and path in self.confined_paths:
                return self.confined.open_read(path, offset)
            return self.inner.open_read(path, offset)
        size = self.devices[path]
        if not 0 <= offset <= size:
            raise SourceError(f"{path}: offset {offset} is outside the device's {size} bytes")
        what = f"block device {path} on {self.host.where}"
        if self.host.ssh is None:
            try:
                return _DeviceFile(path, offset, size - offset)
            except OSError as exc:
                raise SourceError(f"cannot open {what}: {exc.strerror or exc}") from exc
        argv = [
            "dd",
            f"if={path}",
            f"bs={_BLOCK}",
            f"skip={offset}",
            f"count={size - offset}",
            "iflag=skip_bytes,count_bytes,fullblock",
            "status=none",
        ]
        channel = self.host.ssh.open_command(argv)
        channel.shutdown_write()
        return ExactStream(ChannelSource(channel, what, self.host.timeout), size - offset, what)

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        return None if path in self.devices else self.inner.remote_hash(path, algorithm)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def describe(self) -> dict[str, Any]:
        facts = self.inner.describe()
        if self.devices:
            facts["block_devices"] = "read with dd on the host at blockdev --getsize64"
        return facts

    def close(self) -> None:
        """The host's connection is closed by its owner (the acquirer)."""
