"""verify(dir): re-prove an evidence directory from what is on disk.

Every file is re-hashed (the manifest's hashes are the claim, never the proof), the signature
is checked over the exact manifest bytes, the ledger chain is re-derived and its head compared
with the signed one, every ``acquire-file`` event and the seal event are cross-checked against the
manifest, SHA256SUMS against the hash the manifest signs, and anything present but not in the
manifest is reported as EXTRA. Everything read is hostile: any malformed input is a FAILED report
with the reason, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.certificates import CHAIN_NAME
from vmforensics.custody.evidence import FILES_DIR, HASH_ALGORITHMS, READ_CHUNK, safe_relative_path
from vmforensics.custody.ledger import (
    LEDGER_NAME,
    CustodyEvent,
    check_chain,
    parse_event,
)
from vmforensics.custody.models import EvidenceFile, Manifest, parse_json, utc_now
from vmforensics.custody.names import printable, text
from vmforensics.custody.postseal import PostSealCheck, checker_for
from vmforensics.custody.seal import MANIFEST_NAME, PUBLIC_KEY_NAME, SIGNATURE_NAME, SUMS_NAME
from vmforensics.custody.signing import VerifyKey
from vmforensics.errors import SigningKeyError, UnsafePathError, UsageError, VerificationError

log = logging.getLogger(__name__)
KNOWN_RECORDS = {MANIFEST_NAME, SIGNATURE_NAME, PUBLIC_KEY_NAME, SUMS_NAME, LEDGER_NAME, CHAIN_NAME}
MAX_RECORD_BYTES = 256 * 1024 * 1024  # manifest, signature, key, SHA256SUMS: read whole, so bounded


def hash_file(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """Digests of a file, all algorithms in one read, without following a final symlink."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while got := os.readv(fd, [view]):
            for hasher in hashers.values():
                hasher.update(view[:got])
    finally:
        os.close(fd)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


@attrs.frozen
class FileCheck:
    """The verdict on one file: OK, MISMATCH, MISSING, EXTRA or UNSAFE."""

    path: str
    status: str
    expected_size: int | None = None
    actual_size: int | None = None
    detail: str = ""


@attrs.frozen
class Anchor:
    """One thing the authenticity of the evidence rests on, and whether it held.

    ``kind``: "key" (a pinned public key, or the key found in the directory), "certificate" (an
    X.509 chain to a CA you trust), "timestamp" (an RFC 3161 token); ``status``: "VERIFIED",
    "UNPINNED" (checked, but against something the directory itself supplied), "FAILED".
    """

    kind: str
    status: str
    description: str


