"""A real OpenSSH sshd on loopback for tests: throwaway keys, private config, free port.

Reusable by every SSH-based test (transports, libvirt, VMware over SSH)::

    with SSHServer(tmp_path) as server:
        SSHTransport(server.host, port=server.port, user=server.user,
                     identity=server.client_key, known_hosts=server.known_hosts)

``password_user=("name", "secret")`` creates that system user (CI runs as root) and turns on
password authentication; ``sftp_only=True`` forces ``internal-sftp`` so that exec is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def keygen(path: Path, key_type: str = "ed25519") -> str:
    """Create a key pair without passphrase at ``path``; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "vmforensics-test", "-f", str(path)],
        check=True,
    )
    return Path(f"{path}.pub").read_text().strip()


def fingerprint(public_key_line: str) -> str:
    """The OpenSSH ``SHA256:…`` fingerprint of a public key line (``type base64 [comment]``)."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ensure_user(name: str, password: str) -> None:
    """Create a local user with a shell and set its password (needs root)."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)


class SSHServer:
    """An OpenSSH sshd process with its own config, host key and client key in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        password_user: tuple[str, str] | None = None,
        sftp_only: bool = False,
        host_key_type: str = "ed25519",
        extra_config: str = "",
    ):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or 0
        self._fixed_port = port
        self.user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
        self.password_user = password_user
        self.sftp_only = sftp_only
        self.host_key_type = host_key_type
        self.extra_config = extra_config
        self.host_key = self.workdir / "ssh_host_key"
        self.client_key = self.workdir / "client_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.log = self.workdir / "sshd.log"
        self.pid_file = self.workdir / "sshd.pid"
        self.host_public_key = ""
        self.host_key_fingerprint = ""
        self.pid: int | None = None

    def start(self) -> SSHServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            self.host_public_key = keygen(self.host_key, self.host_key_type)
            keygen(self.client_key)
        self.host_public_key = Path(f"{self.host_key}.pub").read_text().strip()
        self.host_key_fingerprint = fingerprint(self.host_public_key)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        if self.password_user:
            ensure_user(*self.password_user)
        for _attempt in range(20):
            self.port = self._fixed_port or free_port(self.host)
            self._write_config(authorized)
            self.pid_file.unlink(missing_ok=True)
            started = subprocess.run([SSHD, "-f", str(self.config), "-E", str(self.log)])
            if started.returncode == 0 and self._wait_ready():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"sshd did not start; see {self.log}")
        self.known_hosts.write_text(f"{self.known_hosts_entry()}\n")
        return self

    def known_hosts_entry(self, port: int | None = None) -> str:
        """The known_hosts line for this server as clients dialling ``port`` look it up."""
        port = self.port if port is None else port
        name = self.host if port == 22 else f"[{self.host}]:{port}"
        key_type, blob = self.host_public_key.split()[:2]
        return f"{name} {key_type} {blob}"

    def _write_config(self, authorized: Path) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {self.pid_file}",
            "PermitRootLogin yes",
            f"PasswordAuthentication {'yes' if self.password_user else 'no'}",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        if self.sftp_only:
            lines.append("ForceCommand internal-sftp")
        self.config.write_text("\n".join(lines) + "\n" + self.extra_config)

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_file.exists() and self.pid_file.read_text().strip():
                try:
                    with socket.create_connection((self.host, self.port), timeout=1):
                        self.pid = int(self.pid_file.read_text())
                        return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        if self.pid is None:
            return []
        found = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def kill_sessions(self) -> int:
        """Kill every connection's sshd process (a cut link as the client sees it); return the count."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        if self.pid is None:
            return
        self.kill_sessions()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        self.pid = None

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
