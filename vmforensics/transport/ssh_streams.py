"""Byte streams of one remote file over SSH: exec channel, OpenSSH client process, SFTP, decompression.

Every stream knows how many bytes the file should yield from its offset and delivers exactly those:
a stream that ends early, or whose remote command fails, raises ConnectionError_ (the copier then
reconnects and resumes) instead of returning a short read that would look like the end of the file.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import subprocess
import tempfile
import zlib
from typing import Protocol

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, SFTPError, int64

from vmforensics.errors import ConnectionError_

log = logging.getLogger(__name__)

#: Bytes asked of paramiko per SFTP read request, and requests kept in flight.
SFTP_REQUEST = 32768
SFTP_IN_FLIGHT = 64
_F_SETPIPE_SZ = 1031
_NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException)


class RawSource(Protocol):
    """Where a stream's bytes come from: ``read_some`` returns b"" at the end, ``finish`` checks the end.

    A source may also offer ``readinto(buffer) -> int`` (0 at the end) to fill the caller's buffer
    without an intermediate copy.
    """

    def read_some(self, size: int) -> bytes: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


class ExactStream:
    """Deliver exactly ``length`` bytes from a source, or raise ConnectionError_.

    Bytes past ``length`` (the file grew) are read, counted and dropped so that the remote command's
    exit status can still be checked; the copier's size/mtime check flags the change.
    """

    def __init__(self, source: RawSource, length: int, what: str):
        self._source = source
        self._remaining = length
        self._what = what
        self._pending = memoryview(b"")
        self._finished = False
        self._direct = getattr(source, "readinto", None)

    def readinto(self, buffer: memoryview) -> int:
        if not self._pending:
            if self._remaining == 0:
                self._finish()
                return 0
            if self._direct is not None:  # zero-copy: the source fills the caller's buffer
                count = self._direct(buffer[: min(len(buffer), self._remaining)])
                if not count:
                    self._source.finish()
                    raise ConnectionError_(f"{self._what}: the stream ended {self._remaining} bytes early")
                self._remaining -= count
                return count
            chunk = self._source.read_some(min(len(buffer), self._remaining, 1 << 20) or 1)
            if not chunk:
                self._source.finish()
                raise ConnectionError_(f"{self._what}: the stream ended {self._remaining} bytes early")
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending), self._remaining)
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._remaining -= count
        return count

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        extra = len(self._pending)
        while chunk := self._source.read_some(1 << 20):
            extra += len(chunk)
        self._source.finish()
        if extra:
            log.warning(
                "%s: %d bytes more than the size stated when the read began (file grew)", self._what, extra
            )

    def close(self) -> None:
        self._source.close()


class ChannelSource:
    """stdout of a remote command on a paramiko exec channel."""

    def __init__(self, channel: paramiko.Channel, what: str, timeout: float):
        self._channel = channel
        self._what = what
        self._timeout = timeout
        channel.settimeout(timeout)

    def read_some(self, size: int) -> bytes:
        try:
            return self._channel.recv(size)
        except TimeoutError as exc:
            raise ConnectionError_(f"{self._what}: no data for {self._timeout:.0f} s") from exc
        except _NETWORK_ERRORS as exc:
            raise ConnectionError_(f"{self._what}: connection lost: {exc}") from exc

    def finish(self) -> None:
        if not self._channel.status_event.wait(self._timeout):
            raise ConnectionError_(f"{self._what}: the remote command did not report an exit status")
        status = self._channel.exit_status
        if status == -1:  # paramiko's value when the channel closed without an exit status
            raise ConnectionError_(f"{self._what}: connection lost before the remote command finished")
        if status != 0:
            raise ConnectionError_(f"{self._what}: remote command failed (exit {status}){self._stderr()}")

    def _stderr(self) -> str:
        with contextlib.suppress(*_NETWORK_ERRORS):
            if self._channel.recv_stderr_ready():
                text = self._channel.recv_stderr(4096).decode("utf-8", "replace").strip()
                return f": {text}" if text else ""
        return ""

    def close(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            self._channel.close()


class ProcessSource:
    """stdout of the system ``ssh`` client running a remote command (the fast data plane)."""

    def __init__(self, argv: list[str], what: str, timeout: float):
        self._what = what
        self._timeout = timeout
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the stream
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0
            )
        except OSError as exc:
            self._stderr.close()
            raise ConnectionError_(f"{what}: cannot run {argv[0]}: {exc}") from exc
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._process.stdout.fileno(), _F_SETPIPE_SZ, 1 << 20)

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._process.stdout.readinto(buffer)
        except OSError as exc:
            raise ConnectionError_(f"{self._what}: reading from ssh failed: {exc}") from exc

    def read_some(self, size: int) -> bytes:
        try:
            return self._process.stdout.read(size)
        except OSError as exc:
            raise ConnectionError_(f"{self._what}: reading from ssh failed: {exc}") from exc

    def finish(self) -> None:
        try:
            status = self._process.wait(self._timeout)
        except subprocess.TimeoutExpired as exc:
            raise ConnectionError_(f"{self._what}: ssh did not exit") from exc
        if status != 0:
            kind = "ssh connection failed" if status == 255 else "remote command failed"
            raise ConnectionError_(f"{self._what}: {kind} (exit {status}){self._error_text()}")

    def _error_text(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read(4096).decode("utf-8", "replace").strip()
        return f": {text}" if text else ""

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdout.close()
        self._stderr.close()


class SFTPSource:
    """A file read with pipelined SFTP read requests (for servers that refuse commands).

    paramiko's own prefetch never completes when requests fail (a file truncated mid-read leaves
    its helper thread spinning), so the pipeline is kept here: at most ``SFTP_IN_FLIGHT`` requests
    of ``SFTP_REQUEST`` bytes are outstanding, answered in order through paramiko's response hook.
    """

    def __init__(
        self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, offset: int, end: int, what: str
    ):
        self._sftp = sftp
        self._handle = handle
        self._next = offset
        self._end = end
        self._what = what
        self._queue: collections.deque[tuple[int, int, int]] = collections.deque()
        self._answers: dict[int, bytes | Exception] = {}
        self._failed = False

    def _request(self, offset: int, length: int) -> tuple[int, int, int]:
        num = self._sftp._async_request(self, CMD_READ, self._handle.handle, int64(offset), int(length))
        return num, offset, length

    def _fill(self) -> None:
        while not self._failed and len(self._queue) < SFTP_IN_FLIGHT and self._next < self._end:
            length = min(SFTP_REQUEST, self._end - self._next)
            self._queue.append(self._request(self._next, length))
            self._next += length

    def _async_response(self, kind: int, message: paramiko.Message, num: int) -> None:
        """paramiko's callback for an answer to one of our requests."""
        if kind == CMD_DATA:
            self._answers[num] = message.get_string()
            return
        try:
            self._sftp._convert_status(message)
            self._answers[num] = SFTPError("unexpected SFTP status for a read")
        except Exception as exc:  # the server's status, converted by paramiko (EOFError, IOError...)
            self._answers[num] = exc

    def read_some(self, size: int) -> bytes:
        try:
            self._fill()
            if not self._queue:
                return b""
            num, offset, length = self._queue.popleft()
            while num not in self._answers:
                self._sftp._read_response()
        except _NETWORK_ERRORS as exc:
            raise ConnectionError_(f"{self._what}: SFTP read failed: {exc}") from exc
        answer = self._answers.pop(num)
        if isinstance(answer, EOFError):
            self._failed = True  # the file ended before the size stated: ExactStream reports it
            return b""
        if isinstance(answer, Exception):
            raise ConnectionError_(f"{self._what}: SFTP read at {offset} failed: {answer}")
        if 0 < len(answer) < length:  # a legal short read: ask for the rest first
            self._queue.appendleft(self._request(offset + len(answer), length - len(answer)))
        return answer

    def finish(self) -> None:
        """SFTP reads carry no exit status; ExactStream's byte count is the whole check."""

    def close(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            self._handle.close()


class DecompressingSource:
    """Inflate a remote ``gzip -1`` or ``zstd -1`` stream, never more than ``size`` bytes per call."""

    def __init__(self, source: RawSource, codec: str, what: str):
        self._source = source
        self._codec = codec
        self._what = what
        self._tail = b""
        self._eof = False
        if codec == "gzip":
            self._inflater = zlib.decompressobj(wbits=31)
            self._errors: tuple[type[Exception], ...] = (zlib.error,)
        else:
            import zstandard  # optional dependency; the transport checked it before choosing zstd

            self._reader = zstandard.ZstdDecompressor().stream_reader(
                _Readable(source), read_size=1 << 20, read_across_frames=True, closefd=False
            )
            self._errors = (zstandard.ZstdError,)

    def read_some(self, size: int) -> bytes:
        try:
            return self._gunzip(size) if self._codec == "gzip" else self._reader.read(size)
        except self._errors as exc:
            raise ConnectionError_(f"{self._what}: corrupt {self._codec} stream: {exc}") from exc

    def readinto(self, buffer: memoryview) -> int:
        if self._codec == "gzip":
            data = self.read_some(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        try:
            return self._reader.readinto(buffer)
        except self._errors as exc:
            raise ConnectionError_(f"{self._what}: corrupt {self._codec} stream: {exc}") from exc

    def _gunzip(self, size: int) -> bytes:
        while not self._eof:
            data = self._tail or self._source.read_some(1 << 20)
            if not data:
                self._eof = True
                break
            out = self._inflater.decompress(data, size)
            self._tail = self._inflater.unconsumed_tail
            if out:
                return out
        return b""

    def finish(self) -> None:
        self._source.finish()

    def close(self) -> None:
        self._source.close()


class _Readable:
    """The ``read(size)`` face of a RawSource, for zstandard's stream reader."""

    def __init__(self, source: RawSource):
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return self._source.read_some(size if size > 0 else 1 << 20)
