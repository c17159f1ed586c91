"""Additions after the seal: new files and chained ledger events, never a changed manifest, and
verify hands each later event to its registered checker (an unregistered one fails)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from tests.custody.conftest import make_writable
from vmforensics import verify
from vmforensics.custody import postseal
from vmforensics.custody.ledger import LEDGER_NAME, Ledger
from vmforensics.custody.postseal import PostSealCheck, amend_sealed
from vmforensics.errors import EvidenceError

NOTE = "derived/note.txt"


def check_note(root: Path, event, manifest, options) -> PostSealCheck:
    """A checker for the tests' own action: the file named in the event still has its hash."""
    path = root / event.details["path"]
    ok = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == event.details["sha256"]
    return PostSealCheck(event.action, "OK" if ok else "FAILED", "note", files=(event.details["path"],))


@pytest.fixture
def note_action(monkeypatch):
    monkeypatch.setitem(postseal.POST_SEAL_CHECKERS, "test-note", f"{__name__}:check_note")


def add_note(root: Path, content: bytes = b"added after the seal\n") -> None:
    with amend_sealed(root) as amendment:
        with amendment.create(NOTE) as f:
            f.write(content)
        amendment.append("test-note", path=NOTE, sha256=hashlib.sha256(content).hexdigest())


def test_an_addition_after_the_seal_verifies_and_leaves_the_manifest_unchanged(sealed, note_action):
    root = sealed.path
    manifest_before = (root / "manifest.json").read_bytes()
    add_note(root)
    assert (root / "manifest.json").read_bytes() == manifest_before
    report = verify(root)
    assert report.ok, str(report)
    assert [c.action for c in report.post_seal] == ["test-note"]
    assert not [f for f in report.files if f.status == "EXTRA"]
    for path in (root / NOTE, root / "derived", root, root / LEDGER_NAME):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o222, f"{path} is writable after the addition"


def test_a_changed_addition_fails_through_its_checker(sealed, note_action):
    add_note(sealed.path)
    make_writable(sealed.path)
    (sealed.path / NOTE).write_bytes(b"swapped\n")
    report = verify(sealed.path)
    assert not report.ok and report.post_seal[0].status == "FAILED"


def test_an_event_with_no_registered_checker_after_the_seal_fails_verification(sealed):
    make_writable(sealed.path)
    Ledger.reopen(sealed.path / LEDGER_NAME, {"host": "x"}).append("unknown-addition", note="planted")
    report = verify(sealed.path)
    assert not report.ok
    assert "not an action allowed after the seal" in str(report)


def test_an_amendment_refuses_actions_with_no_checker_and_existing_files(sealed, note_action):
    with amend_sealed(sealed.path) as amendment:
        with pytest.raises(EvidenceError, match="may follow the seal"):
            amendment.append("seal", files=0)
        with pytest.raises(EvidenceError, match="already exists"):
            amendment.create("manifest.json")
    assert verify(sealed.path).ok


def test_an_unsealed_directory_cannot_be_amended(tmp_path):
    (tmp_path / LEDGER_NAME).write_bytes(b"")
    with pytest.raises(EvidenceError, match="not sealed"), amend_sealed(tmp_path):
        pass


def test_an_edited_line_inside_the_signed_prefix_breaks_the_ledger_even_with_additions(sealed, note_action):
    add_note(sealed.path)
    make_writable(sealed.path)
    ledger = sealed.path / LEDGER_NAME
    lines = ledger.read_bytes().splitlines(keepends=True)
    event = json.loads(lines[1])
    event["details"]["planted"] = True
    lines[1] = json.dumps(event).encode() + b"\n"
    ledger.write_bytes(b"".join(lines))
    report = verify(sealed.path)
    assert not report.ok and report.ledger_status == "BROKEN"
