"""verify() must catch every kind of tampering, each with the right reason; an untouched directory
verifies, and coreutils' sha256sum agrees on the file hashes independently."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from tests.custody.conftest import make_writable
from vmforensics import SigningKey, verify
from vmforensics.custody.models import canonical_json


def test_untouched_evidence_verifies_and_sha256sum_agrees(sealed, signing_key):
    report = verify(sealed.path, signing_key.public_key())
    assert report.ok, str(report)
    assert report.key_source == "given" and report.counts() == {"OK": len(sealed.files)}
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=sealed.path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_without_a_key_uses_the_stored_one_and_says_so(sealed):
    report = verify(sealed.path)
    assert report.ok and report.key_source == "stored beside the manifest"


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("trial", range(3))
def test_one_flipped_byte_anywhere_in_any_file_is_a_mismatch(sealed, signing_key, trial):
    make_writable(sealed.path)
    rng = random.Random(trial)
    for entry in sealed.files:  # every file, a random byte each time
        path = sealed.path / entry.local_path
        offset = rng.randrange(path.stat().st_size)
        _flip(path, offset)
        report = verify(sealed.path, signing_key.public_key())
        statuses = {f.path: f.status for f in report.files}
        assert not report.ok and statuses[entry.local_path] == "MISMATCH", (entry.local_path, offset)
        _flip(path, offset)
    assert verify(sealed.path, signing_key.public_key()).ok
    _flip(sealed.path / sealed.files[0].local_path, 0)
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=sealed.path, capture_output=True, text=True)
    assert done.returncode != 0


def test_truncated_file_is_a_mismatch(sealed, signing_key):
    make_writable(sealed.path)
    path = sealed.path / sealed.files[-1].local_path
    path.write_bytes(path.read_bytes()[:-1])
    report = verify(sealed.path, signing_key.public_key())
    assert [f.status for f in report.files if f.path == sealed.files[-1].local_path] == ["MISMATCH"]


def test_deleted_file_is_missing_and_added_file_is_extra(sealed, signing_key):
    make_writable(sealed.path)
    (sealed.path / sealed.files[0].local_path).unlink()
    (sealed.path / "files" / "web01" / "planted.exe").write_bytes(b"MZ")
    (sealed.path / "notes.txt").write_text("added later")
    report = verify(sealed.path, signing_key.public_key())
    statuses = {f.path: f.status for f in report.files}
    assert statuses[sealed.files[0].local_path] == "MISSING"
    assert statuses["files/web01/planted.exe"] == "EXTRA" and statuses["notes.txt"] == "EXTRA"
    assert not report.ok


def _edit_manifest(root, change):
    manifest = json.loads((root / "manifest.json").read_bytes())
    change(manifest)
    return manifest


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["case"].update(examiner="Someone Else"),
        lambda m: m["files"][0]["hashes"].update(sha256="0" * 64),
        lambda m: m["files"].pop(),
        lambda m: m.update(finished="2030-01-01T00:00:00.000000Z"),
    ],
    ids=["examiner", "hash", "file-removed", "timestamp"],
)
def test_any_edit_of_the_manifest_breaks_the_signature(sealed, signing_key, edit):
    make_writable(sealed.path)
    manifest = _edit_manifest(sealed.path, edit)
    (sealed.path / "manifest.json").write_bytes(canonical_json(manifest))
    report = verify(sealed.path, signing_key.public_key())
    assert report.signature_status == "INVALID" and not report.ok


def test_whitespace_only_edit_of_the_manifest_is_caught(sealed, signing_key):
    make_writable(sealed.path)
    path = sealed.path / "manifest.json"
    path.write_bytes(path.read_bytes() + b"\n")
    report = verify(sealed.path, signing_key.public_key())
    assert report.manifest_status == "INVALID" and report.signature_status == "INVALID"


def test_manifest_resigned_by_another_key_is_rejected_with_the_examiners_key(sealed, signing_key):
    """An attacker edits the manifest and re-signs it with their own key (and swaps the .pub)."""
    from vmforensics.custody.seal import signature_record

    make_writable(sealed.path)
    attacker = SigningKey.generate()
    manifest = _edit_manifest(sealed.path, lambda m: m["integrity"].update(signer_key_id=attacker.key_id))
    body = canonical_json(manifest)
    (sealed.path / "manifest.json").write_bytes(body)
    (sealed.path / "manifest.json.sig").write_bytes(signature_record(body, attacker))
    (sealed.path / "manifest.json.pub").write_bytes(attacker.public_key().to_pem())
    report = verify(sealed.path, signing_key.public_key())
    assert report.signature_status == "INVALID" and not report.ok
    stored = verify(sealed.path)  # with only the stored key it "verifies" -- and names that key
    assert stored.key_id == attacker.key_id != signing_key.key_id


@pytest.mark.parametrize("damage", ["reorder", "edit", "remove-last", "remove-middle", "append"])
def test_ledger_tampering_is_caught(sealed, signing_key, damage):
    make_writable(sealed.path)
    path = sealed.path / "custody.log.jsonl"
    lines = path.read_bytes().splitlines()
    if damage == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif damage == "edit":
        event = json.loads(lines[1])
        event["details"]["phase"] = "forged"
        lines[1] = canonical_json(event)
    elif damage == "remove-last":
        lines.pop()
    elif damage == "remove-middle":
        lines.pop(4)
    else:
        lines.append(lines[-1])
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify(sealed.path, signing_key.public_key())
    assert report.ledger_status == "BROKEN" and not report.ok


def test_unsealed_directory_reports_the_ledgers_last_action(tmp_path):
    from vmforensics.custody.ledger import Ledger

    (tmp_path / "ev").mkdir()
    ledger = Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    ledger.append("start")
    ledger.append("failed", error="ConnectionError_: link down")
    report = verify(tmp_path / "ev")
    assert report.manifest_status == "MISSING" and not report.ok
    assert any("'failed'" in p for p in report.problems)
