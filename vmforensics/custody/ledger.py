"""The custody ledger: an append-only, hash-chained log of every action (custody.log.jsonl).

Each line is the canonical JSON of one :class:`CustodyEvent`; each event carries the SHA-256 of
the previous line's bytes, so removing, reordering or editing any line breaks the chain, and the
manifest records the head (the hash of the last line) under the signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.models import canonical_json, parse_json, utc_now
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
    torn: bytes | None = None  # an unterminated last line (a write cut short); not counted in events
    lines: tuple[bytes, ...] = ()  # the terminated lines checked, so callers never read the file again

    def head_after(self, events: int) -> str | None:
        """The chain's head after its first ``events`` lines (GENESIS for none); None past the end."""
        if not 0 <= events <= len(self.lines):
            return None
        return line_hash(self.lines[events - 1]) if events else GENESIS


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def parse_event(line: bytes) -> CustodyEvent:
    """One ledger line as an event; ValueError for anything else (strict JSON, see parse_json)."""
    value = parse_json(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    try:
        event = CustodyEvent(**value)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if (
        not isinstance(event.seq, int)
        or not isinstance(event.action, str)
        or not isinstance(event.details, dict)
    ):
        raise ValueError("seq, action or details of the wrong type")
    return event


MAX_LEDGER_BYTES = 256 * 1024 * 1024  # about a million events; a ledger is read whole


def read_ledger(path: Path) -> bytes:
    """The ledger's bytes: a regular file (not a symlink, FIFO or device) of bounded size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EvidenceError(f"{path.name} is not a regular file")
        if info.st_size > MAX_LEDGER_BYTES:
            raise EvidenceError(f"{path.name} is {info.st_size} bytes, more than a ledger can be")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_LEDGER_BYTES + 1)[:MAX_LEDGER_BYTES]
    finally:
        os.close(fd)


TORN_ADVICE = (
    "a write was cut short (power loss or crash); acquire again into this directory with --resume "
    "to truncate it (recorded in the ledger) and continue"
)


def check_chain(path: Path) -> ChainCheck:
    """Re-derive the chain from the file: sequence numbers, prev hashes, canonical form."""
    problems: list[str] = []
    prev = GENESIS
    count = 0
    try:
        raw = read_ledger(path)
    except (OSError, EvidenceError) as exc:
        return ChainCheck(
            False, GENESIS, 0, (f"cannot read the ledger: {getattr(exc, 'strerror', None) or exc}",)
        )
    torn = None
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        torn, raw = raw[cut:], raw[:cut]
        problems.append(f"the last line ({len(torn)} bytes) is not terminated: {TORN_ADVICE}")
    lines = tuple(raw.splitlines())
    for number, line in enumerate(lines, start=1):
        try:
            event = parse_event(line)
            canonical = event.line() == line
        except ValueError as exc:
            problems.append(f"line {number}: not a custody event ({exc})")
            prev = line_hash(line)
            count += 1
            continue
        if not canonical:
            problems.append(f"line {number}: not in canonical form (edited?)")
        if event.seq != number:
            problems.append(f"line {number}: sequence number {event.seq} (lines removed or reordered)")
        if event.prev != prev:
            problems.append(f"line {number}: previous-hash does not match line {number - 1}")
        prev = line_hash(line)
        count += 1
    return ChainCheck(not problems, prev, count, tuple(problems), torn, lines)


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
    def reopen(cls, path: Path, actor: dict[str, Any], *, repair: bool = False) -> Ledger:
        """Continue an existing ledger (resume); refuses one whose chain is broken. With ``repair``
        an unterminated last line (a write cut short) is truncated, and that is recorded first."""
        check = check_chain(path)
        damaged = [p for p in check.problems if not (check.torn is not None and TORN_ADVICE in p)]
        if damaged or (check.torn is not None and not repair):
            raise EvidenceError(f"cannot continue the damaged ledger {path}: {'; '.join(check.problems)}")
        ledger = cls(path, actor, head=check.head, count=check.events)
        if check.torn is not None:
            size = path.stat().st_size
            os.truncate(path, size - len(check.torn))
            ledger.append(
                "ledger-repaired",
                reason="the last line was not terminated (a write cut short); it was truncated",
                truncated_bytes=len(check.torn),
                truncated_sha256=line_hash(check.torn),
                truncated_b64=base64.b64encode(check.torn[:65536]).decode("ascii"),
            )
        return ledger

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
        return [parse_event(line) for line in read_ledger(self.path).splitlines()]
