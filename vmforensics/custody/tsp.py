"""RFC 3161 time-stamp protocol: the query, the reply, and the proof of a token.

ASN.1 and CMS structures are asn1crypto's; signatures and certificate paths are cryptography's.
A token is proven when its imprint is the SHA-256 of the data, its CMS signature (over the signed
attributes, whose message digest covers the TSTInfo) verifies with the certificate named by the
signer and by the ESS signing-certificate attribute, and that certificate has a path to a trusted
CA valid at genTime with the critical extended key usage timeStamping (RFC 3161 2.3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, Policy, VerificationError

from vmforensics.custody.certificates import subject_of, validate_chain
from vmforensics.errors import TimestampError

#: A reply larger than this is refused before parsing (real tokens are a few KiB).
MAX_REPLY_BYTES = 1 << 20
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _asn1():
    try:
        from asn1crypto import tsp
    except ImportError as exc:
        raise TimestampError("RFC 3161 timestamps need asn1crypto: pip install 'vmforensics[tsa]'") from exc
    return tsp


@attrs.frozen
class TokenInfo:
    """What a token says: when (genTime), which serial and policy, over which SHA-256 imprint."""

    gen_time: str  # ISO 8601 UTC, e.g. 2026-12-01T23:50:01Z
    serial: str  # decimal
    policy: str  # dotted OID
    imprint: str  # hex of the hashed message
    imprint_algorithm: str
    nonce: str | None  # decimal, when the query carried one
    tsa_name: str | None = None

    @property
    def gen_datetime(self) -> dt.datetime:
        return dt.datetime.strptime(self.gen_time, "%Y-%m-%dT%H:%M:%S%z")


def build_query(data: bytes) -> tuple[bytes, int]:
    """A DER TimeStampReq over SHA-256(data) with a 64-bit nonce and certReq; returns (der, nonce)."""
    tsp = _asn1()
    nonce = secrets.randbits(63) | (1 << 62)
    query = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": hashlib.sha256(data).digest(),
            },
            "nonce": nonce,
            "cert_req": True,
        }
    )
    return query.dump(), nonce


def parse_reply(reply: bytes) -> tuple[object, TokenInfo]:
    """Decode a TimeStampResp; refuses a rejection or a reply that is not one. Returns (token, info)."""
    tsp = _asn1()
    if len(reply) > MAX_REPLY_BYTES:
        raise TimestampError(f"the reply is {len(reply)} bytes, more than {MAX_REPLY_BYTES}: not a token")
    try:
        response = tsp.TimeStampResp.load(reply, strict=True)
        status = response["status"]["status"].native
        if status not in ("granted", "granted_with_mods"):
            text = response["status"]["status_string"].native or []
            raise TimestampError(f"the TSA refused the request: {status} {' '.join(text)}".strip())
        token = response["time_stamp_token"]
        if token["content_type"].native != "signed_data":
            raise TimestampError("the token is not CMS SignedData")
        signed = token["content"]
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampError("the token does not carry a TSTInfo")
        info = encap["content"].parsed
        imprint = info["message_imprint"]
        gen_time = info["gen_time"].native
        nonce = info["nonce"].native
        tsa_name = info["tsa"].native if info["tsa"].native is not None else None
        token_info = TokenInfo(
            gen_time=gen_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            serial=str(info["serial_number"].native),
            policy=info["policy"].dotted,
            imprint=imprint["hashed_message"].native.hex(),
            imprint_algorithm=imprint["hash_algorithm"]["algorithm"].native,
            nonce=None if nonce is None else str(nonce),
            tsa_name=None if tsa_name is None else str(_general_name_text(info["tsa"])),
        )
    except TimestampError:
        raise
    except Exception as exc:  # hostile bytes: whatever the decoder trips on is a refusal with its reason
        raise TimestampError(f"not an RFC 3161 time-stamp reply: {type(exc).__name__}: {exc}") from exc
    return token, token_info


def _general_name_text(name: object) -> str:
    chosen = getattr(name, "chosen", None)
    human = getattr(chosen, "human_friendly", None)
    return human if isinstance(human, str) else str(getattr(name, "native", name))


def check_imprint(info: TokenInfo, data: bytes) -> None:
    if info.imprint_algorithm != "sha256":
        raise TimestampError(f"the token's imprint uses {info.imprint_algorithm}, not sha256")
    expected = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(info.imprint, expected):
        raise TimestampError(
            f"the token's imprint {info.imprint[:16]}… is not the manifest's SHA-256 {expected[:16]}… "
            "(a token for other data)"
        )


def _time_stamping(
    policy: Policy, certificate: x509.Certificate, usage: x509.ExtendedKeyUsage | None
) -> None:
    if usage is None or ExtendedKeyUsageOID.TIME_STAMPING not in usage:
        raise ValueError("the certificate's extended key usage does not include timeStamping")


#: RFC 3161 2.3: the TSA certificate carries extended key usage timeStamping, marked critical.
TSA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.ExtendedKeyUsage, Criticality.CRITICAL, _time_stamping
)


def verify_token(reply: bytes, data: bytes, roots: Sequence[x509.Certificate]) -> tuple[TokenInfo, str]:
    """Prove a stored reply over ``data`` through the TSA's CA ``roots``; returns (info, TSA subject).

    Raises TimestampError with the reason when any part fails.
    """
    from asn1crypto import parser

    token, info = parse_reply(reply)
    check_imprint(info, data)
    try:
        signed = token["content"]  # type: ignore[index]
        signer_infos = list(signed["signer_infos"])
        if len(signer_infos) != 1:
            raise TimestampError(f"the token has {len(signer_infos)} signers, not one")
        signer = signer_infos[0]
        embedded = [
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in (signed["certificates"] or [])
            if c.name == "certificate"
        ]
        leaf = _signer_certificate(signer, embedded)
        # the signature covers the signed attributes as sent, re-tagged as a SET (RFC 5652 5.4)
        signed_bytes = parser.emit(0, 1, 17, signer["signed_attrs"].contents)
        attributes = {a["type"].native: a["values"][0] for a in signer["signed_attrs"]}
        content = signed["encap_content_info"]["content"].contents
        digest_name = signer["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            raise TimestampError(f"the token's digest algorithm {digest_name} is not accepted")
        if attributes.get("content_type") is None or attributes["content_type"].native != "tst_info":
            raise TimestampError("the signed content-type attribute is not TSTInfo")
        message_digest = attributes.get("message_digest")
        if message_digest is None or not hmac.compare_digest(
            message_digest.native, hashlib.new(digest_name, content).digest()
        ):
            raise TimestampError("the signed message digest does not match the TSTInfo (token altered)")
        _check_ess(attributes, leaf)
        _verify_signature(leaf, signer, digest_name, signed_bytes)
    except TimestampError:
        raise
    except Exception as exc:  # hostile bytes, as above
        raise TimestampError(f"the token's CMS structure is malformed: {type(exc).__name__}: {exc}") from exc
    intermediates = [c for c in embedded if c != leaf]
    try:
        validate_chain(leaf, intermediates, roots, info.gen_datetime, TSA_POLICY)
    except VerificationError as exc:
        raise TimestampError(
            f'the TSA certificate "{subject_of(leaf)}" is not valid through the given TSA CA at '
            f"{info.gen_time}: {exc}"
        ) from exc
    return info, subject_of(leaf)


def _signer_certificate(signer: object, embedded: list[x509.Certificate]) -> x509.Certificate:
    sid = signer["sid"]  # type: ignore[index]
    for certificate in embedded:
        if sid.name == "issuer_and_serial_number":
            if (
                certificate.serial_number == sid.chosen["serial_number"].native
                and certificate.issuer.public_bytes() == sid.chosen["issuer"].dump()
            ):
                return certificate
        else:
            try:
                ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                return certificate
    raise TimestampError("the token does not include the signer's certificate (query with certReq)")


def _check_ess(attributes: dict[str, object], leaf: x509.Certificate) -> None:
    """The ESS signing-certificate attribute (v2 or v1) must name the signer's certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    der = leaf.public_bytes(Encoding.DER)
    if "signing_certificate_v2" in attributes:
        ids = attributes["signing_certificate_v2"]["certs"]  # type: ignore[index]
        algorithm = ids[0]["hash_algorithm"]["algorithm"].native
        expected = hashlib.new(algorithm, der).digest()
    elif "signing_certificate" in attributes:
        ids = attributes["signing_certificate"]["certs"]  # type: ignore[index]
        expected = hashlib.sha1(der).digest()
    else:
        raise TimestampError("the token has no ESS signing-certificate attribute")
    if not hmac.compare_digest(ids[0]["cert_hash"].native, expected):
        raise TimestampError("the ESS signing-certificate attribute names another certificate")


def _verify_signature(leaf: x509.Certificate, signer: object, digest_name: str, signed: bytes) -> None:
    key = leaf.public_key()
    signature = signer["signature"].native  # type: ignore[index]
    algorithm = signer["signature_algorithm"]  # type: ignore[index]
    digest = _HASHES[digest_name]()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed, ec.ECDSA(digest))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signed)
        elif isinstance(key, rsa.RSAPublicKey):
            if algorithm.signature_algo == "rsassa_pss":
                params = algorithm["parameters"]
                pss = padding.PSS(
                    mgf=padding.MGF1(
                        _HASHES[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
                    ),
                    salt_length=params["salt_length"].native,
                )
                key.verify(signature, signed, pss, _HASHES[params["hash_algorithm"]["algorithm"].native]())
            else:
                key.verify(signature, signed, padding.PKCS1v15(), digest)
        else:
            raise TimestampError(f"the TSA's key type {type(key).__name__} is not accepted")
    except InvalidSignature as exc:
        raise TimestampError("the token's signature does not verify with the TSA certificate") from exc
