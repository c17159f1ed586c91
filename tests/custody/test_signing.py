"""Signing keys: every algorithm signs and verifies, keys survive PEM round trips, and OpenSSL
(an independent implementation) accepts our detached signatures."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from vmforensics.custody.signing import SigningKey, VerifyKey
from vmforensics.errors import SigningKeyError

ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_verifies_and_a_changed_message_does_not(algorithm):
    key = SigningKey.generate(algorithm)
    signature = key.sign(b"manifest bytes")
    assert key.public_key().verify(b"manifest bytes", signature)
    assert not key.public_key().verify(b"manifest bytez", signature)
    assert not SigningKey.generate(algorithm).public_key().verify(b"manifest bytes", signature)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_with_passphrase_round_trips_and_wrong_passphrase_is_refused(tmp_path, algorithm):
    key = SigningKey.generate(algorithm)
    path = key.save(tmp_path / "examiner.pem", passphrase="correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert SigningKey.load(path, "correct horse").key_id == key.key_id
    assert VerifyKey.load(tmp_path / "examiner.pem.pub") == key.public_key()
    with pytest.raises(SigningKeyError):
        SigningKey.load(path, "wrong")
    with pytest.raises(SigningKeyError):
        SigningKey.load(path)


def test_key_without_passphrase_round_trips_and_is_never_overwritten(tmp_path):
    key = SigningKey.generate()
    path = key.save(tmp_path / "k.pem")
    assert SigningKey.load(path).key_id == key.key_id
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        SigningKey.generate().save(path)


def test_weak_rsa_key_is_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SigningKeyError, match="too weak"):
        SigningKey(weak)


def test_key_id_is_the_sha256_of_the_der_public_key_as_openssl_computes_it(tmp_path):
    key = SigningKey.generate("ecdsa-p256")
    pub = tmp_path / "k.pub"
    pub.write_bytes(key.public_key().to_pem())
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    assert key.key_id == "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_openssl_verifies_the_sealed_manifest_signature(sealed_with, algorithm, tmp_path):
    """The evidence directory's signature checks out with OpenSSL alone, no vmforensics involved."""
    root = sealed_with(SigningKey.generate(algorithm))
    record = json.loads((root / "manifest.json.sig").read_text())
    signature = tmp_path / "sig.bin"
    signature.write_bytes(base64.b64decode(record["signature"]))
    manifest, pub = root / "manifest.json", root / "manifest.json.pub"
    if algorithm == "ed25519":
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", manifest]
        command += ["-sigfile", signature]
    else:
        command = ["openssl", "dgst", "-sha256", "-verify", pub, "-signature", signature]
        if algorithm == "rsa-pss":
            command += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
        command.append(manifest)
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Verified" in done.stdout or "Signature Verified Successfully" in done.stdout


@pytest.fixture
def sealed_with(tmp_path: Path, vm_folder: Path):
    from vmforensics import CaseInfo, LocalAcquirer

    def acquire(key: SigningKey) -> Path:
        case = CaseInfo(case_id="T-2", examiner="Test Examiner")
        return (
            LocalAcquirer()
            .acquire(str(vm_folder), tmp_path / "ev", case=case, signer=key, progress=False)
            .path
        )

    return acquire
