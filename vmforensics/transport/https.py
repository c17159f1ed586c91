"""vSphere datastore downloads over HTTPS: ``/folder/<path>?dcPath=…&dsName=…`` with the API session.

ESXi and vCenter serve datastore files at ``/folder`` to a client that presents the SOAP session
cookie (``vmware_soap_session=…``); that is how files leave ESXi when SSH is off, its default.
TLS is verified against a CA bundle (or the system store), or by a pinned certificate thumbprint;
turning verification off is an explicit, recorded opt-out. Resume uses HTTP Range requests, and a
server that ignores Range is detected (the bytes before the offset are skipped, never delivered).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import html.parser
import logging
import re
import ssl
import warnings
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, InsecureRequestWarning, SSLError

from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    SourceError,
    UsageError,
)
from vmforensics.transport.base import RemoteStat, Transport

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")
_SKIP_CHUNK = 1 << 20
_MAX_LISTING = 16 << 20  # an HTML index larger than this is not a datastore folder listing


def normalize_thumbprint(value: str) -> str:
    """Normalise a SHA-256 or SHA-1 certificate thumbprint (hex, colons optional) to lowercase hex."""
    digits = value.strip().lower().removeprefix("sha256:").removeprefix("sha1:").replace(":", "")
    if len(digits) not in (40, 64) or not re.fullmatch(r"[0-9a-f]+", digits):
        raise UsageError(
            f"tls_thumbprint must be a SHA-256 (64 hex digits) or SHA-1 (40) certificate digest, got {value!r}"
        )
    return digits


def _cookie_pair(value: str) -> str:
    """The ``name=value`` pair of a cookie, without Set-Cookie attributes (``; Path=/; Secure``)."""
    pair = value.split(";", 1)[0].strip()
    name, equals, _ = pair.partition("=")
    if not equals or not name.strip() or any(c in pair for c in "\r\n\0,"):
        raise UsageError('cookie must be the API session\'s name=value pair, e.g. vmware_soap_session="…"')
    return pair


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in digest)


class HTTPSDatastoreTransport(Transport):
    """Read-only access to one datastore through a vCenter or ESXi host's ``/folder`` service.

    Paths are datastore-relative (``web01/web01-flat.vmdk``); the ``[datastore] web01/…`` form of
    vSphere is accepted when it names this datastore.
    """

    scheme: ClassVar[str] = "https"

    def __init__(
        self,
        host: str,
        *,
        port: int = 443,
        cookie: str | None = None,
        datacenter: str,
        datastore: str,
        tls_ca: str | None = None,
        tls_thumbprint: str | None = None,
        insecure: bool = False,
        timeout: float = 60.0,
    ) -> None:
        """``cookie`` is the API session's ``vmware_soap_session=…`` (pyVmomi's ``si._stub.cookie``
        may be passed as is: its attributes such as ``Path`` are dropped);
        ``tls_thumbprint`` pins the server certificate's SHA-256 (or SHA-1) digest instead of
        checking its chain; ``insecure`` turns verification off (recorded in the manifest)."""
        if not host or not datacenter or not datastore:
            raise UsageError("HTTPS datastore access needs host, datacenter and datastore")
        if sum(bool(option) for option in (tls_ca, tls_thumbprint, insecure)) > 1:
            raise UsageError("give at most one of --tls-ca, --tls-thumbprint and --insecure")
        self.host = host
        self.port = port
        self.datacenter = datacenter
        self.datastore = datastore
        self.tls_ca = tls_ca
        self.insecure = insecure
        self.timeout = timeout
        self._cookie = _cookie_pair(cookie) if cookie is not None else None
        self._pin = normalize_thumbprint(tls_thumbprint) if tls_thumbprint else None
        self._seen_certificates: list[str] = []
        self.range_ignored = False
        self._pool = self._new_pool()

    @property
    def verification(self) -> str:
        """How the server's certificate is checked: pinned, ca-file, system-ca or insecure-opt-out."""
        if self._pin:
            return "pinned"
        if self.insecure:
            return "insecure-opt-out"
        return "ca-file" if self.tls_ca else "system-ca"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> tuple[HTTPSDatastoreTransport, str]:
        """``https://host[:port]/folder/<path>?dcPath=…&dsName=…`` -> (transport, ``<path>``)."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"not an HTTPS datastore URL: {url!r}")
        if parts.username or parts.password:
            raise UsageError("do not put credentials in URLs; pass the API session's cookie= instead")
        if not (parts.path == "/folder" or parts.path.startswith("/folder/")):
            raise UsageError(
                f"{url!r} is not under /folder (expected https://host/folder/<path>?dcPath=…&dsName=…)"
            )
        query = parse_qs(parts.query)
        for key, option in (("dcPath", "datacenter"), ("dsName", "datastore")):
            if key in query:
                options.setdefault(option, query[key][0])
            elif option not in options:
                raise UsageError(
                    f"{url!r} lacks {key}= (the datacenter path and datastore name are required)"
                )
        if parts.port is not None:
            options.setdefault("port", parts.port)
        path = unquote(parts.path.removeprefix("/folder").lstrip("/"))
        return cls(parts.hostname, **options), path

    # -- Transport ------------------------------------------------------------------------------

    def stat(self, path: str) -> RemoteStat:
        relative = self._relative(path)
        response = self._request("HEAD", relative, f"stat {relative}", allow=(301,))
        response.release_conn()  # a HEAD reply has no body: the connection can be reused
        if response.status == 301:  # a folder: the server redirects to its index, ``dir/``
            location = urlsplit(response.headers.get("Location", "")).path
            if not location.endswith("/"):
                raise SourceError(f"{self._describe_path(relative)}: unexpected redirect to {location!r}")
            return RemoteStat(path=relative.rstrip("/"), size=0, is_dir=True)
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise SourceError(f"{self._describe_path(relative)}: the server sent no usable Content-Length")
        return RemoteStat(path=relative, size=int(length), mtime=_last_modified(response.headers))

    def listdir(self, path: str) -> list[RemoteStat]:
        """Entries of a datastore folder, from the HTML index ``/folder/<dir>/`` returns."""
        relative = self._relative(path)
        directory = relative.rstrip("/") + "/" if relative.strip("/") else ""
        response = self._request("GET", directory, f"list {relative or '/'}")
        body = b""
        try:
            content_type = response.headers.get("Content-Type", "")
            if "html" not in content_type.lower():
                raise UsageError(
                    f"{self._describe_path(relative)} did not return a folder index ({content_type or 'no type'}); "
                    "enumerate this datastore with the vSphere API's datastore browser instead"
                )
            body = response.read(_MAX_LISTING + 1, decode_content=True)
        except HTTPError as exc:
            raise ConnectionError_(f"listing {relative}: {exc}") from exc
        finally:
            _discard(response)
        if len(body) > _MAX_LISTING:
            raise SourceError(f"folder index of {relative!r} is larger than {_MAX_LISTING} bytes")
        base = self._url(directory)
        entries = []
        for name, is_dir in _index_entries(body.decode("utf-8", "replace"), base):
            child = directory + name
            entries.append(RemoteStat(path=child, size=0, is_dir=True) if is_dir else self.stat(child))
        return entries

    def open_read(self, path: str, offset: int = 0) -> HTTPSReadStream:
        if offset < 0:
            raise UsageError(f"offset must not be negative, got {offset}")
        relative = self._relative(path)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._request("GET", relative, f"read {relative}", headers=headers, allow=(416,))
        try:
            return self._stream(response, relative, offset)
        except BaseException:
            _discard(response)
            raise

    def reconnect(self) -> None:
        """Close every pooled connection; the next request dials again with the same verification."""
        self._pool.close()
        self._pool = self._new_pool()

    def describe(self) -> dict[str, Any]:
        if not self._seen_certificates:
            _discard(self._request("HEAD", "", "connect", allow=tuple(range(200, 600))))
        facts: dict[str, Any] = {
            "transport": self.scheme,
            "host": self.host,
            "port": self.port,
            "datacenter": self.datacenter,
            "datastore": self.datastore,
            "verification": self.verification,
            "tls_certificate_sha256": self._seen_certificates[-1],
            "session_cookie": self._cookie is not None,
        }
        if len(self._seen_certificates) > 1:
            facts["tls_certificates_seen_sha256"] = list(self._seen_certificates)
        if self._pin:
            facts["tls_thumbprint_pinned"] = self._pin
        if self.range_ignored:
            facts["range_requests"] = "ignored by the server; resumed reads re-downloaded the skipped bytes"
        return facts

    def close(self) -> None:
        self._pool.close()

    # -- internals ------------------------------------------------------------------------------

    def _new_pool(self) -> urllib3.HTTPSConnectionPool:
        tls: dict[str, Any]
        if self._pin:
            tls = {"cert_reqs": ssl.CERT_NONE, "assert_fingerprint": self._pin, "assert_hostname": False}
        elif self.insecure:
            tls = {"cert_reqs": ssl.CERT_NONE, "assert_hostname": False}
        elif self.tls_ca:
            tls = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": self.tls_ca}
        else:
            tls = {"cert_reqs": ssl.CERT_REQUIRED}
        return urllib3.HTTPSConnectionPool(
            self.host,
            self.port,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            retries=False,
            maxsize=4,
            **tls,
        )

    def _relative(self, path: str) -> str:
        """Datastore-relative path from ``dir/file``, ``/dir/file`` or ``[datastore] dir/file``."""
        match = re.fullmatch(r"\[([^\]]*)\]\s*(.*)", path)
        if match:
            if match.group(1) != self.datastore:
                raise UsageError(f"{path!r} is on datastore {match.group(1)!r}, not {self.datastore!r}")
            path = match.group(2)
        if any(c in path for c in "\r\n\0") or ".." in path.split("/"):
            raise UsageError(f"unusable datastore path {path!r}")
        return path.lstrip("/")

    def _url(self, relative: str) -> str:
        query = urlencode({"dcPath": self.datacenter, "dsName": self.datastore})
        return f"/folder/{quote(relative, safe='/')}?{query}"

    def _describe_path(self, relative: str) -> str:
        return f"[{self.datastore}] {relative} on {self.host}:{self.port}"

    def _request(
        self,
        method: str,
        relative: str,
        action: str,
        *,
        headers: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; map TLS, network and HTTP failures to vmforensics errors."""
        all_headers = {"Accept-Encoding": "identity", **(headers or {})}
        if self._cookie:
            all_headers["Cookie"] = self._cookie
        where = self._describe_path(relative)
        try:
            with warnings.catch_warnings():
                if self.insecure:
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                response = self._pool.urlopen(
                    method,
                    self._url(relative),
                    headers=all_headers,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                    assert_same_host=True,
                )
        except SSLError as exc:
            raise HostVerificationError(
                f"{action}: the TLS certificate of {self.host}:{self.port} was refused "
                f"({self.verification} verification): {exc}"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise ConnectionError_(f"{action}: cannot reach {self.host}:{self.port}: {exc}") from exc
        self._note_certificate(response)
        status = response.status
        if 200 <= status < 300 or status in allow:
            return response
        try:
            reason = response.read(2048, decode_content=False).decode("utf-8", "replace").strip()[:200]
        except (HTTPError, OSError):
            reason = ""
        _discard(response)
        message = f"{action}: {where}: HTTP {status} {response.reason or ''} {reason}".rstrip()
        if status in (401, 403):
            raise AuthenticationError(message + " (is the API session cookie valid?)")
        if status in (502, 503, 504):
            raise ConnectionError_(message)
        raise SourceError(message)

    def _note_certificate(self, response: urllib3.BaseHTTPResponse) -> None:
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if not isinstance(sock, ssl.SSLSocket):
            return
        der = sock.getpeercert(binary_form=True)
        if der:
            fingerprint = _colon_hex(hashlib.sha256(der).digest())
            if fingerprint not in self._seen_certificates:
                self._seen_certificates.append(fingerprint)

    def _stream(self, response: urllib3.BaseHTTPResponse, relative: str, offset: int) -> HTTPSReadStream:
        headers = response.headers
        name = self._describe_path(relative)
        encoding = headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("identity", ""):
            raise SourceError(f"{name}: the server sent {encoding}-encoded content; raw bytes are required")
        if response.status == 416:
            match = _UNSATISFIED_RANGE.match(headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                return HTTPSReadStream(response, name, remaining=0)
            raise SourceError(f"{name}: offset {offset} is beyond the end of the file")
        length = headers.get("Content-Length")
        body_length = int(length) if length is not None and length.isdigit() else None
        if response.status == 206:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise SourceError(
                    f"{name}: asked for bytes from {offset}, got Content-Range {headers.get('Content-Range')!r}"
                )
            start, end = int(match.group(1)), int(match.group(2))
            if match.group(3) != "*" and end + 1 != int(match.group(3)):
                raise SourceError(f"{name}: partial reply {start}-{end} does not reach the end of the file")
            if body_length is not None and body_length != end - start + 1:
                raise SourceError(
                    f"{name}: Content-Length {body_length} contradicts Content-Range {start}-{end}"
                )
            return HTTPSReadStream(response, name, remaining=end - start + 1)
        if body_length is None:
            raise SourceError(
                f"{name}: the server sent no Content-Length, so a truncated reply could not be told"
            )
        stream = HTTPSReadStream(response, name, remaining=body_length)
        if offset:
            log.warning("%s: the server ignored the Range request; skipping %d bytes it resent", name, offset)
            self.range_ignored = True
            stream.skip(offset)
        return stream


class HTTPSReadStream:
    """The body of one GET; ends exactly after the announced length, or raises ConnectionError_."""

    def __init__(self, response: urllib3.BaseHTTPResponse, name: str, *, remaining: int):
        self._response = response
        self._name = name
        self.remaining = remaining

    def readinto(self, buffer: memoryview) -> int:
        if not self.remaining:
            return 0
        want = min(len(buffer), self.remaining)
        try:
            count = self._response.readinto(buffer[:want])
        except (HTTPError, OSError, ValueError) as exc:
            raise ConnectionError_(
                f"{self._name}: connection lost with {self.remaining} bytes to go: {exc}"
            ) from exc
        if count <= 0:
            raise ConnectionError_(f"{self._name}: the reply ended {self.remaining} bytes early")
        self.remaining -= count
        return count

    def skip(self, count: int) -> None:
        """Read and drop ``count`` bytes (a server that ignored Range sends them again)."""
        if count > self.remaining:
            raise SourceError(f"{self._name}: cannot skip to {count}, only {self.remaining} bytes follow")
        scratch = memoryview(bytearray(min(_SKIP_CHUNK, count) or 1))
        while count:
            count -= self.readinto(scratch[: min(len(scratch), count)])

    def close(self) -> None:
        """Release the connection; one with unread body bytes is closed rather than reused.

        A body read to its announced end (or an empty one, never read at all) must still be
        finished in http.client before its connection is reused: the pool would hand out a
        connection whose previous response is open and the next request would fail.
        """
        if self.remaining or self._response.length_remaining != 0:
            _discard(self._response)
        else:
            with contextlib.suppress(HTTPError, OSError):
                self._response.drain_conn()  # reads nothing: the announced length is exhausted
                self._response.release_conn()

    def __enter__(self) -> HTTPSReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close a response whose body is not wanted (a pooled connection must not keep unread bytes)."""
    with contextlib.suppress(HTTPError, OSError):
        response.close()
        response.release_conn()


def _last_modified(headers: Any) -> float | None:
    value = headers.get("Last-Modified")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class _LinkCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for key, value in attrs if key == "href" and value)


def _index_entries(page: str, base: str) -> list[tuple[str, bool]]:
    """(name, is_dir) for each link in a folder index that points one level below ``base``.

    Works for ESXi's table of absolute ``/folder/…?dcPath=…`` links and for plain relative
    links; parent, sort and unrelated links are ignored. Names are untrusted: no ``/``, ``..``.
    """
    prefix = urlsplit(base).path
    collector = _LinkCollector()
    collector.feed(page)
    entries: dict[str, bool] = {}
    for href in collector.hrefs:
        target = urlsplit(urljoin(base, href))
        if not target.path.startswith(prefix) or target.path == prefix:
            continue
        rest = unquote(target.path[len(prefix) :])
        is_dir = rest.endswith("/")
        name = rest.rstrip("/")
        if not name or "/" in name or name in (".", "..") or any(c in name for c in "\r\n\0"):
            continue
        entries[name] = is_dir
    return sorted(entries.items())
