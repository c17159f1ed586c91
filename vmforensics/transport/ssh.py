"""The SSH transport: paramiko for control, the fastest verified data plane for file bytes.

Control (host-key verification, authentication, stat, listdir, remote hashes) runs on one paramiko
connection. File bytes travel, in order of preference, through the system OpenSSH client pinned to
the key paramiko verified (``openssh``: C-speed decryption in its own process), a remote ``cat`` on a
paramiko exec channel (``exec``), or pipelined SFTP reads when the server allows no commands
(``sftp``, e.g. ``ForceCommand internal-sftp``). See docs/transport-ssh.md for the measurements.
"""

from __future__ import annotations

import getpass
import io
import logging
import posixpath
import re
import shlex
import socket
import stat as statmode
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko

from vmforensics.confine import file_type
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    SourceChangedError,
    SourceError,
    UsageError,
)
from vmforensics.transport.base import ReadStream, RemoteStat, Transport
from vmforensics.transport.ssh_exec import OUTPUT_LIMIT, CommandOutput, collect, command_line
from vmforensics.transport.ssh_hostkeys import HostKeyCheck, key_fingerprint, known_hosts_name
from vmforensics.transport.ssh_openssh import OpenSSHClient, find_ssh
from vmforensics.transport.ssh_streams import (
    ChannelSource,
    DecompressingSource,
    ExactStream,
    ProcessSource,
    RawSource,
    SFTPSource,
)

log = logging.getLogger(__name__)

DATA_PLANES = ("auto", "openssh", "exec", "sftp")
#: ``compress`` values: False, True (remote zstd when present, else none), "zstd", "gzip", "ssh" (SSH zlib).
COMPRESSION = (False, True, "zstd", "gzip", "ssh")
#: paramiko rekeys every 2**29 bytes; a rekey racing a channel close stalls its transport thread.
#: OpenSSH itself rekeys 128-bit-block ciphers after 2**32 blocks (64 GiB): use the same bound.
REKEY_BYTES_128BIT_BLOCK = 1 << 36
_PROBE_MARKER = "vmforensics-exec-ok"
_TOOLS = ("zstd", "gzip", "openssl", "sha256sum", "sha1sum", "md5sum", "sha512sum")
#: zstd counts only if it takes the flags we use (``--fast`` since 1.3.4, ``-T`` in threaded builds).
_ZSTD = "zstd -q --fast=4 -T2 --no-check -c"
_TOOL_CHECKS = {"zstd": f"{_ZSTD} </dev/null"}
_DIGEST_HEX = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_NETWORK_ERRORS = (EOFError, paramiko.SSHException, socket.error)
_COMMAND_OUTPUT_LIMIT = 1 << 20


