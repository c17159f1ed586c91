"""verify cannot be crashed and says what it proved: every malformed manifest, signature file or
ledger line gives FAILED with a reason (exit 1), never a traceback; forgeries that keep the
directory self-consistent in one place are caught by the cross-checks in another."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.custody.conftest import make_writable
from vmforensics import SigningKey, verify
from vmforensics.cli import main
from vmforensics.custody.ledger import Ledger
from vmforensics.custody.models import canonical_json
from vmforensics.custody.seal import signature_record


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_bytes())


def _resign(root: Path, manifest: dict | bytes, key: SigningKey) -> None:
    """Write ``manifest`` as the attacker would: re-signed with ``key``, its .pub swapped in."""
    body = manifest if isinstance(manifest, bytes) else canonical_json(manifest)
    (root / "manifest.json").write_bytes(body)
    (root / "manifest.json.sig").write_bytes(signature_record(body, key))
    (root / "manifest.json.pub").write_bytes(key.public_key().to_pem())


def _failed_with(root: Path, text: str, capsys) -> str:
    assert main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED: "), out
    assert text in out, out
    assert "could not be completed" not in out, out  # a foreseen case, not the last-resort net
    return out


def test_untouched_evidence_without_a_key_says_integrity_only(sealed, capsys):
    assert main(["verify", str(sealed.path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"VERIFIED (integrity only: key from the directory): {sealed.path}"


def test_untouched_evidence_with_the_examiners_key_says_pinned(sealed, signing_key, tmp_path, capsys):
    pub = tmp_path / "examiner.pub"
    pub.write_bytes(signing_key.public_key().to_pem())
    assert main(["verify", "--key", str(pub), str(sealed.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == f"VERIFIED (pinned key {signing_key.key_id})"
    assert report["anchors"] == [
        {"kind": "key", "status": "VERIFIED", "description": f"pinned key {signing_key.key_id}"}
    ]


def test_edited_sha256sums_alone_fails(sealed, capsys):
    make_writable(sealed.path)
    sums = sealed.path / "SHA256SUMS"
    sums.write_bytes(sums.read_bytes() + b"0" * 64 + b"  files/web01/planted\n")
    _failed_with(sealed.path, "SHA256SUMS differs from the one sealed", capsys)


def test_manifest_resigned_with_another_key_and_pub_swapped_fails_on_the_ledgers_seal_event(sealed, capsys):
    """The untouched ledger names the original key and the original hashes."""
    make_writable(sealed.path)
    manifest = _manifest(sealed.path)
    attacker = SigningKey.generate()
    vmx = sealed.path / "files" / "web01" / "web01.vmx"
    vmx.write_bytes(b'displayName = "someone else"\n')
    import hashlib

    for entry in manifest["files"]:
        if entry["local_path"] == "files/web01/web01.vmx":
            entry["hashes"]["sha256"] = hashlib.sha256(vmx.read_bytes()).hexdigest()
            entry["size"] = vmx.stat().st_size
    manifest["integrity"]["signer_key_id"] = attacker.key_id
    manifest["integrity"]["sums_sha256"] = None
    _resign(sealed.path, manifest, attacker)
    out = _failed_with(sealed.path, "the seal event names key", capsys)
    assert "files/web01/web01.vmx was acquired as" in out


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda m: m["files"][0].update(local_path="files/web01/web01.vmx/inside"), "MISSING"),
        (lambda m: m["files"][0].update(local_path="files/" + "/".join(["a" * 250] * 20)), "MISSING"),
        (lambda m: m["files"][0]["hashes"].update(whirlpool="00"), "unknown hash algorithm"),
        (lambda m: m["files"][0].update(size="large"), "non-negative integer"),
        (lambda m: m.update(files="nope"), "manifest:"),
        (lambda m: m["integrity"].update(ledger_events=-1), "manifest:"),
    ],
    ids=[
        "path-under-a-file",
        "path-over-the-limit",
        "unknown-hash",
        "size-not-int",
        "files-not-list",
        "negative",
    ],
)
def test_malformed_but_resigned_manifest_is_failed_with_the_reason(sealed, capsys, edit, reason):
    make_writable(sealed.path)
    manifest = _manifest(sealed.path)
    edit(manifest)
    _resign(sealed.path, manifest, SigningKey.generate())
    _failed_with(sealed.path, reason, capsys)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"acquisition_id": NaN}', "NaN"),
        (b'{"acquisition_id": 9007199254740993}', "2^53"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "not an object"),
    ],
    ids=["nan", "big-int", "deep", "duplicate", "not-utf8", "not-object"],
)
def test_hostile_manifest_bytes_are_failed_with_the_reason(sealed, capsys, body, reason):
    make_writable(sealed.path)
    _resign(sealed.path, body, SigningKey.generate())
    _failed_with(sealed.path, reason, capsys)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"seq": NaN}', "NaN"),
        (b'{"seq": 1e400}', "not a custody event"),
        (b'{"seq": 18014398509481984}', "2^53"),
        (b"{" * 50_000, "not a custody event"),
        (b'"just a string"', "not a JSON object"),
    ],
    ids=["nan", "inf", "big-int", "deep", "string"],
)
def test_hostile_ledger_line_is_failed_with_the_reason(sealed, capsys, line, reason):
    make_writable(sealed.path)
    ledger = sealed.path / "custody.log.jsonl"
    lines = ledger.read_bytes().splitlines()
    lines[3] = line
    ledger.write_bytes(b"\n".join(lines) + b"\n")
    _failed_with(sealed.path, reason, capsys)


def test_unsealed_directory_with_a_cut_last_line_is_failed_as_recoverable(tmp_path, capsys):
    root = tmp_path / "ev"
    root.mkdir()
    ledger = Ledger.create(root / "custody.log.jsonl", {"examiner": "x"})
    ledger.append("start", acquisition_id="a")
    ledger.append("phase-start", phase="stream")
    raw = (root / "custody.log.jsonl").read_bytes()
    (root / "custody.log.jsonl").write_bytes(raw[:-25])  # power loss in the middle of a write
    out = _failed_with(root, "--resume to truncate it", capsys)
    assert "it can be continued with --resume" in out
    assert verify(root).recoverable


def test_planted_names_in_the_ledger_and_manifest_are_escaped_in_the_report(sealed, capsys):
    make_writable(sealed.path)
    manifest = _manifest(sealed.path)
    manifest["files"][0]["local_path"] = "files/x\nVERIFIED: all good\x1b[2J"
    _resign(sealed.path, manifest, SigningKey.generate())
    out = _failed_with(sealed.path, "x\\nVERIFIED: all good\\x1b[2J", capsys)
    assert "\x1b" not in out and not any(line.startswith("VERIFIED") for line in out.splitlines())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from vmforensics import CaseInfo, LocalAcquirer
    from vmforensics.demo.vm import build_demo_vm

    base = tmp_path_factory.mktemp("hostile")
    vm = build_demo_vm(base / "ds").parent
    return (
        LocalAcquirer()
        .acquire(str(vm), base / "ev", case=CaseInfo(case_id="H-1", examiner="Fuzzer"), progress=False)
        .path
    )


def _copy(pristine: Path, target: Path) -> Path:
    if target.exists():
        make_writable(target)
        shutil.rmtree(target)
    shutil.copytree(pristine, target)
    make_writable(target)
    return target


def _mutations() -> st.SearchStrategy[bytes]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutations(), where=st.sampled_from(["manifest", "ledger-line", "signature", "manifest-field"]))
def test_any_bytes_in_the_manifest_or_ledger_give_a_verdict_never_an_exception(
    pristine, tmp_path, data, where
):
    root = _copy(pristine, tmp_path / "case")
    if where == "manifest":
        _resign(root, data, SigningKey.generate())
    elif where == "signature":
        (root / "manifest.json.sig").write_bytes(data)
    elif where == "manifest-field":
        manifest = _manifest(root)
        try:
            value = json.loads(data)
        except ValueError:
            value = data.decode("latin-1")
        manifest["files"][0]["hashes"] = value
        body = json.dumps(manifest, allow_nan=True).encode()
        _resign(root, body, SigningKey.generate())
    else:
        ledger = root / "custody.log.jsonl"
        lines = ledger.read_bytes().splitlines()
        lines[2] = data.replace(b"\n", b" ")
        ledger.write_bytes(b"\n".join(lines) + b"\n")
    report = verify(root)
    assert not report.ok
    assert report.problems or any(f.status != "OK" for f in report.files)
    assert str(report).startswith("FAILED: ")
    assert not any("could not be completed" in p for p in report.problems), report.problems


@pytest.mark.parametrize("record", ["custody.log.jsonl", "manifest.json", "SHA256SUMS", "manifest.json.sig"])
def test_a_fifo_planted_as_a_record_is_failed_without_hanging(sealed, capsys, record):
    make_writable(sealed.path)
    (sealed.path / record).unlink()
    os.mkfifo(sealed.path / record)  # a reader that opened it blocking would wait forever
    _failed_with(sealed.path, "not a regular file", capsys)