@attrs.frozen
class VerificationReport:
    """Everything ``verify`` found; ``ok`` only when every check passed."""

    path: str
    verified_at: str
    manifest_status: str  # OK, INVALID, MISSING
    signature_status: str  # VALID, INVALID, MISSING
    ledger_status: str  # OK, BROKEN, MISSING
    files: tuple[FileCheck, ...]
    problems: tuple[str, ...]
    key_id: str | None = None
    key_source: str | None = None  # "given" or "stored beside the manifest"
    acquisition_id: str | None = None
    ledger_events: int = 0
    post_seal: tuple[PostSealCheck, ...] = ()  # events added after the seal (timestamps, derived artifacts)
    anchors: tuple[Anchor, ...] = ()  # what authenticity rests on; the verdict line is built from it
    recoverable: bool = False  # an unsealed directory that --resume can continue

    @property
    def ok(self) -> bool:
        return (
            self.manifest_status == "OK"
            and self.signature_status == "VALID"
            and self.ledger_status == "OK"
            and all(f.status == "OK" for f in self.files)
            and all(check.ok for check in self.post_seal)
            and all(anchor.status != "FAILED" for anchor in self.anchors)
            and not self.problems
        )

    @property
    def verdict(self) -> str:
        """``VERIFIED (pinned key sha256:…)``, ``VERIFIED (integrity only: key from the directory)``,
        or ``FAILED``: the first line of the report says what the verdict rests on."""
        if not self.ok:
            return "FAILED"
        verified = [a.description for a in self.anchors if a.status == "VERIFIED"]
        if any(a.status == "VERIFIED" and a.kind != "timestamp" for a in self.anchors):
            return f"VERIFIED ({'; '.join(verified)})"
        # a proven timestamp says when, not who: without a pinned key or certificate, integrity only
        unpinned = [a.description for a in self.anchors if a.status == "UNPINNED" and a.kind != "timestamp"]
        unpinned += verified
        return f"VERIFIED (integrity only: {'; '.join(unpinned) or 'no trust anchor'})"

    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for f in self.files:
            tally[f.status] = tally.get(f.status, 0) + 1
        return tally

    def raise_for_failure(self) -> VerificationReport:
        if not self.ok:
            raise VerificationError(
                f"{self.path} failed verification: " + "; ".join(self.summary_lines()[1:])
            )
        return self

    def summary_lines(self) -> list[str]:
        lines = [f"{self.verdict}: {self.path}"]
        lines.append(f"manifest: {self.manifest_status}")
        key = f" by key {self.key_id} ({self.key_source})" if self.key_id else ""
        lines.append(f"signature: {self.signature_status}{key}")
        lines += [f"anchor: {a.kind} {a.status}: {a.description}" for a in self.anchors]
        lines.append(f"ledger: {self.ledger_status} ({self.ledger_events} events)")
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items())) or "none"
        lines.append(f"files: {counts}")
        lines += [f"{f.status} {f.path}: {f.detail}" for f in self.files if f.status != "OK"]
        lines += [f"after the seal: {c.action} {c.status}: {c.summary}" for c in self.post_seal]
        lines += [problem for c in self.post_seal for problem in c.problems]
        lines += self.problems
        return [printable(line) for line in lines]  # planted names cannot add or fake lines

    def __repr__(self) -> str:
        counts = ", ".join(f"{status}={n}" for status, n in sorted(self.counts().items()))
        return (
            f"<VerificationReport {self.verdict} {printable(self.path)} manifest={self.manifest_status} "
            f"signature={self.signature_status} ledger={self.ledger_status} files[{counts}]>"
        )

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    def _repr_html_(self) -> str:
        from vmforensics.reports import verification_html

        return verification_html(self)


def verify(
    directory: str | os.PathLike[str],
    public_key: VerifyKey | str | os.PathLike[str] | None = None,
    **options: Any,
) -> VerificationReport:
    """Re-prove an evidence directory. ``public_key``: the key you trust (object or PEM path);
    without it the key stored beside the manifest is used, and the verdict says that only
    integrity is proven. ``options`` go to the checkers of events added after the seal (e.g. a
    TSA's CA for timestamps). A batch directory (batch.json) gets a BatchVerificationReport over
    its record and every member."""
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root} is not an evidence directory")
    if (root / "batch.json").is_file() and not (root / MANIFEST_NAME).exists():
        from vmforensics.custody.batch_record import verify_batch  # a batch: the record and every member

        return verify_batch(root, public_key, **options)  # type: ignore[return-value]
    given = None
    if public_key is not None:  # the caller's own key: a bad one is the caller's error, raised
        given = public_key if isinstance(public_key, VerifyKey) else VerifyKey.load(public_key)
    try:
        return _verify(root, given, options)
    except Exception as exc:  # a check this module did not foresee: a verdict, never a traceback
        log.exception("verify %s: unexpected failure", root)
        return VerificationReport(
            path=text(str(root)),
            verified_at=utc_now(),
            manifest_status="INVALID",
            signature_status="INVALID",
            ledger_status="BROKEN",
            files=(),
            problems=(f"verification could not be completed: {type(exc).__name__}: {exc}",),
        )


