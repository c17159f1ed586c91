"""SMB 2/3 transport (smbprotocol): Hyper-V hosts, Windows file servers, admin shares such as C$.

Signing stays on (servers refuse unsigned tree connects, and it authenticates every reply);
SMB 3 encryption is used whenever the server asks for it, or required with ``encrypt=True``.
Reads are pipelined: several READ requests stay outstanding so the link never idles between
replies. Each transport keeps its own connection pool, so two transports never share a session.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ntpath
import struct
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import smbclient
from smbprotocol.connection import Connection
from smbprotocol.exceptions import (
    BadNetworkName,
    EndOfFile,
    LogonFailure,
    PasswordExpired,
    SMBAuthenticationError,
    SMBException,
    SMBOSError,
    SMBResponseException,
    WrongPassword,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    SourceChangedError,
    SourceError,
    UsageError,
    VMForensicsError,
)
from vmforensics.transport.base import RemoteStat, Transport

log = logging.getLogger(__name__)

Auth = Literal["ntlm", "kerberos", "negotiate"]

_DIRECTORY = 0x10  # FILE_ATTRIBUTE_DIRECTORY
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT
_DIALECTS = {0x202: "2.0.2", 0x210: "2.1", 0x300: "3.0", 0x302: "3.0.2", 0x311: "3.1.1"}
_READ_REPLY = struct.Struct("<HBxI")  # StructureSize, DataOffset (from the SMB2 header), DataLength
_SMB2_HEADER_SIZE = 64
_AUTH_ERRORS = (LogonFailure, WrongPassword, PasswordExpired, SMBAuthenticationError)


def _read_payload(body: bytes) -> memoryview:
    """The data of an SMB2 READ reply body, without copying it (MS-SMB2 2.2.20; bounds checked)."""
    if len(body) < _READ_REPLY.size:
        raise SourceError(f"malformed SMB2 READ reply: {len(body)} bytes")
    structure_size, data_offset, data_length = _READ_REPLY.unpack_from(body)
    start = data_offset - _SMB2_HEADER_SIZE if data_length else 0
    if structure_size != 17 or start < 0 or start + data_length > len(body):
        raise SourceError(f"malformed SMB2 READ reply: offset {data_offset}, length {data_length}")
    return memoryview(body)[start : start + data_length]


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn smbprotocol's exceptions into the vmforensics hierarchy, naming what was being done."""
    try:
        yield
    except VMForensicsError:
        raise
    except _AUTH_ERRORS as exc:
        raise AuthenticationError(f"{action}: the server refused the credentials ({exc})") from exc
    except BadNetworkName as exc:
        raise SourceError(f"{action}: the server has no such share") from exc
    except SMBOSError as exc:
        raise SourceError(f"{action}: {exc.strerror}") from exc
    except SMBResponseException as exc:
        raise SourceError(f"{action}: {exc.message}") from exc
    except (SMBException, OSError, EOFError) as exc:
        raise ConnectionError_(f"{action}: connection failed or dropped ({exc})") from exc


