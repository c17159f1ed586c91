"""An RFC 3161 time-stamping authority on loopback whose tokens come from ``openssl ts -reply``.

The HTTP front (a few lines of http.server) only carries bytes: each POSTed query is written to a
file and answered by OpenSSL's own TSA implementation with a time-stamping certificate issued by a
test CA. ``clock`` runs OpenSSL under libfaketime (Debian ``faketime``) for a TSA whose clock is
wrong, which is how the tests make a token older than the acquisition.
"""

from __future__ import annotations

import http.server
import subprocess
import tempfile
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tests.custody.pki import TestCA, name, write_certificates, write_private_key

POLICY = "1.3.6.1.4.1.99999.1.1"

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/ca.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = {policy}
other_policies = 1.3.6.1.4.1.99999.1.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


class OpenSSLTSA:
    """A TSA at ``url``; ``requests`` counts the queries answered. Use as a context manager."""

    def __init__(
        self, directory: Path, ca: TestCA, *, clock: str | None = None, common_name: str = "Test TSA"
    ):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = ca.issue(name(common_name), key.public_key(), time_stamping=True)
        self.key_path = write_private_key(directory / "tsa.key", key)
        self.cert_path = write_certificates(directory / "tsa.pem", self.certificate)
        write_certificates(directory / "ca.pem", ca.certificate)
        (directory / "serial").write_text("01\n")
        self.config = directory / "tsa.cnf"
        self.config.write_text(_CONFIG.format(dir=directory, policy=POLICY))
        self.clock = clock
        self.requests = 0
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/tsa"

    def reply(self, query: bytes) -> bytes:
        """OpenSSL's answer to one DER TimeStampReq."""
        with self._lock, tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            query_file, reply_file = Path(scratch, "query.tsq"), Path(scratch, "reply.tsr")
            query_file.write_bytes(query)
            command = [
                "openssl", "ts", "-reply", "-config", str(self.config), "-queryfile", str(query_file),
                "-out", str(reply_file),
            ]  # fmt: skip
            if self.clock:
                command = ["faketime", "-f", self.clock, *command]
            subprocess.run(command, check=True, capture_output=True, timeout=30)
            self.requests += 1
            return reply_file.read_bytes()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        tsa = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if self.headers.get("Content-Type") != "application/timestamp-query" or length > 65536:
                    self.send_error(400, "expected an application/timestamp-query")
                    return
                body = tsa.reply(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> OpenSSLTSA:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def closed_port_url() -> str:
    """A TSA URL nobody listens on (the port was bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tsa"
