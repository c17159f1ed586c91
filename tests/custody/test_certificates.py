"""Signer certificates: an examiner certificate from a test CA (cryptography's builder), stored
beside the manifest and proven with ``verify --ca``; ``openssl verify`` is the independent oracle."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.custody.conftest import make_writable
from tests.custody.pki import NOW, YEAR, TestCA, name, write_certificates
from tests.custody.tsa import OpenSSLTSA
from tests.test_docs import _recipes, _run
from vmforensics import CaseInfo, LocalAcquirer, SigningKey, verify
from vmforensics.cli import main
from vmforensics.custody.certificates import CHAIN_NAME
from vmforensics.errors import SigningKeyError

pytestmark = pytest.mark.skipif(
    not shutil.which("openssl") or not shutil.which("jq"), reason="needs openssl, jq"
)
CASE = CaseInfo(case_id="T-15", examiner="A. Analyst")
EXAMINER = name("A. Analyst", "Lab")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("lab"), "Lab CA")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("rogue"), "Rogue CA")


def certified(ca: TestCA, algorithm: str = "ed25519", **issue) -> SigningKey:
    key = SigningKey.generate(algorithm)
    certificate = ca.issue(EXAMINER, key.public_key()._key, **issue)
    return key.with_certificates([certificate])


def acquire(vm_folder, out, signer):
    return LocalAcquirer().acquire(str(vm_folder), out, case=CASE, signer=signer, progress=False)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "rsa-pss"])
def test_examiner_certificate_is_stored_and_proven_through_the_lab_ca(algorithm, tmp_path, vm_folder, lab):
    result = acquire(vm_folder, tmp_path / "ev", certified(lab, algorithm))
    assert (result.path / CHAIN_NAME).stat().st_mode & 0o222 == 0
    report = verify(result.path, ca=lab.pem)
    assert report.ok, str(report)
    first = str(report).splitlines()[0]
    assert first.startswith('VERIFIED (certificate "O=Lab,CN=A. Analyst" via CA "O=Test Lab,CN=Lab CA"'), (
        first
    )
    assert not [f for f in report.files if f.status == "EXTRA"]
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(lab.pem), str(result.path / CHAIN_NAME)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and ": OK" in done.stdout, done.stderr


def test_docs_openssl_certificate_recipe_checks_chain_key_id_and_signature(
    tmp_path, vm_folder, lab, monkeypatch
):
    result = acquire(vm_folder, tmp_path / "ev", certified(lab))
    lang, body = _recipes()["openssl-cert"]
    body = body.replace("/tmp/", f"{tmp_path}/")  # the page's scratch files, kept in this test's folder
    monkeypatch.setenv("LAB_CA", str(lab.pem))
    done = _run(lang, body, result.path)
    assert done.returncode == 0, done.stderr
    key_ids = [line for line in done.stdout.splitlines() if line.startswith("sha256:")]
    assert len(key_ids) == 2 and key_ids[0] == key_ids[1] == result.manifest.integrity.signer_key_id
    assert "Signature Verified Successfully" in done.stdout
    make_writable(result.path)
    (result.path / "manifest.json").write_bytes(
        (result.path / "manifest.json").read_bytes().replace(b"T-15", b"T-16")
    )
    assert _run(lang, body, result.path).returncode != 0


def test_verify_cli_with_ca_needs_no_key_and_reports_the_subject_in_json(tmp_path, vm_folder, lab, capsys):
    result = acquire(vm_folder, tmp_path / "ev", certified(lab))
    assert main(["verify", str(result.path), "--ca", str(lab.pem), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (anchor,) = [a for a in report["anchors"] if a["kind"] == "certificate"]
    assert anchor["status"] == "VERIFIED" and "CN=A. Analyst" in anchor["description"]


def test_expired_certificate_is_refused(tmp_path, vm_folder, lab):
    signer = certified(lab, not_before=NOW - 3 * YEAR, not_after=NOW - YEAR)
    report = verify(acquire(vm_folder, tmp_path / "ev", signer).path, ca=lab.pem)
    assert not report.ok
    (anchor,) = [a for a in report.anchors if a.kind == "certificate"]
    assert anchor.status == "FAILED" and "not valid through the given CA" in anchor.description
    assert "not valid at validation time" in anchor.description


def test_certificate_without_digital_signature_key_usage_is_refused(tmp_path, vm_folder, lab):
    signer = certified(lab, digital_signature=False)
    report = verify(acquire(vm_folder, tmp_path / "ev", signer).path, ca=lab.pem)
    (anchor,) = [a for a in report.anchors if a.kind == "certificate"]
    assert not report.ok and anchor.status == "FAILED" and "digitalSignature" in anchor.description


def test_certificate_for_another_key_is_refused_at_signing_and_at_verify(tmp_path, vm_folder, lab):
    key, other = SigningKey.generate(), SigningKey.generate()
    foreign = lab.issue(EXAMINER, other.public_key()._key)
    with pytest.raises(SigningKeyError, match="not the signing key"):
        key.with_certificates([foreign])
    result = acquire(vm_folder, tmp_path / "ev", certified(lab))
    make_writable(result.path)  # the attacker swaps in a genuine certificate of someone else's key
    write_certificates(result.path / CHAIN_NAME, foreign)
    report = verify(result.path, ca=lab.pem)
    (anchor,) = [a for a in report.anchors if a.kind == "certificate"]
    assert not report.ok and "but the manifest was signed by" in anchor.description


def test_chain_from_another_ca_is_refused(tmp_path, vm_folder, lab, rogue):
    report = verify(acquire(vm_folder, tmp_path / "ev", certified(rogue)).path, ca=lab.pem)
    (anchor,) = [a for a in report.anchors if a.kind == "certificate"]
    assert not report.ok and "not valid through the given CA" in anchor.description
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(lab.pem), str(tmp_path / "ev" / CHAIN_NAME)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0


def test_ca_given_but_only_a_bare_key_signed_fails(tmp_path, vm_folder, lab):
    report = verify(acquire(vm_folder, tmp_path / "ev", SigningKey.generate()).path, ca=lab.pem)
    (anchor,) = [a for a in report.anchors if a.kind == "certificate"]
    assert not report.ok and "bare key" in anchor.description


def test_certificate_and_timestamp_both_in_the_verdict(tmp_path, vm_folder, lab):
    with OpenSSLTSA(tmp_path / "tsa", lab) as tsa:
        result = LocalAcquirer().acquire(
            str(vm_folder), tmp_path / "ev", case=CASE, signer=certified(lab), progress=False, tsa=tsa.url
        )
    report = verify(result.path, ca=lab.pem, tsa_ca=lab.pem)
    first = str(report).splitlines()[0]
    assert report.ok and 'certificate "O=Lab,CN=A. Analyst"' in first
    assert f"timestamp by {tsa.url} at {result.timestamps[0].info.gen_time}" in first
    assert f"valid at {result.timestamps[0].info.gen_time}" in first  # checked at genTime, not now


def test_acquire_cli_cert_option_stores_the_chain(tmp_path, vm_folder, lab):
    key = SigningKey.generate()
    key.save(tmp_path / "examiner.pem")
    cert = write_certificates(tmp_path / "examiner.crt", lab.issue(EXAMINER, key.public_key()._key))
    out = tmp_path / "ev"
    args = ["acquire", "local", str(vm_folder), "--out", str(out), "--case", "T-15", "--no-progress"]
    assert main([*args, "--key", str(tmp_path / "examiner.pem"), "--cert", str(cert)]) == 0
    assert (out / CHAIN_NAME).read_bytes() == cert.read_bytes()
    assert main(["verify", str(out), "--ca", str(lab.pem)]) == 0
    assert main([*args[:3], "--out", str(tmp_path / "ev2"), "--case", "T-15", "--cert", str(cert)]) == 2


def test_certificate_that_expired_after_the_seal_is_judged_at_the_seal(tmp_path, vm_folder, lab):
    import datetime as dt
    import time

    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    result = acquire(vm_folder, tmp_path / "ev", certified(lab, not_before=NOW - YEAR, not_after=expires))
    while dt.datetime.now(dt.UTC) <= expires + dt.timedelta(seconds=1):
        time.sleep(0.5)
    expired_now = subprocess.run(
        ["openssl", "verify", "-CAfile", str(lab.pem), str(result.path / CHAIN_NAME)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert expired_now.returncode != 0 and "expired" in expired_now.stdout + expired_now.stderr
    report = verify(result.path, ca=lab.pem)
    assert report.ok, str(report)
    assert f"valid at {result.manifest.finished[:19]}Z" in str(report).splitlines()[0]


def test_verify_cli_with_an_unreadable_ca_file_is_a_usage_error(tmp_path, vm_folder, lab):
    result = acquire(vm_folder, tmp_path / "ev", certified(lab))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert main(["verify", str(result.path), "--ca", str(tmp_path / "missing.pem")]) == 2
    assert main(["verify", str(result.path), "--tsa-ca", str(tmp_path / "junk.pem")]) == 2
