"""A signing key that never leaves a PKCS#11 token (HSM, smart card, YubiKey): :class:`PKCS11Key`.

The token signs the manifest bytes; the signature format is the same as a :class:`SigningKey`'s
(Ed25519 raw, ECDSA P-256 DER over SHA-256, RSA-PSS SHA-256 with a 32-byte salt), so ``verify``
and ``openssl`` check it the same way. Ed25519 needs a token with CKM_EDDSA; ECDSA P-256 and RSA
keys work on any token. The PIN is used to log in and is neither kept nor logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from vmforensics.custody.signing import CertificateSource, VerifyKey, certificate_chain
from vmforensics.errors import SigningKeyError

log = logging.getLogger(__name__)

PIN_ENV = "VMFORENSICS_PKCS11_PIN"
_ED25519_OID = "1.3.101.112"


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:
        raise SigningKeyError("PKCS#11 keys need python-pkcs11: pip install 'vmforensics[pkcs11]'") from exc
    return pkcs11


class PKCS11Key:
    """The private key ``key_label`` on the token ``token_label`` of the PKCS#11 ``module``.

    ``certificates``: the examiner's chain (leaf first), checked against the token's public key.
    Close it (or use it as a context manager) to log out.
    """

    def __init__(
        self,
        module: str | os.PathLike[str],
        token_label: str,
        key_label: str,
        pin: str,
        *,
        certificates: CertificateSource = (),
    ):
        pkcs11 = _pkcs11()
        from pkcs11 import exceptions as errors

        self.module = os.fspath(module)
        self.token_label = token_label
        self.key_label = key_label
        self._lock = threading.Lock()
        try:
            library = pkcs11.lib(self.module)
        except (RuntimeError, OSError) as exc:
            raise SigningKeyError(f"cannot load the PKCS#11 module {self.module!r}: {exc}") from exc
        try:
            token = library.get_token(token_label=token_label)
        except errors.NoSuchToken as exc:
            raise SigningKeyError(f"no PKCS#11 token labelled {token_label!r} in {self.module}") from exc
        except errors.MultipleTokensReturned as exc:
            raise SigningKeyError(f"several PKCS#11 tokens are labelled {token_label!r}") from exc
        try:
            self._session = token.open(user_pin=pin)
        except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange) as exc:
            raise SigningKeyError(f"the token {token_label!r} refused the PIN (wrong PIN)") from exc
        except errors.UserAlreadyLoggedIn as exc:
            raise SigningKeyError(
                f"the token {token_label!r} is already logged in by another open PKCS11Key of this "
                "process; close that one first"
            ) from exc
        except errors.PinLocked as exc:
            raise SigningKeyError(f"the token {token_label!r} is locked (too many wrong PINs)") from exc
        except errors.PKCS11Error as exc:
            raise SigningKeyError(
                f"cannot log in to the token {token_label!r}: {type(exc).__name__}"
            ) from exc
        try:
            self._private = self._find(pkcs11.ObjectClass.PRIVATE_KEY)
            public = self._public_key(self._find(pkcs11.ObjectClass.PUBLIC_KEY))
            self._verify_key = VerifyKey(public)
            self.algorithm = self._verify_key.algorithm
            if self.algorithm == "ed25519" and pkcs11.Mechanism.EDDSA not in token.slot.get_mechanisms():
                raise SigningKeyError(
                    f"the token {token_label!r} has no CKM_EDDSA for the Ed25519 key {key_label!r}; "
                    "use an ECDSA P-256 or RSA key on this token"
                )
            self.certificates = certificate_chain(self._verify_key, certificates) if certificates else ()
        except BaseException:
            self.close()
            raise
        log.info("PKCS#11 key %r on token %r (%s, %s)", key_label, token_label, self.algorithm, self.key_id)

    def _find(self, object_class: Any) -> Any:
        from pkcs11 import ObjectClass
        from pkcs11 import exceptions as errors

        try:
            return self._session.get_key(object_class=object_class, label=self.key_label)
        except errors.NoSuchKey as exc:
            kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
            raise SigningKeyError(
                f"no {kind} key labelled {self.key_label!r} on the token {self.token_label!r}"
            ) from exc
        except errors.MultipleObjectsReturned as exc:
            raise SigningKeyError(
                f"several keys are labelled {self.key_label!r} on the token {self.token_label!r}"
            ) from exc

    @staticmethod
    def _public_key(key: Any) -> Any:
        from asn1crypto.core import OctetString
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_ec_public_key

        if key.key_type == KeyType.RSA:
            n = int.from_bytes(key[Attribute.MODULUS], "big")
            e = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if key.key_type == KeyType.EC:
            return serialization.load_der_public_key(encode_ec_public_key(key))
        if key.key_type == KeyType.EC_EDWARDS:
            point = bytes(OctetString.load(key[Attribute.EC_POINT]))
            return ed25519.Ed25519PublicKey.from_public_bytes(point)
        raise SigningKeyError(f"the token's key type {key.key_type!r} is not supported")

    @property
    def key_id(self) -> str:
        return self._verify_key.key_id

    def public_key(self) -> VerifyKey:
        return self._verify_key

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import MGF, Mechanism
        from pkcs11.util.ec import encode_ecdsa_signature

        with self._lock:
            if self.algorithm == "ed25519":
                return self._private.sign(data, mechanism=Mechanism.EDDSA)
            if self.algorithm == "ecdsa-p256":
                # CKM_ECDSA over a SHA-256 computed here: every token has it, not all CKM_ECDSA_SHA256
                raw = self._private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
                return encode_ecdsa_signature(raw)
            return self._private.sign(
                data,
                mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
            )

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            self._session = None
            try:
                session.close()
            except Exception as exc:  # logging out must not hide the real outcome
                log.warning("closing the PKCS#11 session failed: %s", exc)

    def __enter__(self) -> PKCS11Key:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PKCS11Key {self.key_label!r} on {self.token_label!r} {self.algorithm} {self.key_id}>"
