"""A real Samba smbd on 127.0.0.1 for tests: private smb.conf, one system user, any port.

Usage::

    with SmbServer({"evidence": "/srv/case"}) as server:
        SMBTransport("127.0.0.1", "evidence", user=server.user, password=server.password,
                     port=server.port)

Everything smbd writes (config, passdb, locks, logs, pid) lives in a temporary directory that
``stop()`` removes. The share user is a system account created with ``useradd -M`` and removed
again on stop; shared directories and files must be readable by it (or pass ``force_user``).
Needs root and the Debian ``samba`` package (``smbd``, ``smbpasswd``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

SMBD = shutil.which("smbd") or "/usr/sbin/smbd"
SMBPASSWD = shutil.which("smbpasswd") or "/usr/bin/smbpasswd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run_with_retry(argv: list[str], *, input_text: str | None = None, tries: int = 20) -> None:
    """Run a user-database command, retrying while another process holds /etc/passwd's lock."""
    for attempt in range(tries):
        done = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if "lock" not in (done.stderr + done.stdout).lower() or attempt == tries - 1:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
        time.sleep(0.2)


class SmbServer:
    """One smbd process serving ``shares`` (name -> directory) to one user on 127.0.0.1."""

    def __init__(
        self,
        shares: Mapping[str, str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        encrypt: str = "if_required",
        force_user: str | None = None,
        extra_global: Mapping[str, str] | None = None,
    ) -> None:
        """``encrypt`` is Samba's ``server smb encrypt`` (off, if_required, desired, required)."""
        self.shares = {name: Path(path) for name, path in shares.items()}
        self.host = host
        self.port = port or free_port(host)
        self.user = user or f"vmf{secrets.token_hex(4)}"
        self.password = password or secrets.token_urlsafe(12)
        self.encrypt = encrypt
        self.force_user = force_user
        self.extra_global = dict(extra_global or {})
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._created_user = False

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "smb.conf"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "log" / "smbd.log"

    def unc(self, share: str, *parts: str) -> str:
        r"""``\\host\share\parts…`` for this server."""
        return "\\".join([f"\\\\{self.host}", share, *parts])

    def start(self, timeout: float = 15.0) -> SmbServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="vmf-smbd-"))
        for sub in ("private", "lock", "state", "cache", "pid", "log", "ncalrpc"):
            (self.workdir / sub).mkdir()
        self._ensure_user()
        self.config_path.write_text(self._config_text())
        _run_with_retry(
            [SMBPASSWD, "-c", str(self.config_path), "-s", "-a", self.user],
            input_text=f"{self.password}\n{self.password}\n",
            tries=3,
        )
        self.process = subprocess.Popen(
            [SMBD, "-F", "--no-process-group", "-s", str(self.config_path), "--debug-stdout", "-d", "1"],
            stdout=(self.workdir / "log" / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            self.process = None
        if self._created_user:
            subprocess.run(["userdel", self.user], capture_output=True, check=False)
            self._created_user = False
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def connection_pids(self) -> list[int]:
        """Pids of the smbd children serving client connections (one per connection).

        Stop one (SIGSTOP) to hang a client's link, kill one to drop it as a crashed server would.
        """
        assert self.process is not None, "server not started"
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        pids = []
        for pid in map(int, children):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "smbd":
                    pids.append(pid)
        return pids

    def __enter__(self) -> SmbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ensure_user(self) -> None:
        exists = subprocess.run(["id", "-u", self.user], capture_output=True, check=False).returncode == 0
        if not exists:
            _run_with_retry(["useradd", "-M", "-s", "/usr/sbin/nologin", self.user])
            self._created_user = True

    def _config_text(self) -> str:
        assert self.workdir is not None
        work = self.workdir
        lines = [
            "[global]",
            "server role = standalone server",
            f"smb ports = {self.port}",
            f"interfaces = {self.host}/8",
            "bind interfaces only = yes",
            "disable netbios = yes",
            "server min protocol = SMB2_10",
            f"server smb encrypt = {self.encrypt}",
            "map to guest = Never",
            "load printers = no",
            "printing = bsd",
            "printcap name = /dev/null",
            "disable spoolss = yes",
            f"passdb backend = tdbsam:{work / 'private' / 'passdb.tdb'}",
            f"private dir = {work / 'private'}",
            f"lock directory = {work / 'lock'}",
            f"state directory = {work / 'state'}",
            f"cache directory = {work / 'cache'}",
            f"pid directory = {work / 'pid'}",
            f"ncalrpc dir = {work / 'ncalrpc'}",
            f"log file = {work / 'log' / 'smbd.log'}",
            "max log size = 0",
        ]
        lines += [f"{key} = {value}" for key, value in self.extra_global.items()]
        for name, path in self.shares.items():
            lines += [
                "",
                f"[{name}]",
                f"path = {path}",
                "read only = yes",
                f"valid users = {self.user}",
            ]
            if self.force_user:
                lines.append(f"force user = {self.force_user}")
        return "\n".join(lines) + "\n"

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                assert self.workdir is not None
                log = (self.workdir / "log" / "stdout.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"smbd exited with status {code}: {log[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"smbd did not listen on {self.host}:{self.port} within {timeout} s")
