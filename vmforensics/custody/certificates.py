"""Signer certificates: the examiner's X.509 chain beside the manifest, proven through the lab's CA.

The chain (leaf first, then any intermediates) is stored at seal time as
``manifest.json.chain.pem``; its leaf must certify the signing key. ``verify(..., ca=PEM)`` builds
a path from the leaf to the CA with cryptography's X.509 verifier, requires key usage
digitalSignature, and checks validity at the timestamp's genTime when a verified token exists,
else at the seal time (the manifest's ``finished``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from vmforensics.errors import SigningKeyError

if TYPE_CHECKING:
    from vmforensics.custody.models import Manifest

CHAIN_NAME = "manifest.json.chain.pem"
#: A stored chain larger than this is not read (a leaf and a few intermediates are a few KiB).
MAX_CHAIN_BYTES = 1 << 20
MAX_CHAIN_DEPTH = 8


def load_certificates(
    source: str | os.PathLike[str] | bytes, *, what: str = "certificate"
) -> list[x509.Certificate]:
    """Every certificate of a PEM file (or PEM bytes), in file order; at least one."""
    if isinstance(source, bytes):
        data, label = source, what
    else:
        label = os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_CHAIN_BYTES + 1)
        except OSError as exc:
            raise SigningKeyError(f"cannot read {what} file {label!r}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CHAIN_BYTES:
        raise SigningKeyError(f"{label}: larger than {MAX_CHAIN_BYTES} bytes; not a certificate file")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise SigningKeyError(f"{label}: not a PEM {what}: {exc}") from exc
    return certificates


def chain_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def subject_of(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def validate_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    ee_policy: ExtensionPolicy,
) -> list[x509.Certificate]:
    """The path from ``leaf`` to one of ``roots`` valid at ``at``; raises VerificationError."""
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(at)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        return verifier.verify(leaf, list(intermediates)).chain
    except VerificationError as exc:  # without cryptography's "(encountered processing <Certificate…>)"
        raise VerificationError(str(exc).split(" (encountered processing")[0]) from exc


def _require_digital_signature(
    policy: Policy, certificate: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is None or not usage.digital_signature:
        raise ValueError("the certificate's key usage does not include digitalSignature")


#: The examiner's certificate: key usage digitalSignature (critical or not); other extensions free.
SIGNER_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.KeyUsage, Criticality.AGNOSTIC, _require_digital_signature
)


@attrs.frozen
class SignerCheck:
    """The verdict on the stored signer chain: VERIFIED with the leaf's subject, or FAILED and why."""

    status: str  # VERIFIED, FAILED, MISSING
    subject: str | None = None
    issuer: str | None = None
    checked_at: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "VERIFIED"


def stored_chain(root: Path) -> list[x509.Certificate] | None:
    """The chain stored beside the manifest, or None when there is none (a regular file only)."""
    path = root / CHAIN_NAME
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise SigningKeyError(f"{CHAIN_NAME} is not a regular file")
    return load_certificates(path, what="certificate chain")


def check_signer(
    root: Path, key_id: str | None, ca: str | os.PathLike[str] | bytes, at: dt.datetime
) -> tuple[SignerCheck, x509.Certificate | None]:
    """Prove the stored chain's leaf through ``ca`` at ``at``; the leaf must certify ``key_id``.

    ``key_id`` is the key the manifest names as signer. Returns the verdict and the leaf (whose
    public key then verifies the signature).
    """
    from vmforensics.custody.signing import VerifyKey

    roots = load_certificates(ca, what="CA certificate")
    when = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        chain = stored_chain(root)
    except SigningKeyError as exc:
        return SignerCheck("FAILED", checked_at=when, problems=(f"signer certificate: {exc}",)), None
    if chain is None:
        return SignerCheck(
            "MISSING",
            checked_at=when,
            problems=(f"signer certificate: no {CHAIN_NAME}; the manifest was signed by a bare key",),
        ), None
    leaf, intermediates = chain[0], chain[1:]
    subject = subject_of(leaf)
    try:
        leaf_key = VerifyKey(leaf.public_key())  # type: ignore[arg-type]
    except SigningKeyError as exc:
        return SignerCheck("FAILED", subject, checked_at=when, problems=(f"signer certificate: {exc}",)), None
    if key_id is not None and leaf_key.key_id != key_id:
        return SignerCheck(
            "FAILED",
            subject,
            checked_at=when,
            problems=(
                f'signer certificate "{subject}" certifies key {leaf_key.key_id}, '
                f"but the manifest was signed by {key_id}",
            ),
        ), None
    try:
        path = validate_chain(leaf, intermediates, roots, at, SIGNER_POLICY)
    except VerificationError as exc:
        return SignerCheck(
            "FAILED",
            subject,
            checked_at=when,
            problems=(f'signer certificate "{subject}" is not valid through the given CA at {when}: {exc}',),
        ), None
    return SignerCheck("VERIFIED", subject, subject_of(path[-1]), when), leaf


def signer_anchor(
    root: Path,
    manifest: Manifest,
    ca: str | os.PathLike[str] | bytes,
    checks: Iterable[Any],
    signature_status: str,
) -> tuple[str, str]:
    """(status, description) of the certificate anchor for verify's verdict.

    Validity is checked at the genTime of the first proven timestamp, else at the seal.
    """
    from vmforensics.custody.timestamps import first_verified

    at = first_verified(checks) or dt.datetime.fromisoformat(manifest.finished.replace("Z", "+00:00"))
    check, _ = check_signer(root, manifest.integrity.signer_key_id, ca, at)
    if not check.ok:
        return "FAILED", "; ".join(check.problems)
    if signature_status != "VALID":
        return "FAILED", f'certificate "{check.subject}": the manifest\'s signature does not verify'
    return "VERIFIED", f'certificate "{check.subject}" via CA "{check.issuer}" (valid at {check.checked_at})'
