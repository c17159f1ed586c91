"""A local vSphere-like datastore file server over TLS, for HTTPS transport tests.

It serves ``/folder/<path>?dcPath=…&dsName=…`` from a directory the way ESXi does: a session
cookie is required, files answer HEAD and GET with Range (206, 416), folders redirect to
``dir/`` and list themselves as an HTML table of absolute ``/folder/…`` links. Switches make it
misbehave on purpose: ``ignore_range`` (always 200 with the whole file) and ``cut_after`` (close
the connection after that many body bytes of the next GETs). ``requests`` records what clients
sent. Certificates come from :class:`TestPKI`, a throwaway CA made with ``cryptography``.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import html
import ipaddress
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TestPKI:
    """A CA and a server certificate for 127.0.0.1, 127.0.0.2 and localhost, as PEM files in ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, label: str = "vmforensics test CA"):
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(label))
            .issuer_name(_name(label))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca_cert.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.cert_path = directory / "server.pem"
        self.key_path = directory / "server.key"
        self.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        der = server_cert.public_bytes(serialization.Encoding.DER)
        self.sha256 = hashlib.sha256(der).hexdigest()
        self.sha1 = hashlib.sha1(der).hexdigest()

    @property
    def sha256_colons(self) -> str:
        """The vSphere style: ``AB:CD:…``."""
        return ":".join(self.sha256[i : i + 2] for i in range(0, len(self.sha256), 2)).upper()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Refused TLS handshakes and cut connections are what the tests do on purpose."""


class DatastoreServer:
    """Serves ``root`` as datastore ``datastore`` of datacenter ``datacenter`` on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        pki: TestPKI,
        *,
        host: str = "127.0.0.1",
        datacenter: str = "DC0",
        datastore: str = "LocalDS_0",
        cookie: str | None = 'vmware_soap_session="52e1b7a0-test-session"',
    ):
        self.root = root
        self.datacenter = datacenter
        self.datastore = datastore
        self.cookie = cookie
        self.ignore_range = False
        self.cut_after: list[int] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert_path, pki.key_path)
        self._httpd = _QuietServer((host, 0), self._handler_class())
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="httpsd", daemon=True)

    def url(self, path: str) -> str:
        query = urlencode({"dcPath": self.datacenter, "dsName": self.datastore})
        return f"https://{self.host}:{self.port}/folder/{quote(path)}?{query}"

    def start(self) -> DatastoreServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> DatastoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_DatastoreHandler):
            datastore_server = server

        return Handler


class _DatastoreHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    datastore_server: DatastoreServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``requests`` instead."""

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        ds = self.datastore_server
        with ds.lock:
            ds.requests.append((self.command, self.path, dict(self.headers.items())))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not (url.path == "/folder" or url.path.startswith("/folder/")):
            return self._status(404)
        if query.get("dcPath") != [ds.datacenter] or query.get("dsName") != [ds.datastore]:
            return self._status(404)
        if ds.cookie is not None and ds.cookie not in (self.headers.get("Cookie") or ""):
            return self._status(401)
        relative = unquote(url.path.removeprefix("/folder").lstrip("/"))
        if ".." in relative.split("/"):
            return self._status(400)
        target = ds.root / relative
        if target.is_dir():
            if relative and not url.path.endswith("/"):
                self.send_response(301)
                self.send_header("Location", f"{url.path}/?{url.query}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._listing(target, url.path.rstrip("/") + "/", url.query, body)
        if not target.is_file():
            return self._status(404)
        return self._file(target, body)

    def _status(self, code: int) -> None:
        payload = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _listing(self, directory: Path, prefix: str, query: str, body: bool) -> None:
        rows = []
        for child in sorted(directory.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            href = f"{quote(prefix + name)}?{query}"
            size = "" if child.is_dir() else str(child.stat().st_size)
            rows.append(
                f'<tr><td><a href="{html.escape(href)}">{html.escape(name)}</a></td><td>{size}</td></tr>'
            )
        page = (
            "<html><head><title>Index of datastore</title></head><body><table>"
            f'<tr><th><a href="?{html.escape(query)}&sort=name">Name</a></th><th>Size</th></tr>'
            f'<tr><td><a href="/folder?{html.escape(query)}">Parent Datacenter</a></td></tr>'
            + "".join(rows)
            + "</table></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)

    def _file(self, path: Path, body: bool) -> None:
        ds = self.datastore_server
        data = path.read_bytes()
        size = len(data)
        start = 0
        status = 200
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if wanted and not ds.ignore_range:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            data = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with ds.lock:
            budget = ds.cut_after.pop(0) if ds.cut_after else None
        if budget is None:
            self.wfile.write(data)
            return
        self.wfile.write(data[:budget])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)
