"""Examiner signing keys: Ed25519 by default, ECDSA P-256 and RSA-PSS (>= 3072 bits) accepted.

Any :class:`Signer` seals: a :class:`SigningKey` (a PEM file) or a ``PKCS11Key`` (a hardware
token). Either may carry the examiner's X.509 chain (leaf first), stored beside the manifest.

A key's id is ``sha256:`` + the hex SHA-256 of its public key in DER SubjectPublicKeyInfo form, so
anyone can recompute it with ``openssl pkey -pubin -outform DER | sha256sum``. Signatures are
detached, over the exact canonical bytes of manifest.json.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from vmforensics.errors import SigningKeyError, UsageError

Algorithm = Literal["ed25519", "ecdsa-p256", "rsa-pss"]
ALGORITHMS: tuple[str, ...] = ("ed25519", "ecdsa-p256", "rsa-pss")
MIN_RSA_BITS = 3072
# Salt length = digest length: what `openssl pkeyutl -pkeyopt rsa_pss_saltlen:digest` expects.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _algorithm_of(key: PublicKey) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise SigningKeyError(f"RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})")
        return "rsa-pss"
    raise SigningKeyError(f"unsupported key type {type(key).__name__} (use {', '.join(ALGORITHMS)})")


class VerifyKey:
    """A public key that checks manifest signatures."""

    def __init__(self, key: PublicKey):
        self.algorithm = _algorithm_of(key)
        self._key = key

    @property
    def key_id(self) -> str:
        der = self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            if isinstance(self._key, ed25519.Ed25519PublicKey):
                self._key.verify(signature, data)
            elif isinstance(self._key, ec.EllipticCurvePublicKey):
                self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                self._key.verify(signature, data, _PSS, hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> VerifyKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"not a PEM public key: {exc}") from exc
        return cls(key)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerifyKey:
        """Load a public key, or the public half of a (non-encrypted) private key file."""
        pem = _read(path)
        if b"PRIVATE KEY" in pem:
            return SigningKey.from_pem(pem).public_key()
        return cls.from_pem(pem)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"<VerifyKey {self.algorithm} {self.key_id}>"


class Signer(Protocol):
    """What sealing needs of a key: its algorithm, id, public half, chain, and a detached signature."""

    algorithm: str
    certificates: tuple[x509.Certificate, ...]

    @property
    def key_id(self) -> str: ...

    def public_key(self) -> VerifyKey: ...

    def sign(self, data: bytes) -> bytes: ...


CertificateSource = str | os.PathLike[str] | bytes | Sequence[x509.Certificate]


def certificate_chain(public: VerifyKey, chain: CertificateSource) -> tuple[x509.Certificate, ...]:
    """The chain (a PEM file, PEM bytes or certificates; leaf first) after checking that its leaf
    certifies ``public``."""
    from vmforensics.custody.certificates import load_certificates, subject_of

    certificates = (
        load_certificates(chain, what="certificate")
        if isinstance(chain, (str, bytes, os.PathLike))
        else list(chain)
    )
    if not certificates:
        raise SigningKeyError("the certificate chain is empty")
    leaf = certificates[0]
    try:
        leaf_id = VerifyKey(leaf.public_key()).key_id  # type: ignore[arg-type]
    except SigningKeyError as exc:
        raise SigningKeyError(f'certificate "{subject_of(leaf)}": {exc}') from exc
    if leaf_id != public.key_id:
        raise SigningKeyError(
            f'certificate "{subject_of(leaf)}" is for key {leaf_id}, not the signing key {public.key_id}; '
            "give the certificate issued for this key (leaf first)"
        )
    return tuple(certificates)


class SigningKey:
    """The examiner's private key; signs the canonical manifest bytes."""

    def __init__(self, key: PrivateKey, certificates: CertificateSource = ()):
        self._key = key
        self.algorithm = _algorithm_of(key.public_key())
        self.certificates: tuple[x509.Certificate, ...] = (
            certificate_chain(self.public_key(), certificates) if certificates else ()
        )

    def with_certificates(self, chain: CertificateSource) -> SigningKey:
        """This key carrying the examiner's certificate chain (leaf first; the leaf must match)."""
        return SigningKey(self._key, chain)

    @classmethod
    def generate(cls, algorithm: Algorithm = "ed25519") -> SigningKey:
        if algorithm == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm == "ecdsa-p256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if algorithm == "rsa-pss":
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS))
        raise UsageError(f"unknown key algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")

    def public_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key())

    @property
    def key_id(self) -> str:
        return self.public_key().key_id

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data, _PSS, hashes.SHA256())

    def to_pem(self, passphrase: str | bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if passphrase:
            encryption = serialization.BestAvailableEncryption(_bytes(passphrase))
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, pem: bytes, passphrase: str | bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, _bytes(passphrase) if passphrase else None)
        except TypeError as exc:  # encrypted but no passphrase, or the reverse
            raise SigningKeyError(f"cannot load the private key: {exc}") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError("cannot load the private key: wrong passphrase, or not a PEM key") from exc
        return cls(key)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> SigningKey:
        return cls.from_pem(_read(path), passphrase)

    def save(self, path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> Path:
        """Write the private key (mode 0600, never overwriting) and ``<path>.pub`` beside it."""
        target = Path(path)
        _write_exclusive(target, self.to_pem(passphrase), 0o600)
        _write_exclusive(target.with_name(target.name + ".pub"), self.public_key().to_pem(), 0o644)
        return target

    def __repr__(self) -> str:
        subject = f" {self.certificates[0].subject.rfc4514_string()!r}" if self.certificates else ""
        return f"<SigningKey {self.algorithm} {self.key_id}{subject}>"


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read key file {os.fspath(path)!r}: {exc.strerror or exc}") from exc


def _write_exclusive(path: Path, content: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningKeyError(f"{path} exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise SigningKeyError(f"cannot write {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(content)
