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
