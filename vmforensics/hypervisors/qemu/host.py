"""Reaching a QEMU host: files, commands and QMP over one verified SSH connection, or this machine.

QMP sockets are unix sockets on the host. Over SSH the client talks to ``socat - UNIX-CONNECT:PATH``
on an exec channel (socat ships with Proxmox VE; paramiko has no ``direct-streamlocal`` channel),
so nothing but the verified SSH connection is needed. Every command is an argument list, quoted by
the SSH transport, with ``LC_ALL=C`` for stable messages; each one is kept in :attr:`history`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from vmforensics.errors import ConnectionError_, SourceError, UsageError
from vmforensics.hypervisors.qemu.qmp import QMPClient
from vmforensics.transport.base import Transport
from vmforensics.transport.local import LocalTransport
from vmforensics.transport.ssh_exec import OUTPUT_LIMIT, CommandOutput

log = logging.getLogger(__name__)

#: Characters socat's address syntax leaves alone; other socket paths are refused.
_SOCAT_SAFE = re.compile(r"^/[A-Za-z0-9_./@+-]+$")
_NOT_FOUND = (126, 127)


class QemuHost:
    """Files (a Transport), commands and QMP sessions on the host running QEMU."""

    def __init__(
        self,
        host: str | None,
        *,
        user: str,
        port: int = 22,
        ssh_options: dict[str, Any] | None = None,
        socat: str = "socat",
        timeout: float = 600.0,
    ):
        self.timeout = timeout
        self.socat = socat
        self.history: list[dict[str, Any]] = []
        self.ssh: Any = None
        if host is None:
            self.files: Transport = LocalTransport()
            self.where = "localhost"
        else:
            from vmforensics.transport.ssh import SSHTransport

            options = {k: v for k, v in (ssh_options or {}).items() if v is not None}
            self.ssh = SSHTransport(host, user=user, port=port, **options)
            self.files = self.ssh
            self.where = f"{user}@{host}:{port}"

    # -- commands --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> CommandOutput:
        """Run ``argv`` on the host; a failure (``check``) or a missing program raises SourceError."""
        argv = ["env", "LC_ALL=C", *argv]
        limit = timeout or self.timeout
        if self.ssh is not None:
            result = self.ssh.run(argv, timeout=limit, output_limit=OUTPUT_LIMIT)
        else:
            result = _run_here(argv, limit)
        shown = shlex.join(argv[2:])
        self.history.append({"command": shown, "status": result.status, "seconds": round(result.seconds, 3)})
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.status in _NOT_FOUND and ("not found" in stderr or "No such file" in stderr):
            raise SourceError(f"{argv[2]} is not installed on {self.where} (or not on the PATH): {stderr}")
        if check and result.status != 0:
            raise SourceError(
                f"{self.where}: {shown} failed ({result.status}): {stderr[:2000] or result.text[:2000]}"
            )
        return result

    def clock(self) -> dt.datetime | None:
        """The host's UTC clock (``date -u +%s.%N``), None when it answers something else."""
        text = self.run(["date", "-u", "+%s.%N"], check=False).text.strip()
        try:
            return dt.datetime.fromtimestamp(float(text), dt.UTC)
        except ValueError:
            return None

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).status == 0

    def block_size(self, path: str) -> int:
        """``blockdev --getsize64`` of a block device on the host."""
        text = self.run(["blockdev", "--getsize64", path]).text.strip()
        if not text.isdigit():
            raise SourceError(f"{self.where}: blockdev --getsize64 {path} answered {text[:100]!r}")
        return int(text)

    # -- QMP -------------------------------------------------------------------------------------

    def qmp(self, socket_path: str, *, timeout: float = 30.0) -> QMPClient:
        """A negotiated QMP session on the host's unix socket ``socket_path``."""
        if not _SOCAT_SAFE.match(socket_path) or "/../" in socket_path:
            raise UsageError(
                f"QMP socket path {socket_path!r} must be absolute, of letters, digits and _./@+-"
            )
        where = f"QMP {socket_path} on {self.where}"
        if self.run(["test", "-S", socket_path], check=False).status != 0:
            raise SourceError(f"{where}: no unix socket there (is the VM running? is this its QMP socket?)")
        if self.ssh is None:
            stream: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                stream.settimeout(timeout)
                stream.connect(socket_path)
            except OSError as exc:
                stream.close()
                raise SourceError(f"{where}: cannot connect: {exc}") from exc
        else:
            self.run([self.socat, "-V"])  # a clear error when socat is missing
            self.history.append({"command": f"{self.socat} - UNIX-CONNECT:{socket_path}", "status": None})
            stream = self.ssh.open_command([self.socat, "-", f"UNIX-CONNECT:{socket_path}"])
        try:
            return QMPClient(stream, where=where, timeout=timeout)
        except ConnectionError_ as exc:
            said = _stderr(stream)
            stream.close()
            if said:
                raise SourceError(f"{where}: {said}") from exc
            raise
        except BaseException:
            stream.close()
            raise

    def close(self) -> None:
        self.files.close()


def _stderr(stream: Any) -> str:
    """What socat said on its stderr (an SSH channel's), if anything arrived."""
    try:
        if hasattr(stream, "recv_stderr_ready") and stream.recv_stderr_ready():
            return stream.recv_stderr(4096).decode("utf-8", "replace").strip()
    except (OSError, EOFError):
        pass
    return ""


def _run_here(argv: Sequence[str], timeout: float) -> CommandOutput:
    began = time.monotonic()
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, env=dict(os.environ)
        )
    except FileNotFoundError:
        return CommandOutput(tuple(argv), 127, b"", b"not found", 0, 9, 0.0)
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"{shlex.join(argv)} did not finish within {timeout:.0f} s") from exc
    return CommandOutput(
        tuple(argv),
        done.returncode,
        done.stdout[:OUTPUT_LIMIT],
        done.stderr[:OUTPUT_LIMIT],
        len(done.stdout),
        len(done.stderr),
        time.monotonic() - began,
    )
