"""Collecting a remote command's exit status, stdout and stderr from a paramiko exec channel.

Both streams are drained together (a command that fills stderr while we wait on stdout would
otherwise stall on the channel's window), each kept up to a limit and counted beyond it, so a
command that prints without end costs bounded memory.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import time
from collections.abc import Sequence

import attrs
import paramiko

from vmforensics.errors import ConnectionError_, SourceError, UsageError

#: Output kept per stream by default (the rest is read and counted, not kept).
OUTPUT_LIMIT = 1 << 20
_NETWORK_ERRORS = (EOFError, paramiko.SSHException, socket.error)


@attrs.frozen
class CommandOutput:
    """What one remote command did: exit status and (possibly truncated) output."""

    argv: tuple[str, ...]
    status: int
    stdout: bytes
    stderr: bytes
    stdout_size: int  # bytes the command printed, kept or not
    stderr_size: int
    seconds: float

    @property
    def command(self) -> str:
        """The command line as sent (each argument quoted)."""
        return shlex.join(self.argv)

    @property
    def truncated(self) -> bool:
        return self.stdout_size > len(self.stdout) or self.stderr_size > len(self.stderr)

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell command line, every argument quoted; an empty or odd argv is refused."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise UsageError("a remote command is a non-empty list of arguments, not a string")
    if not all(isinstance(arg, str) for arg in argv):
        raise UsageError(f"remote command arguments must be strings: {argv!r}")
    if any("\0" in arg for arg in argv):
        raise UsageError("a remote command argument contains a NUL byte")
    return shlex.join(argv)


def collect(
    channel: paramiko.Channel, argv: Sequence[str], *, timeout: float, limit: int, where: str
) -> CommandOutput:
    """Read the channel's stdout and stderr to their end and wait for the exit status."""
    began = time.monotonic()
    deadline = began + timeout
    streams = {"stdout": _Kept(limit), "stderr": _Kept(limit)}
    what = f"{where}: {shlex.join(argv)}"
    try:
        while True:
            progressed = False
            while channel.recv_ready():
                progressed = streams["stdout"].add(channel.recv(65536)) or progressed
            while channel.recv_stderr_ready():
                progressed = streams["stderr"].add(channel.recv_stderr(65536)) or progressed
            ended = channel.eof_received or channel.closed
            if ended and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(f"{what} did not finish within {timeout:.0f} s")
            if not progressed:
                select.select([channel], [], [], min(remaining, 1.0))
        if not channel.status_event.wait(max(deadline - time.monotonic(), 0.1)):
            raise SourceError(f"{what} sent no exit status within {timeout:.0f} s")
    except _NETWORK_ERRORS as exc:
        raise ConnectionError_(f"{what}: connection lost: {exc}") from exc
    finally:
        with contextlib.suppress(*_NETWORK_ERRORS):
            channel.close()
    if channel.exit_status < 0:  # paramiko's value for a channel closed without an exit status
        raise ConnectionError_(f"{what}: the connection ended before the command reported its exit status")
    out, err = streams["stdout"], streams["stderr"]
    return CommandOutput(
        tuple(argv),
        channel.exit_status,
        bytes(out.data),
        bytes(err.data),
        out.size,
        err.size,
        time.monotonic() - began,
    )


class _Kept:
    """The first ``limit`` bytes of a stream, and how many it had in all."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> bool:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.size += len(chunk)
        return bool(chunk)