class SMBTransport(Transport):
    """Read-only access to one share of one SMB server.

    Paths are share-relative (``/VMs/web01/disk.vhdx`` or ``VMs\\web01\\disk.vhdx``); a full UNC
    path naming this server and share is accepted too.
    """

    scheme: ClassVar[str] = "smb"

    def __init__(
        self,
        host: str,
        share: str,
        *,
        user: str | None,
        password: str | None,
        port: int = 445,
        domain: str | None = None,
        auth: Auth = "ntlm",
        encrypt: bool | None = None,
        read_size: int = 2 << 20,
        outstanding_reads: int = 8,
        timeout: float = 60.0,
    ) -> None:
        """``encrypt``: None uses SMB 3 encryption when the server asks for it, True requires it."""
        if not host or not share or any(c in share for c in "\\/"):
            raise UsageError(f"SMB needs a host and a single share name, got host={host!r} share={share!r}")
        if auth not in ("ntlm", "kerberos", "negotiate"):
            raise UsageError(f"auth must be 'ntlm', 'kerberos' or 'negotiate', not {auth!r}")
        if auth == "ntlm" and (not user or password is None):
            raise UsageError("NTLM authentication needs user and password")
        if not 4096 <= read_size <= 8 << 20 or outstanding_reads < 1:
            raise UsageError("read_size must be 4 KiB..8 MiB and outstanding_reads at least 1")
        self.host = host
        self.share = share
        self.port = port
        self.user = user
        self.domain = domain
        self.auth = auth
        self.encrypt = encrypt
        self.read_size = read_size
        self.outstanding_reads = outstanding_reads
        self.timeout = timeout
        self._password = password
        self._pool: dict[str, Connection] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> tuple[SMBTransport, str]:
        """``smb://[domain;]user@host[:port]/share/path`` -> (transport, ``/path``)."""
        parts = urlsplit(url)
        if parts.scheme != "smb" or not parts.hostname:
            raise UsageError(f"not an SMB URL: {url!r} (expected smb://[domain;]user@host[:port]/share/path)")
        if parts.password is not None:
            raise UsageError(
                "do not put passwords in URLs; pass password= (the CLI reads it from VMFORENSICS_PASSWORD)"
            )
        share, _, path = unquote(parts.path).lstrip("/").partition("/")
        if not share:
            raise UsageError(f"SMB URL names no share: {url!r}")
        if parts.username:
            domain, _, user = unquote(parts.username).rpartition(";")
            options.setdefault("user", user)
            if domain:
                options.setdefault("domain", domain)
        options.setdefault("user", None)
        options.setdefault("password", None)
        if parts.port is not None:
            options.setdefault("port", parts.port)
        return cls(parts.hostname, share, **options), "/" + path

    def unc(self, path: str) -> str:
        r"""The UNC form ``\\host\share\dir\file`` of a share-relative path."""
        return self._unc(self._relative(path))

    def stat(self, path: str) -> RemoteStat:
        relative = self._relative(path)
        with _translated(f"stat {self.unc(path)}"):
            self._tree()
            result = smbclient.stat(self._unc(relative), follow_symlinks=False, **self._kwargs())
        attributes = result.st_file_attributes
        return RemoteStat(
            path=self._display(relative),
            size=result.st_size,
            mtime=(result.st_mtime_ns // 1000) / 1e6,
            is_dir=bool(attributes & _DIRECTORY),
            is_symlink=bool(attributes & _REPARSE_POINT),
        )

    def listdir(self, path: str) -> list[RemoteStat]:
        relative = self._relative(path)
        entries = []
        with _translated(f"list {self.unc(path)}"):
            self._tree()
            with smbclient.scandir(self._unc(relative), **self._kwargs()) as scan:
                for entry in scan:
                    info = entry.smb_info
                    entries.append(
                        RemoteStat(
                            path=self._display(ntpath.join(relative, info.file_name)),
                            size=info.end_of_file,
                            mtime=info.last_write_time.timestamp(),
                            is_dir=bool(info.file_attributes & _DIRECTORY),
                            is_symlink=bool(info.file_attributes & _REPARSE_POINT),
                        )
                    )
        return entries

    def open_read(self, path: str, offset: int = 0) -> SMBReadStream:
        if offset < 0:
            raise UsageError(f"offset must not be negative, got {offset}")
        unc = self.unc(path)
        with _translated(f"open {unc}"):
            self._tree()
            raw = smbclient.open_file(unc, mode="rb", buffering=0, share_access="rwd", **self._kwargs())
        return SMBReadStream(
            raw, unc, offset, read_size=self.read_size, depth=self.outstanding_reads, timeout=self.timeout
        )

    def reconnect(self) -> None:
        """Drop the cached connection (it may be half dead) and dial again with the same credentials."""
        self._drop()
        with _translated(f"reconnect to {self.host}:{self.port}"):
            self._tree()

    def describe(self) -> dict[str, Any]:
        with _translated(f"connect to {self.host}:{self.port}"):
            tree = self._tree()
        session = tree.session
        encrypted = bool(session.encrypt_data or tree.encrypt_data)
        return {
            "transport": self.scheme,
            "host": self.host,
            "port": self.port,
            "share": self.share,
            "user": self.user,
            "domain": self.domain,
            "auth": self.auth,
            "dialect": _DIALECTS.get(session.connection.dialect, hex(session.connection.dialect)),
            "signing": bool(session.signing_required),
            "encryption": encrypted,
            "verification": "kerberos" if self.auth == "kerberos" else "ntlm-session-key",
        }

    def close(self) -> None:
        self._drop()

    # -- internals ------------------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        return {"port": self.port, "connection_cache": self._pool, "connection_timeout": self.timeout}

    def _session(self) -> Session:
        """The pooled session, dialled (and authenticated) on first use or after the socket closed.

        Every dial presents a new client GUID: Samba hands a connection whose GUID it knows to the
        process already serving that client, and after a failure that process may be the hung one.
        """
        username = f"{self.domain}\\{self.user}" if self.domain and self.user else self.user
        key = f"{self.host.lower()}:{self.port}"
        try:
            connection = self._pool.get(key)
            if connection is None or not connection.transport.connected:
                connection = Connection(uuid.uuid4(), self.host, self.port, require_signing=True)
                # smbclient's calls wait for replies without a deadline; with this, the receive thread
                # probes an idle link after `timeout` s and closes it when the probe goes unanswered
                # too, which wakes every waiter (smbprotocol reads it from the instance).
                connection._receive_timeout = self.timeout
                connection.connect(timeout=self.timeout)
                self._pool[key] = connection
            return smbclient.register_session(
                self.host,
                username=username,
                password=self._password,
                port=self.port,
                encrypt=self.encrypt,
                connection_timeout=self.timeout,
                connection_cache=self._pool,
                auth_protocol=self.auth,
                require_signing=True,
            )
        except ValueError as exc:  # smbprotocol reports refused/unreachable sockets as ValueError
            raise ConnectionError_(f"cannot reach SMB server {self.host}:{self.port}: {exc}") from exc
        except SMBException as exc:
            if "encryption is required" in str(exc):
                raise ConnectionError_(f"{self.host}:{self.port} does not support SMB 3 encryption") from exc
            raise

    def _tree(self) -> TreeConnect:
        """The share's tree connection, connected here so a missing share is named as such
        (smbclient would try a DFS referral first and report a missing path instead)."""
        session = self._session()
        name = self._unc("")
        for tree in session.tree_connect_table.values():
            if tree.share_name.lower() == name.lower():
                return tree
        tree = TreeConnect(session, name)
        try:
            tree.connect(require_secure_negotiate=smbclient.ClientConfig().require_secure_negotiate)
        except BadNetworkName as exc:
            raise SourceError(f"{self.host}:{self.port} has no share named {self.share!r}") from exc
        return tree

    def _drop(self) -> None:
        for key in list(self._pool):
            connection = self._pool.pop(key)
            try:
                connection.disconnect(close=False)
            except Exception as exc:  # a dead connection may fail to close; it is gone either way
                log.debug("closing SMB connection %s: %s", key, exc)

    def _relative(self, path: str) -> str:
        r"""``dir\file`` within the share, from ``/dir/file``, ``dir\file`` or ``\\host\share\dir\file``."""
        normalized = path.replace("/", "\\")
        if normalized.startswith("\\\\"):
            host, _, rest = normalized[2:].partition("\\")
            share, _, normalized = rest.partition("\\")
            if host.lower() != self.host.lower() or share.lower() != self.share.lower():
                raise UsageError(f"{path!r} is not on \\\\{self.host}\\{self.share}")
        return "\\".join(part for part in normalized.split("\\") if part and part != ".")

    def _unc(self, relative: str) -> str:
        return "\\".join(filter(None, [f"\\\\{self.host}", self.share, relative]))

    @staticmethod
    def _display(relative: str) -> str:
        return "/" + relative.replace("\\", "/")


class SMBReadStream:
    """A file's bytes from ``offset`` to the size it had when opened, with pipelined READs.

    Replies arrive in the order requests were sent; a reply shorter than asked for is completed by
    a follow-up request, and a file that ends early raises SourceChangedError rather than
    pretending to be at its end.
    """

    def __init__(self, raw: Any, name: str, offset: int, *, read_size: int, depth: int, timeout: float):
        self._raw = raw
        self._open = raw.fd
        self._connection = self._open.connection
        self._name = name
        self._timeout = timeout
        self.size: int = self._open.end_of_file
        self._chunk = min(read_size, self._connection.max_read_size)
        self._depth = depth
        self._next_request = offset
        self._pending: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._current = memoryview(b"")
        self._position = offset
        self._broken = False

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (fewer bytes only at the end of the file); 0 at the end."""
        filled = 0
        while filled < len(buffer):
            if not self._current:
                if self._position >= self.size:
                    break
                try:
                    with _translated(f"read {self._name} at offset {self._position}"):
                        self._current = self._next_reply()
                except ConnectionError_:
                    self._broken = True
                    raise
            count = min(len(buffer) - filled, len(self._current))
            buffer[filled : filled + count] = self._current[:count]
            self._current = self._current[count:]
            self._position += count
            filled += count
        return filled

    def close(self) -> None:
        """Collect replies still in flight (so the connection stays usable), then close the handle.

        After a connection failure nothing is sent: the link may hang, and reconnect() drops it
        (with the handle) anyway."""
        if self._broken:
            return
        with contextlib.suppress(SMBException, OSError):
            while self._pending:
                self._connection.receive(self._pending.popleft()[2], timeout=self._timeout)
        with contextlib.suppress(SMBException, OSError, ValueError):
            self._raw.close()

    def __enter__(self) -> SMBReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_reply(self) -> memoryview:
        self._fill_pipeline()
        offset, length, request = self._pending.popleft()
        try:
            reply = self._connection.receive(request, timeout=self._timeout)
        except EndOfFile as exc:
            raise SourceChangedError(
                f"{self._name} ended at {offset} bytes while {self.size} were expected (it shrank)"
            ) from exc
        except (SMBException, OSError):
            raise
        except Exception as exc:  # the receive thread died of something else: the connection is gone
            if self._connection.transport.connected:
                raise
            raise ConnectionError_(f"connection lost while reading {self._name}: {exc!r}") from exc
        data = _read_payload(reply["data"].get_value())
        if not data:
            raise SourceChangedError(f"{self._name}: empty read at offset {offset} of {self.size} bytes")
        if len(data) > length:
            raise SourceError(f"{self._name}: server returned {len(data)} bytes for a {length}-byte read")
        if len(data) < length:
            self._pending.appendleft(self._send(offset + len(data), length - len(data)))
        return data

    def _fill_pipeline(self) -> None:
        while self._next_request < self.size and len(self._pending) < self._depth:
            length = min(self._chunk, self.size - self._next_request)
            if self._pending and not self._has_credits(length):
                break
            self._pending.append(self._send(self._next_request, length))
            self._next_request += length

    def _has_credits(self, length: int) -> bool:
        window = self._connection.sequence_window
        return window["high"] - window["low"] >= (length - 1) // 65536 + 1

    def _send(self, offset: int, length: int) -> tuple[int, int, Any]:
        message, _ = self._open.read(offset, length, send=False)
        session_id = self._open.tree_connect.session.session_id
        tree_id = self._open.tree_connect.tree_connect_id
        charge = (length - 1) // 65536 + 1
        request = self._connection.send(message, session_id, tree_id, credit_request=max(charge, 64))
        return offset, length, request