def _verify(root: Path, given: VerifyKey | None, options: dict[str, Any]) -> VerificationReport:
    problems: list[str] = []
    post_seal: tuple[PostSealCheck, ...] = ()
    manifest_bytes, manifest, manifest_status = _load_manifest(root, problems)
    key, key_source = (given, "given") if given is not None else _stored_key(root, problems)
    signature_status, signed_by = _check_signature(root, manifest_bytes, manifest, key, problems)
    chain = check_chain(root / LEDGER_NAME) if _exists(root / LEDGER_NAME) else None
    lines: list[bytes] = []
    recoverable = False
    if chain is None:
        ledger_status = "MISSING"
        problems.append("custody.log.jsonl is missing")
    else:
        ledger_status = "OK" if chain.ok else "BROKEN"
        problems += [f"ledger: {p}" for p in chain.problems]
        lines = list(chain.lines)
        if manifest is not None:
            signed = manifest.integrity.ledger_events
            if chain.head_after(signed) != manifest.integrity.ledger_head:
                ledger_status = "BROKEN"
                problems.append(
                    f"ledger: {len(lines)} events on disk do not begin with the {signed} events the manifest "
                    f"signed (head {manifest.integrity.ledger_head[:16]}…)"
                )
            else:
                problems += _cross_check(lines[:signed], manifest, signed_by)
                post_seal = _check_post_seal(root, lines[signed:], manifest, options)
        elif lines or chain.torn is not None:
            last = _last_action(lines)
            recoverable = not [p for p in chain.problems if "--resume" not in p]
            advice = "; it can be continued with --resume" if recoverable else ""
            problems.append(f"acquisition not sealed: the ledger ends with {last!r}{advice}")
    files: list[FileCheck] = []
    if manifest is not None:
        problems += _check_sums(root, manifest)
        vouched = {path for check in post_seal for path in check.files}
        files = _check_files(root, manifest, vouched)
    return VerificationReport(
        path=text(str(root)),
        verified_at=utc_now(),
        manifest_status=manifest_status,
        signature_status=signature_status,
        ledger_status=ledger_status,
        files=tuple(files),
        problems=tuple(problems),
        key_id=key.key_id if key else None,
        key_source=key_source,
        acquisition_id=manifest.acquisition_id if manifest else None,
        ledger_events=chain.events if chain else 0,
        post_seal=post_seal,
        anchors=_key_anchor(key, key_source, signature_status)
        + _external_anchors(root, manifest, post_seal, signature_status, options),
        recoverable=recoverable,
    )


def _external_anchors(
    root: Path,
    manifest: Manifest | None,
    post_seal: tuple[PostSealCheck, ...],
    signature_status: str,
    options: dict[str, Any],
) -> tuple[Anchor, ...]:
    """The signer's certificate (with ``ca=``) and each RFC 3161 timestamp (custody/certificates,
    custody/timestamps)."""
    from vmforensics.custody.certificates import signer_anchor
    from vmforensics.custody.timestamps import timestamp_anchors

    anchors = [Anchor("timestamp", status, text) for status, text in timestamp_anchors(post_seal)]
    if options.get("ca") is not None and manifest is not None:
        status, description = signer_anchor(root, manifest, options["ca"], post_seal, signature_status)
        anchors.insert(0, Anchor("certificate", status, description))
    return tuple(anchors)


def _key_anchor(key: VerifyKey | None, source: str | None, signature_status: str) -> tuple[Anchor, ...]:
    if key is None:
        return ()
    if source == "given":
        status = "VERIFIED" if signature_status == "VALID" else "FAILED"
        return (Anchor("key", status, f"pinned key {key.key_id}"),)
    status = "UNPINNED" if signature_status == "VALID" else "FAILED"
    return (Anchor("key", status, "key from the directory"),)


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:
        return False
    return True


