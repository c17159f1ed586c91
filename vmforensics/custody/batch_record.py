"""The batch record: batch.json (canonical JSON, signed) and the hash-chained batch ledger.

A batch directory holds one evidence directory per member, ``batch.log.jsonl`` (a custody ledger of
the scheduling: submitted, started on which worker, finished) and ``batch.json``, which lists every
planned VM with its evidence directory, the SHA-256 of its signed manifest and its outcome (sealed,
failed with the reason, not started), and the batch ledger's head. ``batch.json.sig`` and
``batch.json.pub`` are the detached signature and the public key, as beside a manifest. A resumed
batch moves the earlier record into ``history/`` and the new record names its hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.certificates import (
    SIGNER_POLICY,
    chain_pem,
    load_certificates,
    subject_of,
    validate_chain,
)
from vmforensics.custody.ledger import check_chain
from vmforensics.custody.models import canonical_json, utc_now
from vmforensics.custody.seal import MANIFEST_NAME, signature_record, write_exclusive
from vmforensics.custody.signing import Signer, VerifyKey
from vmforensics.errors import SigningKeyError, UsageError

RECORD_NAME = "batch.json"
RECORD_SIGNATURE = "batch.json.sig"
RECORD_KEY = "batch.json.pub"
RECORD_CHAIN = "batch.json.chain.pem"  # the examiner's certificate chain, when the key has one
BATCH_LEDGER = "batch.log.jsonl"
HISTORY_DIR = "history"
SCHEMA = "vmforensics-batch/1"
RESERVED_NAMES = frozenset(
    {RECORD_NAME, RECORD_SIGNATURE, RECORD_KEY, RECORD_CHAIN, BATCH_LEDGER, HISTORY_DIR}
)
OUTCOMES = ("sealed", "failed", "not started")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(root: Path, record: dict[str, Any], key: Signer) -> str:
    """Write batch.json, its signature and public key exclusively; return batch.json's SHA-256."""
    body = canonical_json(record)
    write_exclusive(root / RECORD_NAME, body)
    write_exclusive(root / RECORD_SIGNATURE, signature_record(body, key, signed_file=RECORD_NAME))
    write_exclusive(root / RECORD_KEY, key.public_key().to_pem())
    if key.certificates:
        write_exclusive(root / RECORD_CHAIN, chain_pem(key.certificates))
    return hashlib.sha256(body).hexdigest()


def retire_record(root: Path, run: int) -> dict[str, str]:
    """Move the current record into history/ (bytes unchanged) before a resumed run writes its own."""
    history = root / HISTORY_DIR
    history.mkdir(exist_ok=True)
    moved = {}
    for name in (RECORD_NAME, RECORD_SIGNATURE, RECORD_KEY, RECORD_CHAIN):
        if name == RECORD_CHAIN and not (root / name).exists():
            continue
        target = history / name.replace("batch", f"batch-{run}", 1)
        if target.exists():
            raise UsageError(f"{target} already exists; the batch history is never overwritten")
        os.rename(root / name, target)
        moved[name] = target.relative_to(root).as_posix()
    return moved


def read_record(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / RECORD_NAME).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root / RECORD_NAME} is not a readable batch record: {exc}") from exc


@attrs.frozen
class MemberCheck:
    """The verdict on one member: OK, FAILED (its evidence does not verify), NOT SEALED or MISSING."""

    name: str
    directory: str
    outcome: str
    status: str
    detail: str = ""


