"""Signing on a PKCS#11 token: SoftHSM2 (Debian ``softhsm2``) initialised for this test session by
``softhsm2-util``; signatures checked by ``verify`` and by ``openssl`` (the docs' recipes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.custody.pki import TestCA, name, write_certificates
from tests.test_docs import _recipes, _run
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.cli import main
from vmforensics.errors import SigningKeyError

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN, PIN, SO_PIN = "vmf-test", "739451", "846203"
pytestmark = pytest.mark.skipif(
    not Path(MODULE).exists() or not shutil.which("softhsm2-util") or not shutil.which("openssl"),
    reason="needs softhsm2 and openssl",
)
CASE = CaseInfo(case_id="T-15", examiner="A. Analyst")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A fresh SoftHSM2 token with an ECDSA P-256, an Ed25519 and an RSA-3072 key pair."""
    pkcs11 = pytest.importorskip("pkcs11")
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    config = root / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(config)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    library = pkcs11.lib(MODULE)
    library.reinitialize()  # the module reads SOFTHSM2_CONF when it is initialised
    with library.get_token(token_label=TOKEN).open(rw=True, user_pin=PIN) as session:
        for label, curve, mechanism, key_type in (
            ("p256", "secp256r1", Mechanism.EC_KEY_PAIR_GEN, KeyType.EC),
            ("ed25519", "1.3.101.112", Mechanism.EC_EDWARDS_KEY_PAIR_GEN, KeyType.EC_EDWARDS),
        ):
            params = session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
            )
            params.generate_keypair(store=True, label=label, mechanism=mechanism)
        session.generate_keypair(KeyType.RSA, 3072, store=True, label="rsa")
    yield root
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


def hardware_key(label: str, pin: str = PIN, **options):
    from vmforensics.custody.pkcs11 import PKCS11Key

    return PKCS11Key(MODULE, TOKEN, label, pin, **options)


@pytest.mark.parametrize(
    ("label", "algorithm"), [("p256", "ecdsa-p256"), ("ed25519", "ed25519"), ("rsa", "rsa-pss")]
)
def test_manifest_signed_on_the_token_verifies_with_verify_and_openssl(
    label, algorithm, token, tmp_path, vm_folder
):
    with hardware_key(label) as key:
        assert key.algorithm == algorithm
        result = LocalAcquirer().acquire(
            str(vm_folder), tmp_path / "ev", case=CASE, signer=key, progress=False
        )
        public = key.public_key()
    assert result.manifest.integrity.signer_key_id == public.key_id
    assert verify(result.path, public).ok
    recipes = _recipes()
    for recipe in ("keyid", "extract", algorithm):
        done = _run(*recipes[recipe], result.path)
        assert done.returncode == 0, f"{recipe}: {done.stderr}"
    assert public.key_id in _run(*recipes["keyid"], result.path).stdout


def test_docs_pkcs11_recipe_checks_a_token_signature_with_openssl(token, tmp_path, vm_folder):
    with hardware_key("p256") as key:
        result = LocalAcquirer().acquire(
            str(vm_folder), tmp_path / "ev", case=CASE, signer=key, progress=False
        )
    done = _run(*_recipes()["openssl-pkcs11"], result.path)
    assert done.returncode == 0 and "Verified OK" in done.stdout, done.stderr


def test_wrong_pin_is_refused_clearly(token):
    with pytest.raises(SigningKeyError, match="refused the PIN"):
        hardware_key("p256", pin="000000")


def test_missing_key_and_token_are_named(token):
    with pytest.raises(SigningKeyError, match="no private key labelled 'examiner-2026'"):
        hardware_key("examiner-2026")
    from vmforensics.custody.pkcs11 import PKCS11Key

    with pytest.raises(SigningKeyError, match="no PKCS#11 token labelled 'other-token'"):
        PKCS11Key(MODULE, "other-token", "p256", PIN)


def test_token_key_with_a_certificate_is_proven_through_the_ca(token, tmp_path, vm_folder):
    lab = TestCA(tmp_path / "lab", "Lab CA")
    with hardware_key("p256") as probe:
        cert = lab.issue(name("A. Analyst", "Lab"), probe.public_key()._key)
    with hardware_key("p256", certificates=[cert]) as key:
        result = LocalAcquirer().acquire(
            str(vm_folder), tmp_path / "ev", case=CASE, signer=key, progress=False
        )
    report = verify(result.path, ca=lab.pem)
    assert report.ok and str(report).startswith('VERIFIED (certificate "O=Lab,CN=A. Analyst"'), str(report)
    someone_else = ec.generate_private_key(ec.SECP256R1()).public_key()
    other = TestCA(tmp_path / "other").issue(name("B"), someone_else)
    with pytest.raises(SigningKeyError, match="not the signing key"):
        hardware_key("p256", certificates=[other])


def test_acquire_cli_signs_on_the_token_with_the_pin_from_the_environment(
    token, tmp_path, vm_folder, monkeypatch, capsys
):
    lab = TestCA(tmp_path / "lab", "Lab CA")
    with hardware_key("ed25519") as probe:
        cert = write_certificates(
            tmp_path / "examiner.crt", lab.issue(name("A. Analyst", "Lab"), probe.public_key()._key)
        )
    out = tmp_path / "ev"
    monkeypatch.setenv("VMFORENSICS_PKCS11_PIN", PIN)
    hardware = ["--pkcs11-module", MODULE, "--pkcs11-token", TOKEN, "--pkcs11-key", "ed25519"]
    args = ["acquire", "local", str(vm_folder), "--out", str(out), "--case", "T-15", "--no-progress"]
    assert main([*args, *hardware, "--cert", str(cert)]) == 0
    assert main(["verify", str(out), "--ca", str(lab.pem)]) == 0
    printed = capsys.readouterr()
    for path in out.rglob("*"):
        if path.is_file():
            assert PIN.encode() not in path.read_bytes(), f"the PIN is in {path}"
    assert PIN not in printed.out + printed.err

    monkeypatch.setenv("VMFORENSICS_PKCS11_PIN", "000000")
    assert main([*args[:3], "--out", str(tmp_path / "ev2"), "--case", "T-15", *hardware]) == 1
    assert "refused the PIN" in capsys.readouterr().err
    assert main([*args[:3], "--out", str(tmp_path / "ev3"), "--case", "T-15", *hardware[:4]]) == 2