def _read(path: Path, what: str, problems: list[str], limit: int = MAX_RECORD_BYTES) -> bytes:
    """A record's bytes (a regular file, not a symlink, bounded); b"" with a problem otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        problems.append(f"{what}: cannot be opened ({exc.strerror or exc})")
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{what}: not a regular file")
            return b""
        if info.st_size > limit:
            problems.append(f"{what}: {info.st_size} bytes, more than a record of this kind can be")
            return b""
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _last_action(lines: list[bytes]) -> str | None:
    for line in reversed(lines):
        try:
            return parse_event(line).action
        except ValueError:
            continue
    return None


def _cross_check(lines: list[bytes], manifest: Manifest, signed_by: str | None) -> list[str]:
    """The signed ledger and the signed manifest must tell the same story: every file's last
    ``acquire-file`` event has its size and hashes, and the seal event names the signing key."""
    problems: list[str] = []
    acquired: dict[str, dict[str, Any]] = {}
    seal: CustodyEvent | None = None
    for line in lines:
        try:
            event = parse_event(line)
        except ValueError:
            continue  # reported by the chain check
        if event.action == "acquire-file" and isinstance(event.details.get("local"), str):
            acquired[event.details["local"]] = event.details
        elif event.action == "seal":
            seal = event
    for entry in manifest.files:
        facts = acquired.get(entry.local_path)
        if facts is None:
            problems.append(f"ledger: no acquire-file event for {entry.local_path}")
            continue
        if facts.get("size") != entry.size or facts.get("hashes") != entry.hashes:
            problems.append(
                f"ledger: {entry.local_path} was acquired as {facts.get('size')} bytes "
                f"sha256 {str((facts.get('hashes') or {}).get('sha256', '?'))[:16]}…, but the manifest "
                f"lists {entry.size} bytes sha256 {entry.hashes.get('sha256', '?')[:16]}…"
            )
    if seal is None:
        problems.append("ledger: no seal event in the signed part")
    else:
        ledger_key = seal.details.get("signer_key_id")
        if ledger_key != manifest.integrity.signer_key_id or (signed_by and ledger_key != signed_by):
            problems.append(
                f"ledger: the seal event names key {ledger_key}, but the manifest was signed by "
                f"{signed_by or manifest.integrity.signer_key_id}"
            )
    return problems


def _check_post_seal(
    root: Path, lines: list[bytes], manifest: Manifest, options: dict[str, Any]
) -> tuple[PostSealCheck, ...]:
    """Hand each event added after the seal to the checker registered for its action."""
    checks: list[PostSealCheck] = []
    for line in lines:
        try:
            event = parse_event(line)
        except ValueError:
            continue  # already reported by the chain check
        checker = checker_for(event.action)
        if checker is None:
            checks.append(
                PostSealCheck(
                    event.action, "FAILED", f"event {event.seq} is not an action allowed after the seal"
                )
            )
            continue
        try:
            checks.append(checker(root, event, manifest, options))
        except Exception as exc:  # a checker meeting hostile input: a verdict, not a traceback
            log.exception("checking %s event %s", event.action, event.seq)
            checks.append(PostSealCheck(event.action, "FAILED", f"event {event.seq}: {exc}"))
    return tuple(checks)


def _load_manifest(root: Path, problems: list[str]) -> tuple[bytes | None, Manifest | None, str]:
    path = root / MANIFEST_NAME
    if not _exists(path):
        problems.append("manifest.json is missing: the acquisition was never sealed")
        return None, None, "MISSING"
    raw = _read(path, "manifest", problems)
    try:
        manifest = Manifest.from_json(raw)
        canonical = manifest.to_json() == raw
    except (UsageError, ValueError, TypeError, RecursionError) as exc:
        problems.append(f"manifest: {exc}")
        return raw, None, "INVALID"
    if not canonical:
        problems.append("manifest: not in canonical form (edited after sealing?)")
        return raw, manifest, "INVALID"
    return raw, manifest, "OK"


def _stored_key(root: Path, problems: list[str]) -> tuple[VerifyKey | None, str | None]:
    pem = _read(root / PUBLIC_KEY_NAME, "manifest.json.pub", problems, limit=1024 * 1024)
    if not pem:
        return None, None
    try:
        return VerifyKey.from_pem(pem), "stored beside the manifest"
    except (SigningKeyError, ValueError, TypeError) as exc:
        problems.append(f"no usable public key beside the manifest: {exc}")
        return None, None


def _check_signature(
    root: Path, body: bytes | None, manifest: Manifest | None, key: VerifyKey | None, problems: list[str]
) -> tuple[str, str | None]:
    """The signature's status and the key id the signature file names."""
    path = root / SIGNATURE_NAME
    if body is None:
        return "MISSING", None
    if not _exists(path):
        problems.append("manifest.json.sig is missing")
        return "MISSING", None
    try:
        record = parse_json(_read(path, "manifest.json.sig", problems, limit=1024 * 1024))
        if not isinstance(record, dict) or not isinstance(record.get("signature"), str):
            raise ValueError("not a signature record")
        signature = base64.b64decode(record["signature"], validate=True)
        named = record.get("key_id")
    except (ValueError, binascii.Error) as exc:
        problems.append(f"signature file unreadable: {exc}")
        return "INVALID", None
    named = named if isinstance(named, str) else None
    if key is None:
        return "INVALID", named
    if named != key.key_id:
        problems.append(f"signature names key {named}, not the key used to verify ({key.key_id})")
        return "INVALID", named
    if manifest is not None and manifest.integrity.signer_key_id != key.key_id:
        problems.append(f"the manifest names signer {manifest.integrity.signer_key_id}, not {key.key_id}")
        return "INVALID", named
    try:
        valid = key.verify(body, signature)
    except (ValueError, TypeError) as exc:
        problems.append(f"the signature is malformed: {exc}")
        return "INVALID", named
    if not valid:
        problems.append("the signature does not match manifest.json")
        return "INVALID", named
    return "VALID", named