class SSHTransport(Transport):
    """Read-only file access over SSH with host-key verification on by default."""

    scheme = "ssh"

    def __init__(
        self,
        host: str,
        *,
        user: str,
        port: int = 22,
        identity: str | Path | None = None,
        password: str | None = None,
        known_hosts: str | Path | None = None,
        host_key_fingerprint: str | None = None,
        insecure_accept_any_host_key: bool = False,
        jump: SSHTransport | None = None,
        compress: bool | str = False,
        data_plane: str = "auto",
        timeout: float = 30.0,
    ):
        if not host or not isinstance(host, str):
            raise UsageError("SSH host must be a non-empty string")
        if not user:
            raise UsageError("SSH user must be given")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise UsageError(f"SSH port {port!r} is not a TCP port number")
        if data_plane not in DATA_PLANES:
            raise UsageError(f"data_plane must be one of {DATA_PLANES}, not {data_plane!r}")
        if compress not in COMPRESSION:
            raise UsageError(f"compress must be one of {COMPRESSION}, not {compress!r}")
        if identity is not None and not Path(identity).expanduser().is_file():
            raise UsageError(f"SSH identity file {identity} does not exist")
        self.host = host
        self.user = user
        self.port = port
        self._identity = str(Path(identity).expanduser()) if identity is not None else None
        self._password = password
        self._check = HostKeyCheck.from_options(
            known_hosts, host_key_fingerprint, insecure_accept_any_host_key
        )
        self._jump = jump
        self._compress = compress
        self._requested_plane = data_plane
        self._timeout = timeout
        self._name = known_hosts_name(host, port)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._host_key: paramiko.PKey | None = None
        self._tools: frozenset[str] | None = None
        self._probed = False
        self._plane: str | None = None
        self._openssh: OpenSSHClient | None = None
        self._connect()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> tuple[SSHTransport, str]:
        """``ssh://user@host:port/path`` → (transport, "/path"); other keywords pass through."""
        parts = urlsplit(url)
        if parts.scheme != "ssh":
            raise UsageError(f"not an ssh:// URL: {url!r}")
        if parts.password is not None:
            raise UsageError(
                "passwords never go in URLs; pass password= (the CLI reads VMFORENSICS_PASSWORD)"
            )
        if not parts.hostname:
            raise UsageError(f"ssh URL without a host: {url!r}")
        default_port, default_user = options.pop("port", 22), options.pop("user", None)
        try:
            port = parts.port or default_port
        except ValueError as exc:
            raise UsageError(f"bad port in {url!r}: {exc}") from exc
        user = unquote(parts.username) if parts.username else default_user or getpass.getuser()
        return cls(parts.hostname, user=user, port=port, **options), unquote(parts.path) or "/"

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        self._check.configure(client, self._name, same_as=self._host_key)
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                password=self._password,
                key_filename=self._identity,
                allow_agent=self._identity is None and self._password is None,
                look_for_keys=False,
                compress=self._compress == "ssh",
                sock=self._tunnel(),
                timeout=self._timeout,
                banner_timeout=self._timeout,
                auth_timeout=self._timeout,
                channel_timeout=self._timeout,
            )
        except HostVerificationError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._check.changed_key_error(self._name, exc.expected_key, exc.key) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthenticationError(
                f"SSH server {self._name} refused {self._auth_method()} authentication for user "
                f"{self.user!r}: {exc}"
            ) from None
        except (*_NETWORK_ERRORS, OSError) as exc:
            client.close()
            raise ConnectionError_(f"cannot connect to SSH server {self._name}: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        if transport._cipher_info[transport.remote_cipher]["block-size"] >= 16:
            transport.packetizer.REKEY_BYTES = REKEY_BYTES_128BIT_BLOCK
        self._host_key = transport.get_remote_server_key()
        self._client = client
        log.info(
            "SSH %s@%s: host key %s %s (%s)",
            self.user,
            self._name,
            self._host_key.get_name(),
            key_fingerprint(self._host_key),
            self._check.mode,
        )

    def _tunnel(self) -> paramiko.Channel | None:
        if self._jump is None:
            return None
        try:
            return self._jump.open_tunnel(self.host, self.port)
        except ConnectionError_:
            self._jump.reconnect()
            return self._jump.open_tunnel(self.host, self.port)

    def open_tunnel(self, host: str, port: int) -> paramiko.Channel:
        """A TCP connection to ``host:port`` from this server (``direct-tcpip``), for jump hosts."""
        try:
            return self._transport().open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=self._timeout
            )
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise ConnectionError_(f"jump host {self._name} cannot reach {host}:{port}: {exc}") from exc

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise ConnectionError_(f"SSH connection to {self._name} is closed")
        return transport

    def reconnect(self) -> None:
        """Dial again after a drop; the server must present the very key verified the first time."""
        self._close_control()
        self._connect()
        if self._openssh is not None:  # file bytes flow on its shared connection: dial that too
            self._openssh.start_master(self._timeout)

    def _auth_method(self) -> str:
        if self._identity:
            return "publickey"
        return "password" if self._password is not None else "agent"

    # -- metadata ------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            except (*_NETWORK_ERRORS, OSError) as exc:
                raise ConnectionError_(f"SFTP unavailable on {self._name}: {exc}") from exc
            assert self._sftp is not None
            self._sftp.get_channel().settimeout(self._timeout)
        return self._sftp

    def _error(self, path: str, exc: BaseException) -> Exception:
        """A SourceError for what the server said about the file, ConnectionError_ for a lost link."""
        alive = self._client is not None and (t := self._client.get_transport()) is not None and t.is_active()
        said_by_server = isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and alive
        if said_by_server and (exc.errno is None or isinstance(exc, (FileNotFoundError, PermissionError))):
            return SourceError(f"ssh://{self._name}{path}: {exc.strerror or exc}")
        return ConnectionError_(f"SSH connection to {self._name} lost while reading {path}: {exc}")

    def stat(self, path: str) -> RemoteStat:
        sftp = self._sftp_client()
        try:
            attributes = sftp.lstat(path)
            is_link = statmode.S_ISLNK(attributes.st_mode or 0)
            if is_link:
                try:
                    attributes = sftp.stat(path)
                except FileNotFoundError:
                    log.info("%s is a dangling symbolic link", path)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(path, exc) from exc
        return _remote_stat(path, attributes, is_link)

    def listdir(self, path: str) -> list[RemoteStat]:
        try:
            entries = self._sftp_client().listdir_attr(path)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(path, exc) from exc
        result = []
        for entry in sorted(entries, key=lambda e: e.filename):
            name = entry.filename
            if name in (".", "..") or "/" in name or "\0" in name or not name:
                log.warning("skipping impossible directory entry %r in %s", name, path)
                continue
            mode = entry.st_mode or 0
            result.append(_remote_stat(posixpath.join(path, name), entry, statmode.S_ISLNK(mode)))
        return result

    # -- data ----------------------------------------------------------------------------------

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        if offset < 0:
            raise UsageError(f"offset must be >= 0, not {offset}")
        info = self.stat(path)
        if info.is_dir:
            raise SourceError(f"ssh://{self._name}{path} is a directory")
        if offset > info.size:
            raise SourceChangedError(
                f"ssh://{self._name}{path} is now {info.size} bytes, shorter than the resume offset {offset}"
            )
        try:  # an SFTP open proves the file is readable (SourceError) before any command runs
            handle = self._sftp_client().open(path, "rb")
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(path, exc) from exc
        plane = self._data_plane()
        if info.size == offset:
            handle.close()
            return io.BytesIO(b"")
        what = f"ssh://{self.user}@{self._name}{path}"
        if plane == "sftp":
            return ExactStream(
                SFTPSource(self._sftp_client(), handle, offset, info.size, what), info.size - offset, what
            )
        handle.close()
        codec = self._codec()
        command = _read_command(path, offset, codec)
        if plane == "openssh":
            assert self._openssh is not None
            argv = self._openssh.argv(command, compression=self._compress == "ssh")
            source: RawSource = ProcessSource(argv, what, self._timeout)
        else:
            source = ChannelSource(self._exec(command), what, self._timeout)
        if codec:
            source = DecompressingSource(source, codec, what)
        log.debug("%s from offset %d via %s (%s)", what, offset, plane, codec or "uncompressed")
        return ExactStream(source, info.size - offset, what)

    # -- commands ------------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, timeout: float | None = None, output_limit: int = OUTPUT_LIMIT
    ) -> CommandOutput:
        """Run ``argv`` on the server (each argument quoted) with empty stdin; wait for its end.

        Returns the exit status and stdout/stderr, each kept up to ``output_limit`` bytes (the
        sizes say how much more there was). Raises SourceError when it does not finish within
        ``timeout`` (default: the transport's), ConnectionError_ when the link fails meanwhile.
        A connection found dropped before the command is sent is dialled again first, held to
        the host key verified at the start, as :meth:`reconnect` does.
        """
        channel = self._command_channel(command_line(argv))
        channel.shutdown_write()
        limit = timeout if timeout is not None else self._timeout
        return collect(
            channel, argv, timeout=limit, limit=output_limit, where=f"ssh://{self.user}@{self._name}"
        )

    def open_command(self, argv: Sequence[str]) -> paramiko.Channel:
        """A session channel running ``argv`` (each argument quoted), stdin open, for the caller
        to drive and close: e.g. ``["sh"]`` for a command runner that keeps one shell.

        Opened on the verified connection (dialled again, with the same host key, if it dropped).
        """
        return self._command_channel(command_line(argv))

    def _command_channel(self, command: str, *, redial: bool = True) -> paramiko.Channel:
        try:
            transport = self._transport()
        except ConnectionError_:
            if not redial:
                raise
            log.info("SSH %s: connection dropped; dialling again before running a command", self._name)
            self.reconnect()
            transport = self._transport()
        try:
            channel = transport.open_session(timeout=self._timeout)
            channel.exec_command(command)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise ConnectionError_(f"cannot run a command on {self._name}: {exc}") from exc
        return channel

    def _exec(self, command: str) -> paramiko.Channel:
        channel = self._command_channel(command, redial=False)  # the copier decides on reconnects
        try:
            channel.shutdown_write()  # the remote side's stdin is empty: nothing ever waits on it
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise ConnectionError_(f"cannot run a command on {self._name}: {exc}") from exc
        return channel

    def _run(self, command: str, timeout: float) -> tuple[int, str]:
        """Run a short command; (exit status, stdout). Output beyond 1 MiB is dropped."""
        channel = self._exec(command)
        source = ChannelSource(channel, f"{self._name}: {command}", timeout)
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := source.read_some(65536):
                if size < _COMMAND_OUTPUT_LIMIT:
                    chunks.append(chunk)
                size += len(chunk)
            if not channel.status_event.wait(timeout) or channel.exit_status < 0:
                raise ConnectionError_(f"{self._name}: {command!r} ended without an exit status")
        finally:
            source.close()
        return channel.exit_status, b"".join(chunks).decode("utf-8", "replace")

    def _remote_tools(self) -> frozenset[str] | None:
        """Which helpful commands the server has, or None when it refuses to run commands."""
        if not self._probed:
            checks = "; ".join(
                f"{_TOOL_CHECKS.get(t, f'command -v {t}')} >/dev/null 2>&1 && echo {t}" for t in _TOOLS
            )
            try:
                _status, output = self._run(f"echo {_PROBE_MARKER}; {checks}", self._timeout)
            except ConnectionError_:
                if not self._transport().is_active():
                    raise
                output = ""
            lines = output.split()
            self._tools = frozenset(lines[1:]) & set(_TOOLS) if lines[:1] == [_PROBE_MARKER] else None
            self._probed = True
            log.info(
                "SSH %s: exec %s; tools %s",
                self._name,
                "refused" if self._tools is None else "allowed",
                sorted(self._tools or ()),
            )
        return self._tools

    def _data_plane(self) -> str:
        if self._plane is None:
            self._plane = self._choose_data_plane()
            log.info("SSH %s: data plane %s", self._name, self._plane)
        return self._plane

    def _choose_data_plane(self) -> str:
        requested = self._requested_plane
        if requested == "sftp":
            return "sftp"
        if self._remote_tools() is None:
            if requested != "auto":
                raise SourceError(f"SSH server {self._name} refuses to run commands; use data_plane='sftp'")
            return "sftp"
        if requested == "exec":
            return "exec"
        reason = self._openssh_unusable_reason()
        if reason is None:
            self._openssh = OpenSSHClient(
                find_ssh() or "ssh",
                host=self.host,
                port=self.port,
                user=self.user,
                host_key=self._host_key,
                identity=self._identity,
                timeout=self._timeout,
            )
            if self._openssh.works(self._timeout):
                return "openssh"
            self._openssh.close()
            self._openssh = None
            reason = "the system ssh client could not log in without prompting"
        if requested == "openssh":
            raise UsageError(f"data_plane='openssh' impossible: {reason}")
        log.info("SSH %s: not using the system ssh client: %s", self._name, reason)
        return "exec"

    def _openssh_unusable_reason(self) -> str | None:
        if find_ssh() is None:
            return "no ssh client installed"
        if self._password is not None:
            return "password authentication (ssh would prompt)"
        if self._jump is not None:
            return "a jump host is configured"
        return None

    def _codec(self) -> str | None:
        """The remote compressor for on-the-fly compression, or None."""
        if self._compress in (False, "ssh"):
            return None
        tools = self._remote_tools() or frozenset()
        wanted = "zstd" if self._compress is True else self._compress
        if wanted in tools and (wanted != "zstd" or _zstandard_available()):
            return wanted
        if self._compress is True:  # gzip and SSH zlib top out near 100 MB/s: only worth it on slow links
            log.info("SSH %s: no remote zstd, streaming uncompressed", self._name)
            return None
        raise UsageError(f"compress={self._compress!r}: the server or this machine lacks {self._compress}")

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        """The digest computed by the server (``openssl dgst`` or ``*sum``); None where impossible."""
        if algorithm not in _DIGEST_HEX:
            return None
        tools = self._remote_tools()
        if tools is None:
            return None
        quoted = shlex.quote(path)
        if "openssl" in tools:
            command = f"openssl dgst -{algorithm} -r < {quoted}"
        elif f"{algorithm}sum" in tools:
            command = f"{algorithm}sum < {quoted}"
        else:
            return None
        size = self.stat(path).size
        status, output = self._run(command, self._timeout + size / 20e6)
        match = re.match(rf"([0-9a-fA-F]{{{_DIGEST_HEX[algorithm]}}})\b", output.strip())
        if status != 0 or not match:
            log.warning("remote %s of %s failed (exit %d): %r", algorithm, path, status, output[:200])
            return None
        return match.group(1).lower()

    # -- manifest and lifetime -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Peer, verification mode, key seen, auth method and data plane; never secrets."""
        description: dict[str, Any] = {
            "transport": self.scheme,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "host_key_type": self._host_key.get_name() if self._host_key else None,
            "host_key_fingerprint": key_fingerprint(self._host_key) if self._host_key else None,
            "host_verification": self._check.mode,
            "auth": self._auth_method(),
            "data_plane": self._plane or "not chosen yet",
            "compression": "ssh" if self._compress == "ssh" else (self._codec() if self._probed else None),
        }
        if self._check.known_hosts is not None:
            description["known_hosts"] = str(self._check.known_hosts)
        if self._jump is not None:
            description["jump"] = self._jump.describe()
        return description

    def _close_control(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (*_NETWORK_ERRORS, OSError):
                log.debug("closing SFTP on %s failed", self._name, exc_info=True)
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self._close_control()
        if self._openssh is not None:
            self._openssh.close()
            self._openssh = None


def _remote_stat(path: str, attributes: paramiko.SFTPAttributes, is_link: bool) -> RemoteStat:
    mode = attributes.st_mode or 0
    return RemoteStat(
        path=path,
        size=attributes.st_size or 0,
        mtime=float(attributes.st_mtime) if attributes.st_mtime is not None else None,
        is_dir=statmode.S_ISDIR(mode),
        is_symlink=is_link,
        kind=("symbolic link" if is_link else file_type(mode)) if attributes.st_mode is not None else None,
    )


def _read_command(path: str, offset: int, codec: str | None) -> str:
    """Remote shell command printing the file from ``offset`` (the path is untrusted: quoted)."""
    source = f"< {shlex.quote(path)}"
    compressor = {"gzip": "gzip -1 -c", "zstd": _ZSTD, None: "cat"}[codec]
    if offset == 0:
        return f"{compressor} {source}"
    skip = f"tail -c +{offset + 1} {source}"
    return skip if codec is None else f"{skip} | {compressor}"


def _zstandard_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True
