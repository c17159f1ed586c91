"""TLS for the vSphere API: a CA bundle, the system store, a pinned thumbprint, or a recorded opt-out.

pyVim disables verification for ``localhost``/``127.0.0.1`` when it is given no SSL context, and
its own thumbprint check only guards the first connection of its pool. So every connection gets
an explicit context here: for a pin, the server's certificate is fetched once, compared with the
SHA-256 (or SHA-1) thumbprint, and then made the only trust anchor of the context, so that every
later connection is held to exactly that certificate.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any

import attrs

from vmforensics.errors import ConnectionError_, HostVerificationError, UsageError
from vmforensics.transport.https import normalize_thumbprint


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in digest)


@attrs.frozen
class TLSPolicy:
    """How the server's certificate is checked; exactly one of the three options, or the system store."""

    tls_ca: str | None = None
    tls_thumbprint: str | None = attrs.field(
        default=None, converter=lambda v: normalize_thumbprint(v) if v else None
    )
    insecure: bool = False

    def __attrs_post_init__(self) -> None:
        if sum(bool(option) for option in (self.tls_ca, self.tls_thumbprint, self.insecure)) > 1:
            raise UsageError("give at most one of --tls-ca, --tls-thumbprint and --insecure")

    @property
    def mode(self) -> str:
        if self.tls_thumbprint:
            return "pinned-thumbprint"
        if self.insecure:
            return "insecure-opt-out"
        return "ca-file" if self.tls_ca else "system-ca"

    def transport_options(self) -> dict[str, Any]:
        """The same policy for the HTTPS datastore transport."""
        return {"tls_ca": self.tls_ca, "tls_thumbprint": self.tls_thumbprint, "insecure": self.insecure}

    def context(self, host: str, port: int, timeout: float = 30.0) -> tuple[ssl.SSLContext, bytes | None]:
        """An SSL context for pyVmomi and, for a pin, the certificate (DER) that matched it."""
        if self.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context, None
        if not self.tls_thumbprint:
            try:
                return ssl.create_default_context(cafile=self.tls_ca), None
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"cannot load the CA bundle {self.tls_ca}: {exc}") from exc
        der = peer_certificate(host, port, timeout)
        algorithm = "sha256" if len(self.tls_thumbprint) == 64 else "sha1"
        seen = hashlib.new(algorithm, der).hexdigest()
        if seen != self.tls_thumbprint:
            raise HostVerificationError(
                f"{host}:{port} presented a certificate with {algorithm} thumbprint "
                f"{colon_hex(bytes.fromhex(seen))}, not the pinned {colon_hex(bytes.fromhex(self.tls_thumbprint))}"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # the pin names the certificate; the host name adds nothing
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return context, der


def peer_certificate(host: str, port: int, timeout: float = 30.0) -> bytes:
    """The DER certificate the server presents (fetched without trusting it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionError_(f"cannot open a TLS connection to {host}:{port}: {exc}") from exc
    if not der:
        raise HostVerificationError(f"{host}:{port} presented no certificate")
    return der


def certificate_facts(der: bytes) -> dict[str, str]:
    """Thumbprints of a certificate, for the manifest."""
    return {
        "tls_certificate_sha256": colon_hex(hashlib.sha256(der).digest()),
        "tls_certificate_sha1": colon_hex(hashlib.sha1(der).digest()),
    }