def _check_sums(root: Path, manifest: Manifest) -> list[str]:
    """SHA256SUMS is bound to the signature through the hash the manifest holds of it."""
    path = root / SUMS_NAME
    expected = manifest.integrity.sums_sha256
    if not _exists(path):
        return [f"{SUMS_NAME} is missing"]
    problems: list[str] = []
    actual = hashlib.sha256(_read(path, SUMS_NAME, problems)).hexdigest()
    if problems:
        return problems
    if expected is None:
        return [f"{SUMS_NAME} is not bound to the manifest (the manifest holds no hash of it)"]
    if actual != expected:
        return [f"{SUMS_NAME} differs from the one sealed (sha256 {actual[:16]}…, signed {expected[:16]}…)"]
    return []


def _check_files(root: Path, manifest: Manifest, vouched: set[str]) -> list[FileCheck]:
    listed: dict[str, EvidenceFile] = {}
    checks: list[FileCheck] = []
    for entry in manifest.files:
        relative = entry.local_path.removeprefix(f"{FILES_DIR}/")
        try:
            if not entry.local_path.startswith(f"{FILES_DIR}/"):
                raise UnsafePathError("outside files/")
            safe_relative_path(relative)
        except UnsafePathError as exc:
            checks.append(FileCheck(text(entry.local_path), "UNSAFE", entry.size, None, str(exc)))
            continue
        listed[entry.local_path] = entry
    with ThreadPoolExecutor(max_workers=2) as pool:
        checks += pool.map(lambda e: _check_one(root, e), listed.values())
    checks += _extras(root, set(listed) | vouched)
    return checks


def _check_one(root: Path, entry: EvidenceFile) -> FileCheck:
    path = root / entry.local_path
    unknown = sorted(name for name in entry.hashes if name not in HASH_ALGORITHMS)
    if unknown or "sha256" not in entry.hashes:
        detail = f"unknown hash algorithm {unknown[0]!r}" if unknown else "no sha256 listed"
        return FileCheck(entry.local_path, "MISMATCH", entry.size, None, detail)
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return FileCheck(entry.local_path, "MISMATCH", entry.size, None, "not a regular file")
        actual = hash_file(path, entry.hashes)
    except FileNotFoundError:
        return FileCheck(entry.local_path, "MISSING", entry.size, None, "not on disk")
    except OSError as exc:  # a component that is a file, a name over the system's limit, a loop
        return FileCheck(
            entry.local_path, "MISSING", entry.size, None, f"cannot be read: {exc.strerror or exc}"
        )
    if info.st_size != entry.size:
        return FileCheck(
            entry.local_path, "MISMATCH", entry.size, info.st_size, f"size {info.st_size} != {entry.size}"
        )
    differing = [name for name, value in entry.hashes.items() if actual[name] != value.lower()]
    if differing:
        return FileCheck(
            entry.local_path, "MISMATCH", entry.size, info.st_size, f"{', '.join(differing)} differ"
        )
    return FileCheck(entry.local_path, "OK", entry.size, info.st_size)


def _extras(root: Path, listed: set[str]) -> list[FileCheck]:
    extras: list[FileCheck] = []
    for directory, subdirs, names in os.walk(root):
        relative_dir = Path(directory).relative_to(root).as_posix()
        for name in sorted(names + [d for d in subdirs if Path(directory, d).is_symlink()]):
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            if relative in listed or (relative_dir == "." and name in KNOWN_RECORDS):
                continue
            extras.append(FileCheck(text(relative), "EXTRA", None, None, "not in the manifest"))
    return extras
