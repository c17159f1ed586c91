"""The custody ledger: an append-only, hash-chained log of every action (custody.log.jsonl).

Each line is the canonical JSON of one :class:`CustodyEvent`; each event carries the SHA-256 of
the previous line's bytes, so removing, reordering or editing any line breaks the chain, and the
manifest records the head (the hash of the last line) under the signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.models import canonical_json, utc_now
from vmforensics.errors import EvidenceError

LEDGER_NAME = "custody.log.jsonl"
GENESIS = "0" * 64


@attrs.frozen
class CustodyEvent:
    """One action in the chain of custody."""

    seq: int
    time: str
    actor: dict[str, Any]
    action: str
    details: dict[str, Any]
    prev: str

    def line(self) -> bytes:
        return canonical_json(self)


@attrs.frozen
class ChainCheck:
    ok: bool
    head: str
    events: int
    problems: tuple[str, ...]


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def check_chain(path: Path) -> ChainCheck:
    """Re-derive the chain from the file: sequence numbers, prev hashes, canonical form."""
    problems: list[str] = []
    prev = GENESIS
    count = 0
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ChainCheck(False, GENESIS, 0, (f"cannot read the ledger: {exc.strerror or exc}",))
    if raw and not raw.endswith(b"\n"):
        problems.append("the ledger's last line is not terminated (truncated?)")
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            event = CustodyEvent(**json.loads(line))
        except (TypeError, ValueError) as exc:
            problems.append(f"line {number}: not a custody event ({exc})")
            prev = line_hash(line)
            count += 1
            continue
        if event.line() != line:
            problems.append(f"line {number}: not in canonical form (edited?)")
        if event.seq != number:
            problems.append(f"line {number}: sequence number {event.seq} (lines removed or reordered)")
        if event.prev != prev:
            problems.append(f"line {number}: previous-hash does not match line {number - 1}")
        prev = line_hash(line)
        count += 1
    return ChainCheck(not problems, prev, count, tuple(problems))


class Ledger:
    """Appends custody events durably (each line fsynced) and tracks the chain head."""

    def __init__(self, path: Path, actor: dict[str, Any], *, head: str = GENESIS, count: int = 0):
        self.path = path
        self.actor = dict(actor)
        self.head = head
        self.count = count
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, actor: dict[str, Any]) -> Ledger:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        except FileExistsError as exc:
            raise EvidenceError(f"{path} already exists; a ledger is never overwritten") from exc
        return cls(path, actor)

    @classmethod
    def reopen(cls, path: Path, actor: dict[str, Any]) -> Ledger:
        """Continue an existing ledger (resume); refuses one whose chain is broken."""
        check = check_chain(path)
        if not check.ok:
            raise EvidenceError(f"cannot resume: the ledger {path} is damaged: {'; '.join(check.problems)}")
        return cls(path, actor, head=check.head, count=check.events)

    def append(self, action: str, /, **details: Any) -> CustodyEvent:
        with self._lock:
            event = CustodyEvent(
                seq=self.count + 1,
                time=utc_now(),
                actor=self.actor,
                action=action,
                details=details,
                prev=self.head,
            )
            line = event.line()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self.head = line_hash(line)
            self.count += 1
            return event

    def events(self) -> list[CustodyEvent]:
        return [CustodyEvent(**json.loads(line)) for line in self.path.read_bytes().splitlines()]
