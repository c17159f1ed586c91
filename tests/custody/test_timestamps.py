"""RFC 3161 timestamps over the sealed manifest, from OpenSSL's own TSA (``openssl ts -reply``) on
loopback, checked by us and by ``openssl ts -verify`` (the independent oracle)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.custody.conftest import make_writable
from tests.custody.pki import TestCA
from tests.custody.tsa import OpenSSLTSA, closed_port_url
from tests.test_docs import _recipes, _run
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.cli import main
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.custody.postseal import amend_sealed
from vmforensics.custody.timestamps import timestamp

pytestmark = pytest.mark.skipif(
    not shutil.which("openssl") or not shutil.which("faketime"), reason="needs openssl and faketime"
)
CASE = CaseInfo(case_id="T-15", examiner="Test Examiner")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    return TestCA(root / "lab"), TestCA(root / "rogue", "Rogue CA")


@pytest.fixture(scope="module")
def tsa(pki, tmp_path_factory):
    with OpenSSLTSA(tmp_path_factory.mktemp("tsa"), pki[0]) as server:
        yield server


def acquire(vm_folder: Path, out: Path, **options):
    return LocalAcquirer().acquire(str(vm_folder), out, case=CASE, progress=False, **options)


def openssl_ts_verify(evidence: Path, token: str, ca: TestCA, tsa_cert: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "ts", "-verify", "-data", "manifest.json", "-in", token, "-CAfile", str(ca.pem),
         "-untrusted", str(tsa_cert)],
        cwd=evidence, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / LEDGER_NAME).read_bytes().splitlines()]


def test_acquire_with_a_tsa_stores_a_token_that_openssl_and_verify_accept(tmp_path, vm_folder, pki, tsa):
    result = acquire(vm_folder, tmp_path / "ev", tsa=[tsa.url])
    (stamp,) = result.timestamps
    assert stamp.ok and stamp.file == "manifest.json.tsr"
    token = result.path / "manifest.json.tsr"
    assert token.stat().st_mode & 0o222 == 0, "the token is read-only like the rest of the seal"
    last = events(result.path)[-1]
    assert last["action"] == "timestamp" and last["seq"] == result.manifest.integrity.ledger_events + 1
    assert last["details"]["tsa"] == tsa.url and last["details"]["gen_time"] == stamp.info.gen_time
    assert last["details"]["policy"] == "1.3.6.1.4.1.99999.1.1"

    done = openssl_ts_verify(result.path, "manifest.json.tsr", pki[0], tsa.cert_path)
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stderr
    shown = subprocess.run(
        ["openssl", "ts", "-reply", "-in", "manifest.json.tsr", "-text"],
        cwd=result.path, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"Serial number: 0x{int(stamp.info.serial):02X}" in shown

    report = verify(result.path, tsa_ca=pki[0].pem)
    assert report.ok, str(report)
    (check,) = report.post_seal
    assert check.status == "OK" and 'signed by "O=Test Lab,CN=Test TSA"' in check.summary
    assert not [f for f in report.files if f.status == "EXTRA"]


def test_docs_openssl_ts_recipe_verifies_the_token(tmp_path, vm_folder, pki, tsa, monkeypatch):
    result = acquire(vm_folder, tmp_path / "ev", tsa=tsa.url)
    lang, body = _recipes()["openssl-ts"]
    monkeypatch.setenv("TSA_CA", str(pki[0].pem))
    monkeypatch.setenv("TSA_CERT", str(tsa.cert_path))
    done = _run(lang, body, result.path)
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stderr
    for recipe in ("ledger-python", "ledger-jq"):  # the chain recipes accept events after the seal
        done = _run(*_recipes()[recipe], result.path)
        assert done.returncode == 0 and "1 after the seal" in done.stdout, done.stdout + done.stderr


def test_without_the_tsa_ca_a_token_is_unchecked_but_its_imprint_is(tmp_path, vm_folder, tsa):
    result = acquire(vm_folder, tmp_path / "ev", tsa=tsa.url)
    report = verify(result.path)
    (check,) = report.post_seal
    assert check.status == "UNCHECKED" and "imprint matches" in check.summary
    assert report.ok


def test_several_tsas_each_token_is_kept(tmp_path, vm_folder, pki, tsa):
    result = acquire(vm_folder, tmp_path / "ev", tsa=[tsa.url, tsa.url])
    assert [s.file for s in result.timestamps] == ["manifest.json.tsr", "manifest.json.2.tsr"]
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert report.ok and [c.status for c in report.post_seal] == ["OK", "OK"]
    assert openssl_ts_verify(result.path, "manifest.json.2.tsr", pki[0], tsa.cert_path).returncode == 0


def test_token_for_another_manifest_is_refused_for_its_imprint(tmp_path, vm_folder, pki, tsa):
    first = acquire(vm_folder, tmp_path / "a", tsa=tsa.url)
    second = acquire(vm_folder, tmp_path / "b")
    stolen = (first.path / "manifest.json.tsr").read_bytes()
    recorded = events(first.path)[-1]["details"]
    with amend_sealed(second.path) as amendment:  # the attacker appends a genuine token of another set
        with amendment.create("manifest.json.tsr") as f:
            f.write(stolen)
        amendment.append("timestamp", **recorded)
    report = verify(second.path, tsa_ca=pki[0].pem)
    assert not report.ok
    (check,) = report.post_seal
    assert check.status == "FAILED" and "imprint" in check.summary and "other data" in check.summary
    assert openssl_ts_verify(second.path, "manifest.json.tsr", pki[0], tsa.cert_path).returncode != 0


def test_token_from_a_tsa_of_another_ca_is_refused(tmp_path, vm_folder, pki):
    with OpenSSLTSA(tmp_path / "rogue-tsa", pki[1], common_name="Rogue TSA") as rogue:
        result = acquire(vm_folder, tmp_path / "ev", tsa=rogue.url)
        assert result.timestamps[0].ok
        report = verify(result.path, tsa_ca=pki[0].pem)
        assert not report.ok
        (check,) = report.post_seal
        assert check.status == "FAILED"
        assert "not valid through the given TSA CA" in check.problems[0]
        assert openssl_ts_verify(result.path, "manifest.json.tsr", pki[0], rogue.cert_path).returncode != 0
        assert verify(result.path, tsa_ca=pki[1].pem).ok  # the rogue CA does vouch for its own TSA


def test_tsa_down_the_set_is_sealed_the_failure_recorded_and_the_token_added_later(
    tmp_path, vm_folder, pki, tsa, capsys
):
    down = closed_port_url()
    result = acquire(vm_folder, tmp_path / "ev", tsa=down)
    (stamp,) = result.timestamps
    assert not stamp.ok and "cannot reach the TSA" in stamp.error
    assert (result.path / "manifest.json").is_file() and not (result.path / "manifest.json.tsr").exists()
    failed = events(result.path)[-1]
    assert failed["action"] == "timestamp-failed" and failed["details"]["tsa"] == down
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert report.ok and report.post_seal[0].status == "OK"

    assert main(["timestamp", str(result.path), "--tsa", tsa.url]) == 0
    assert "manifest.json.tsr" in capsys.readouterr().out
    assert main(["timestamp", str(result.path), "--tsa", down]) == 1
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert report.ok, str(report)
    assert [c.action for c in report.post_seal] == ["timestamp-failed", "timestamp", "timestamp-failed"]
    assert main(["verify", str(result.path), "--tsa-ca", str(pki[0].pem)]) == 0


def test_token_with_a_gen_time_before_the_acquisition_is_reported(tmp_path, vm_folder, pki):
    with OpenSSLTSA(tmp_path / "slow-tsa", pki[0], clock="-2d") as slow:
        result = acquire(vm_folder, tmp_path / "ev", tsa=slow.url)
        assert result.timestamps[0].ok
        assert openssl_ts_verify(result.path, "manifest.json.tsr", pki[0], slow.cert_path).returncode == 0
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert not report.ok
    assert "before the acquisition started" in report.post_seal[0].problems[0]


def test_token_far_later_than_the_seal_is_reported(tmp_path, vm_folder, pki):
    with OpenSSLTSA(tmp_path / "fast-tsa", pki[0], clock="+3d") as fast:
        result = acquire(vm_folder, tmp_path / "ev", tsa=fast.url)
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert not report.ok and "after the seal" in report.post_seal[0].problems[0]


def test_token_file_edited_after_it_was_recorded_fails(tmp_path, vm_folder, pki, tsa):
    result = acquire(vm_folder, tmp_path / "ev", tsa=tsa.url)
    make_writable(result.path)
    token = result.path / "manifest.json.tsr"
    data = bytearray(token.read_bytes())
    data[-10] ^= 0x01
    token.write_bytes(bytes(data))
    report = verify(result.path, tsa_ca=pki[0].pem)
    assert not report.ok and "SHA-256 differs" in report.post_seal[0].summary


def test_timestamp_on_an_unsealed_directory_is_a_usage_error(tmp_path, tsa):
    (tmp_path / "ev").mkdir()
    assert main(["timestamp", str(tmp_path / "ev"), "--tsa", tsa.url]) == 2
    with pytest.raises(ValueError, match="not an http"):
        timestamp(tmp_path / "ev", "ftp://127.0.0.1/tsa")


def test_acquire_many_passes_the_tsa_to_every_member(tmp_path, vm_folder, pki, tsa):
    from vmforensics import acquire_many

    batch = acquire_many([str(vm_folder)], tmp_path / "batch", case=CASE, progress=False, tsa=tsa.url)
    assert batch.ok
    (member,) = [p.parent for p in (tmp_path / "batch").glob("*/manifest.json")]
    assert (member / "manifest.json.tsr").is_file()
    assert openssl_ts_verify(member, "manifest.json.tsr", pki[0], tsa.cert_path).returncode == 0
    assert verify(member, tsa_ca=pki[0].pem).ok


def test_mutated_tokens_are_refused_with_a_reason_never_an_exception(tmp_path, vm_folder, pki, tsa):
    import random

    from vmforensics.custody.tsp import verify_token
    from vmforensics.errors import TimestampError

    result = acquire(vm_folder, tmp_path / "ev", tsa=tsa.url)
    data = (result.path / "manifest.json").read_bytes()
    good = (result.path / "manifest.json.tsr").read_bytes()
    expected, _ = verify_token(good, data, [pki[0].certificate])
    rng = random.Random(15)
    refused = 0
    for trial in range(400):
        token = bytearray(good)
        if trial % 4 == 0:
            token = token[: rng.randrange(len(token))]
        else:
            for _ in range(rng.randint(1, 3)):
                token[rng.randrange(len(token))] ^= 1 << rng.randrange(8)
        try:
            info, _ = verify_token(bytes(token), data, [pki[0].certificate])
        except TimestampError:
            refused += 1
            continue
        assert info == expected, "a changed token verified with other facts"
    assert refused > 300


def test_verify_json_names_the_timestamp_anchor_and_the_verdict(tmp_path, vm_folder, pki, tsa, capsys):
    result = acquire(vm_folder, tmp_path / "ev", tsa=tsa.url)
    gen_time = result.timestamps[0].info.gen_time
    assert main(["verify", str(result.path), "--tsa-ca", str(pki[0].pem), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (anchor,) = [a for a in report["anchors"] if a["kind"] == "timestamp"]
    assert anchor == {
        "kind": "timestamp",
        "status": "VERIFIED",
        "description": f"timestamp by {tsa.url} at {gen_time}",
    }
    # a timestamp proves when, not who: with the key from the directory the verdict stays "integrity only"
    assert report["verdict"].startswith("VERIFIED (integrity only: key from the directory; timestamp by")
