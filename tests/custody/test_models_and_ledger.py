"""Manifest models round-trip byte for byte; the ledger's chain catches every edit."""

from __future__ import annotations

import json

import pytest

from vmforensics.custody.ledger import GENESIS, Ledger, check_chain, line_hash
from vmforensics.custody.models import CaseInfo, Manifest
from vmforensics.errors import EvidenceError, UsageError


def test_sealed_manifest_round_trips_byte_for_byte(sealed):
    raw = (sealed.path / "manifest.json").read_bytes()
    again = Manifest.from_json(raw)
    assert again == sealed.manifest
    assert again.to_json() == raw
    assert json.loads(raw)["schema_version"] == "1.0"


def test_manifest_never_holds_the_private_key_or_secrets(sealed):
    text = (sealed.path / "manifest.json").read_text() + (sealed.path / "custody.log.jsonl").read_text()
    assert "PRIVATE KEY" not in text and "password" not in text.lower()


@pytest.mark.parametrize("field", ["case_id", "examiner"])
def test_case_info_requires_case_and_examiner(field):
    values = {"case_id": "C-1", "examiner": "E"}
    values[field] = "  "
    with pytest.raises(UsageError):
        CaseInfo(**values)


def test_ledger_chains_each_event_to_the_previous_line(tmp_path):
    ledger = Ledger.create(tmp_path / "custody.log.jsonl", {"examiner": "E"})
    first = ledger.append("start", target="vm")
    second = ledger.append("stop")
    lines = (tmp_path / "custody.log.jsonl").read_bytes().splitlines()
    assert first.prev == GENESIS and second.prev == line_hash(lines[0])
    check = check_chain(tmp_path / "custody.log.jsonl")
    assert check.ok and check.events == 2 and check.head == line_hash(lines[1]) == ledger.head


def test_ledger_is_never_recreated_and_a_damaged_one_cannot_be_resumed(tmp_path):
    path = tmp_path / "custody.log.jsonl"
    ledger = Ledger.create(path, {})
    ledger.append("a")
    ledger.append("b")
    with pytest.raises(EvidenceError):
        Ledger.create(path, {})
    lines = path.read_bytes().splitlines()
    path.write_bytes(lines[1] + b"\n" + lines[0] + b"\n")
    with pytest.raises(EvidenceError, match="damaged"):
        Ledger.reopen(path, {})


def test_source_actions_are_recorded_in_the_ledger_and_the_session(tmp_path):
    from vmforensics.acquire.base import Session
    from vmforensics.custody.evidence import EvidenceDirectory

    evidence = EvidenceDirectory(tmp_path / "ev")
    ledger = Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    session = Session(evidence, ledger, CaseInfo(case_id="C", examiner="E"), {})
    with session.action("snapshot", memory=True, quiesce=False) as details:
        details["task"] = "task-42"
    with pytest.raises(RuntimeError), session.action("remove-snapshot"):
        raise RuntimeError("server said no")
    events = ledger.events()
    assert [(e.action, e.details.get("action")) for e in events] == [
        ("source-action-start", "snapshot"),
        ("source-action-end", "snapshot"),
        ("source-action-start", "remove-snapshot"),
        ("source-action-end", "remove-snapshot"),
    ]
    assert (
        session.actions[0].details == {"task": "task-42"} and session.actions[0].parameters["memory"] is True
    )
    assert session.actions[1].outcome == "failed: server said no"
