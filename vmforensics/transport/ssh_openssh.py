"""The system OpenSSH client as the data plane, pinned to exactly the host key paramiko verified.

paramiko decrypts in Python on one thread; the ``ssh`` binary decrypts in C in its own process, so
its stdout pipe carries the file at link speed while our thread only hashes. The client is run with
no user configuration (``-F /dev/null``), no prompts (``BatchMode``), and a private known_hosts file
that holds the single key verified by the control connection under a fixed alias, with strict
checking: it connects to that key or not at all.

One *master* connection per server is kept open (OpenSSH connection sharing, ``ControlMaster``)
and every stream runs as a new session on it: a stream then starts in milliseconds instead of
paying a fresh key exchange and login (0.25-0.35 s here). A stream started while the master is
down (not up yet, or its connection cut) falls back to a connection of its own, and the next one
starts a new master.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import paramiko

log = logging.getLogger(__name__)

_ALIAS = "vmforensics-verified-host"
_PROBE = "echo vmforensics-exec-ok"


def _host_key_algorithms(key: paramiko.PKey) -> str:
    name = key.get_name()
    return "rsa-sha2-512,rsa-sha2-256,ssh-rsa" if name == "ssh-rsa" else name


class OpenSSHClient:
    """Builds ``ssh`` command lines for one verified server; owns a private known_hosts file."""

    def __init__(
        self,
        executable: str,
        *,
        host: str,
        port: int,
        user: str,
        host_key: paramiko.PKey,
        identity: str | None,
        timeout: float,
    ):
        self.executable = executable
        self._dir = Path(tempfile.mkdtemp(prefix="vmforensics-ssh-"))
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        known_hosts = self._dir / "known_hosts"
        known_hosts.write_text(f"{_ALIAS} {host_key.get_name()} {host_key.get_base64()}\n")
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": _ALIAS,
            "HostKeyAlgorithms": _host_key_algorithms(host_key),
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "ConnectTimeout": str(max(1, int(timeout))),
            "ServerAliveInterval": "10",
            "ServerAliveCountMax": "3",
            "ClearAllForwardings": "yes",
            "ForwardAgent": "no",
            "LogLevel": "ERROR",
        }
        if _cpu_has_aes():  # AES-GCM with AES-NI outruns OpenSSH's default chacha20-poly1305
            options["Ciphers"] = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
        if identity:
            options |= {"IdentityFile": identity, "IdentitiesOnly": "yes"}
        self._options = [executable, "-F", "/dev/null", "-T", "-x"]
        for name, value in options.items():
            self._options += ["-o", f"{name}={value}"]
        self._target = ["-p", str(port), "-l", user, "--", host]
        self._control = self._dir / "control"
        self._master: subprocess.Popen[bytes] | None = None

    def argv(self, remote_command: str, *, compression: bool = False, share: bool = True) -> list[str]:
        """The command line that runs ``remote_command`` (already shell-quoted) on the server.

        Uncompressed streams share the master connection (started here if it is down); SSH
        compression is a property of a connection, so those streams get their own.
        """
        shared = share and not compression and self._ensure_master()
        options = [
            *("-o", f"Compression={'yes' if compression else 'no'}"),
            *("-o", "ControlMaster=no", "-o", f"ControlPath={self._control if shared else 'none'}"),
        ]
        return [*self._options, *options, *self._target, remote_command]

    def _ensure_master(self) -> bool:
        """Whether a master process is running; starts one (in the background) if not."""
        if self._master is not None and self._master.poll() is None:
            return True
        with contextlib.suppress(FileNotFoundError):
            self._control.unlink()  # a stale socket left by a killed master
        argv = [
            *self._options,
            *("-o", "Compression=no", "-o", "ControlMaster=yes", "-o", f"ControlPath={self._control}"),
            *("-o", "ControlPersist=no", "-N"),
            *self._target,
        ]
        try:
            self._master = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            log.info("cannot start the OpenSSH master connection: %s", exc)
            self._master = None
            return False
        weakref.finalize(self, _stop, self._master)
        return True

    def works(self, timeout: float) -> bool:
        """Whether this client can log in and run a command without prompting (key or agent auth).

        Opens the master connection first, so the probe (and later the first stream) runs on it.
        """
        ready = self.start_master(timeout)
        try:
            done = subprocess.run(
                self.argv(_PROBE, share=ready), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.info("system ssh client unusable: %s", exc)
            return False
        if done.stdout.strip() == b"vmforensics-exec-ok":
            return True
        log.info(
            "system ssh client unusable (exit %d): %s",
            done.returncode,
            done.stderr.decode("utf-8", "replace").strip()[:500],
        )
        return False

    def start_master(self, timeout: float) -> bool:
        """(Re)open the shared connection and wait until it is ready (True) or has failed."""
        if self._master is not None:
            _stop(self._master)
            self._master = None
        if not self._ensure_master():
            return False
        assert self._master is not None
        deadline = time.monotonic() + timeout
        while not self._control.exists() and self._master.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._control.exists():
            return True
        log.info("OpenSSH master connection not ready; streams use connections of their own")
        return False

    def close(self) -> None:
        if self._master is not None:
            _stop(self._master)
            self._master = None
        self._remove_dir()  # also runs if the transport is never closed (garbage collection, exit)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _cpu_has_aes() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " aes " in f"{line} " for line in cpuinfo)
    except OSError:
        return False


def find_ssh() -> str | None:
    """The system OpenSSH client, if installed."""
    return shutil.which("ssh")
