"""Running ``virsh`` and ``qemu-img`` on the KVM host: over an SSH exec channel, or here.

Arguments are always a list; over SSH each one is quoted with :func:`shlex.quote`, so names taken
from the source (domain names, file paths) can never become shell syntax. Every command runs with
``LC_ALL=C`` so that its messages are stable enough to explain failures.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import paramiko

from vmforensics.errors import ConnectionError_, SourceError, VMNotFoundError
from vmforensics.transport.ssh import SSHTransport

log = logging.getLogger(__name__)

#: Output kept from one command; a domain XML or a qemu-img chain is far smaller.
OUTPUT_LIMIT = 16 << 20
#: Exit status a POSIX shell gives for a command it cannot find or cannot execute.
_NOT_FOUND = (126, 127)


@attrs.frozen
class CommandResult:
    """What one command did on the host."""

    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class CommandRunner(Protocol):
    """Runs an argument vector on the KVM host and returns its exit status and output."""

    where: str

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult: ...

    def close(self) -> None: ...


class LocalRunner:
    """Commands on this machine (the examiner works on the KVM host itself)."""

    where = "localhost"

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        began = time.monotonic()
        env = dict(os.environ, LC_ALL="C")
        try:
            done = subprocess.run(list(argv), capture_output=True, timeout=timeout, env=env, check=False)
        except FileNotFoundError:
            return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found", 0.0)
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"{shlex.join(argv)} did not finish within {timeout:.0f} s") from exc
        return CommandResult(
            tuple(argv),
            done.returncode,
            done.stdout[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            done.stderr[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            time.monotonic() - began,
        )

    def close(self) -> None:
        """Nothing to release."""


class SSHRunner:
    """Commands through one ``sh`` kept open on an exec channel of a verified SSH connection.

    One shell for the whole acquisition instead of a channel (and a login shell start) per
    command: each command's stdout and stderr travel on the channel's two streams, each ended by
    a marker line that carries a per-session random nonce (and, on stdout, the exit status).
    ``channel_factory`` returns a channel already running ``sh`` on the SSH transport's verified
    connection (:meth:`SSHTransport.open_command`).
    """

    def __init__(self, channel_factory: Any, where: str):
        self._open_channel = channel_factory
        self.where = where
        self._channel: paramiko.Channel | None = None
        self._marker = b""
        self._out = bytearray()
        self._err = bytearray()

    def _shell(self) -> paramiko.Channel:
        if self._channel is None or self._channel.closed or self._channel.exit_status_ready():
            channel = self._open_channel()
            self._channel = channel
            self._marker = f"@@vmforensics-{secrets.token_hex(16)}".encode()
            self._out.clear()
            self._err.clear()
        return self._channel

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        command = shlex.join(["env", "LC_ALL=C", *argv])
        began = time.monotonic()
        deadline = began + timeout
        try:
            channel = self._shell()
            marker = self._marker.decode()
            line = (
                f"{command} </dev/null; printf '\\n%s %d\\n' {marker} $?; printf '\\n%s \\n' {marker} >&2\n"
            )
            channel.sendall(line.encode())
            stdout, status = self._until(channel.recv, self._out, deadline)
            stderr, _ = self._until(channel.recv_stderr, self._err, deadline)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise ConnectionError_(f"{self.where}: running {shlex.join(argv)} failed: {exc}") from exc
        return CommandResult(
            tuple(argv),
            status,
            stdout[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            stderr[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            time.monotonic() - began,
        )

    def _until(self, receive: Any, buffer: bytearray, deadline: float) -> tuple[bytes, int]:
        """Read one stream up to its ``\\nMARKER STATUS\\n`` line; (output before it, status)."""
        assert self._channel is not None
        tag = b"\n" + self._marker + b" "
        while True:
            at = buffer.find(tag)
            end = buffer.find(b"\n", at + len(tag)) if at >= 0 else -1
            if end >= 0:
                text = bytes(buffer[:at])
                word = bytes(buffer[at + len(tag) : end]).strip()
                del buffer[: end + 1]
                return text, int(word) if word.isdigit() else 0
            if len(buffer) > 4 * OUTPUT_LIMIT:
                raise SourceError(f"{self.where}: a command printed more than {4 * OUTPUT_LIMIT} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no end of output before the time limit")
            self._channel.settimeout(min(remaining, 5.0))
            try:
                chunk = receive(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError("the remote shell ended")
            buffer += chunk

    def close(self) -> None:
        """Close the shell's channel (the connection belongs to the transport)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def ssh_runner(transport: SSHTransport) -> SSHRunner:
    """A runner keeping one ``sh`` on the SSH transport's verified connection."""
    where = f"{transport.user}@{transport.host}:{transport.port}"
    return SSHRunner(lambda: transport.open_command(["sh"]), where)


class Host:
    """``virsh`` (against one libvirt URI) and ``qemu-img`` on the KVM host, with clear errors."""

    def __init__(
        self,
        runner: CommandRunner,
        *,
        uri: str = "qemu:///system",
        virsh: str = "virsh",
        qemu_img: str = "qemu-img",
        timeout: float = 600.0,
    ):
        self.runner = runner
        self.uri = uri
        self.virsh_path = virsh
        self.qemu_img_path = qemu_img
        self.timeout = timeout
        self.history: list[dict[str, Any]] = []

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> CommandResult:
        result = self.runner.run(argv, timeout=timeout or self.timeout)
        self.history.append(
            {"command": result.command, "status": result.status, "seconds": round(result.seconds, 3)}
        )
        log.debug("%s: %s -> %d", self.runner.where, result.command, result.status)
        if result.status in _NOT_FOUND and _not_found_text(result.stderr):
            raise SourceError(
                f"{argv[0]} is not installed on {self.runner.where} (or not on the PATH of that user): "
                f"{result.stderr.strip()}"
            )
        if check and result.status != 0:
            raise SourceError(
                f"{self.runner.where}: {result.command} failed ({result.status}): {_message(result)}"
            )
        return result

    def virsh(self, *args: str, check: bool = True, timeout: float | None = None) -> CommandResult:
        """``virsh -c URI ARGS`` (a missing domain raises VMNotFoundError)."""
        result = self.run([self.virsh_path, "-c", self.uri, *args], check=False, timeout=timeout)
        if check and result.status != 0:
            message = _message(result)
            if "failed to get domain" in message or "Domain not found" in message:
                raise VMNotFoundError(
                    f"no libvirt domain matches on {self.runner.where} ({self.uri}): {message}"
                )
            raise SourceError(f"{self.runner.where}: virsh {shlex.join(args)} failed: {message}")
        return result

    def qemu_img(self, *args: str, check: bool = True) -> CommandResult:
        return self.run([self.qemu_img_path, *args], check=check)


def _not_found_text(stderr: str) -> bool:
    lowered = stderr.lower()
    return "not found" in lowered or "no such file" in lowered or "permission denied" in lowered


def _message(result: CommandResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).replace("\n", " ")
    return text[:2000] or "(no message)"