@attrs.frozen
class BatchVerificationReport:
    """What ``verify`` found in a batch directory: the record, its signature, the ledger, each member."""

    path: str
    verified_at: str
    record_status: str  # OK, INVALID, MISSING
    signature_status: str  # VALID, INVALID, MISSING
    ledger_status: str  # OK, BROKEN, MISSING
    members: tuple[MemberCheck, ...]
    problems: tuple[str, ...]
    key_id: str | None = None
    key_source: str | None = None
    batch_id: str | None = None
    certificate_status: str | None = None  # with ca=: VERIFIED or FAILED (the record's signer chain)
    certificate: str | None = None  # what was proven, or why not

    @property
    def ok(self) -> bool:
        return (
            self.record_status == "OK"
            and self.signature_status == "VALID"
            and self.ledger_status == "OK"
            and all(m.status == "OK" for m in self.members)
            and self.certificate_status != "FAILED"
            and not self.problems
        )

    def summary_lines(self) -> list[str]:
        tally: dict[str, int] = {}
        for member in self.members:
            tally[member.status] = tally.get(member.status, 0) + 1
        counts = ", ".join(f"{n} {status}" for status, n in sorted(tally.items())) or "none"
        key = f" by key {self.key_id} ({self.key_source})" if self.key_id else ""
        lines = [
            f"{'VERIFIED' if self.ok else 'FAILED'}: batch {self.path}",
            f"record: {self.record_status}",
            f"signature: {self.signature_status}{key}",
            *(
                [f"certificate: {self.certificate_status}: {self.certificate}"]
                if self.certificate_status
                else []
            ),
            f"batch ledger: {self.ledger_status}",
            f"members: {counts}",
        ]
        lines += [
            f"{m.status} {m.name} ({m.directory}): {m.detail}" for m in self.members if m.status != "OK"
        ]
        return lines + list(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    def __repr__(self) -> str:
        return f"<BatchVerificationReport {'OK' if self.ok else 'FAILED'} {self.path} members={len(self.members)}>"

    def _repr_html_(self) -> str:
        from vmforensics.survey.html import sortable_table

        rows = [[m.name, m.outcome, m.status, m.directory, m.detail] for m in self.members]
        head = "<p>" + "<br>".join(_escape(line) for line in self.summary_lines()[:5]) + "</p>"
        return head + sortable_table(["VM", "outcome", "verification", "directory", "detail"], rows)


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def verify_batch(
    directory: str | os.PathLike[str],
    public_key: VerifyKey | str | os.PathLike[str] | None = None,
    **options: Any,
) -> BatchVerificationReport:
    """Verify a batch directory: batch.json's form and signature, the batch ledger against the head
    it signed, the earlier records in history/, and every member's evidence (``verify`` on each)."""
    from vmforensics.custody.verify import verify

    root = Path(directory)
    problems: list[str] = []
    path = root / RECORD_NAME
    if not path.is_file() or path.is_symlink():
        return BatchVerificationReport(
            str(root), utc_now(), "MISSING", "MISSING", "MISSING", (), ("batch.json is missing",)
        )
    body = path.read_bytes()
    try:
        record = json.loads(body)
        record_status = "OK" if _well_formed(record) and canonical_json(record) == body else "INVALID"
    except (ValueError, TypeError) as exc:
        record, record_status = {}, "INVALID"
        problems.append(f"batch.json is not JSON: {exc}")
    if record_status == "INVALID" and record:
        problems.append("batch.json is not a canonical batch record (edited after signing?)")
    if not _well_formed(record):
        record = {}
    key, key_source = _key(root, public_key, problems)
    signature_status = _signature(body, root / RECORD_SIGNATURE, key, record.get("signer_key_id"), problems)
    ledger_status = _ledger(root, record, problems)
    certificate_status, certificate = (
        _certificate(root, record, options["ca"]) if options.get("ca") is not None else (None, None)
    )
    members = tuple(_member(root, entry, public_key, options, verify) for entry in record.get("members", []))
    problems += _extras(root, {m.directory for m in members})
    return BatchVerificationReport(
        path=str(root),
        verified_at=utc_now(),
        record_status=record_status,
        signature_status=signature_status,
        ledger_status=ledger_status,
        members=members,
        problems=tuple(problems),
        key_id=key.key_id if key else None,
        key_source=key_source,
        batch_id=record.get("batch_id"),
        certificate_status=certificate_status,
        certificate=certificate,
    )


def _certificate(root: Path, record: dict[str, Any], ca: Any) -> tuple[str, str]:
    """The record's signer chain through the lab's CA at the record's sealing time; its leaf must
    certify the key that signed the record."""
    import datetime as dt

    from cryptography.x509.verification import VerificationError

    from vmforensics.custody.signing import VerifyKey

    path = root / RECORD_CHAIN
    if not path.is_file() or path.is_symlink():
        return "FAILED", f"no {RECORD_CHAIN}: the record was signed by a bare key"
    try:
        chain = load_certificates(path, what="certificate chain")
        roots = load_certificates(ca, what="CA certificate")
        leaf_key = VerifyKey(chain[0].public_key())  # type: ignore[arg-type]
        at = dt.datetime.fromisoformat(str(record.get("sealed_at")).replace("Z", "+00:00"))
    except (SigningKeyError, ValueError) as exc:
        return "FAILED", f"{RECORD_CHAIN}: {exc}"
    subject = subject_of(chain[0])
    if leaf_key.key_id != record.get("signer_key_id"):
        return (
            "FAILED",
            f'"{subject}" certifies key {leaf_key.key_id}, not the signer {record.get("signer_key_id")}',
        )
    try:
        path_found = validate_chain(chain[0], chain[1:], roots, at, SIGNER_POLICY)
    except VerificationError as exc:
        return "FAILED", f'"{subject}" is not valid through the given CA at {record.get("sealed_at")}: {exc}'
    return (
        "VERIFIED",
        f'"{subject}" via CA "{subject_of(path_found[-1])}" (valid at {record.get("sealed_at")})',
    )


def _well_formed(record: Any) -> bool:
    """The shape verify relies on (the record may come from anywhere)."""
    return (
        isinstance(record, dict)
        and record.get("schema") == SCHEMA
        and isinstance(record.get("members"), list)
        and all(isinstance(m, dict) for m in record["members"])
        and isinstance(record.get("ledger"), dict)
        and (record.get("supersedes") is None or isinstance(record["supersedes"], dict))
    )


def _key(
    root: Path, public_key: VerifyKey | str | os.PathLike[str] | None, problems: list[str]
) -> tuple[VerifyKey | None, str | None]:
    if public_key is not None:
        return (public_key if isinstance(public_key, VerifyKey) else VerifyKey.load(public_key)), "given"
    try:
        return VerifyKey.load(root / RECORD_KEY), "stored beside the record"
    except SigningKeyError as exc:
        problems.append(f"no usable public key beside batch.json: {exc}")
        return None, None


def _signature(body: bytes, path: Path, key: VerifyKey | None, signer: Any, problems: list[str]) -> str:
    try:
        sig = json.loads(path.read_bytes())
        signature = base64.b64decode(sig["signature"], validate=True)
    except FileNotFoundError:
        problems.append(f"{path.name} is missing")
        return "MISSING"
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        problems.append(f"{path.name} is unreadable: {exc}")
        return "INVALID"
    if key is None:
        return "INVALID"
    if sig.get("key_id") != key.key_id or signer != key.key_id:
        problems.append(f"{path.name} names key {sig.get('key_id')}, the record {signer}, not {key.key_id}")
        return "INVALID"
    if not key.verify(body, signature):
        problems.append(f"the signature in {path.name} does not match")
        return "INVALID"
    return "VALID"


def _ledger(root: Path, record: dict[str, Any], problems: list[str]) -> str:
    """The chain must be intact, end at the head the record signed, and pass every earlier record."""
    ledger = root / BATCH_LEDGER
    if not ledger.is_file():
        problems.append(f"{BATCH_LEDGER} is missing")
        return "MISSING"
    chain = check_chain(ledger)
    problems += [f"batch ledger: {p}" for p in chain.problems]
    signed = record.get("ledger", {})
    status = "OK" if chain.ok else "BROKEN"
    if (signed.get("head"), signed.get("events")) != (chain.head, chain.events):
        problems.append(
            f"batch ledger: {chain.events} events ending {chain.head[:16]}… on disk, but batch.json "
            f"signed {signed.get('events')} ending {str(signed.get('head'))[:16]}…"
        )
        status = "BROKEN"
    heads = [chain.head_after(events) for events in range(len(chain.lines) + 1)]
    earlier = record.get("supersedes")
    while earlier:
        if not isinstance(earlier.get("record"), str):
            problems.append("batch.json: supersedes names no record")
            return "BROKEN"
        old_path = root / earlier["record"]
        if (
            not _inside(root, old_path)
            or not old_path.is_file()
            or sha256_file(old_path) != earlier["sha256"]
        ):
            problems.append(
                f"history: {earlier['record']} is missing or differs from the hash the next record names"
            )
            return "BROKEN"
        try:
            old = json.loads(old_path.read_bytes())
        except ValueError:
            old = None
        if not _well_formed(old):
            problems.append(f"history: {earlier['record']} is not a batch record")
            return "BROKEN"
        count, head = old["ledger"].get("events"), old["ledger"].get("head")
        if not isinstance(count, int) or not 0 <= count < len(heads) or heads[count] != head:
            problems.append(f"history: {earlier['record']} signed a ledger head that is not in the chain")
            status = "BROKEN"
        earlier = old.get("supersedes")
    return status


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return not any(p.is_symlink() for p in [path, *path.parents] if p != root and root in p.parents)


def _member(
    root: Path, entry: dict[str, Any], public_key: Any, options: dict[str, Any], verify: Any
) -> MemberCheck:
    name, directory, outcome = str(entry.get("name")), str(entry.get("directory")), str(entry.get("outcome"))
    if "/" in directory or "\0" in directory or directory in ("", ".", "..") or directory in RESERVED_NAMES:
        return MemberCheck(name, directory, outcome, "UNSAFE", "the directory is not one name in the batch")
    if outcome != "sealed":
        return MemberCheck(name, directory, outcome, "NOT SEALED", entry.get("reason") or outcome)
    path = root / directory
    info = path.lstat() if os.path.lexists(path) else None
    if info is None or not stat.S_ISDIR(info.st_mode):
        return MemberCheck(
            name, directory, outcome, "MISSING", "not a directory here (written on a worker's own disk?)"
        )
    manifest = path / MANIFEST_NAME
    if not manifest.is_file() or sha256_file(manifest) != entry.get("manifest_sha256"):
        return MemberCheck(name, directory, outcome, "FAILED", "its manifest is not the one batch.json names")
    report = verify(path, public_key, **options)
    if not report.ok:
        return MemberCheck(name, directory, outcome, "FAILED", "; ".join(report.summary_lines()[1:]))
    return MemberCheck(name, directory, outcome, "OK", f"{len(report.files)} files verified")


def _extras(root: Path, members: set[str]) -> list[str]:
    return [
        f"EXTRA {entry.name}: in the batch directory but not in batch.json"
        for entry in sorted(root.iterdir())
        if entry.name not in members and entry.name not in RESERVED_NAMES
    ]
