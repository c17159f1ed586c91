"""verify(dir): re-prove an evidence directory from what is on disk.

Every file is re-hashed (the manifest's hashes are the claim, never the proof), the signature
is checked over the exact manifest bytes, the ledger chain is re-derived and its head compared
with the signed one, and anything present but not in the manifest is reported as EXTRA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from vmforensics.custody.evidence import FILES_DIR, READ_CHUNK, safe_relative_path
from vmforensics.custody.ledger import GENESIS, LEDGER_NAME, CustodyEvent, check_chain, line_hash
from vmforensics.custody.models import EvidenceFile, Manifest, utc_now
from vmforensics.custody.names import printable
from vmforensics.custody.postseal import PostSealCheck, checker_for
from vmforensics.custody.seal import MANIFEST_NAME, PUBLIC_KEY_NAME, SIGNATURE_NAME, SUMS_NAME
from vmforensics.custody.signing import VerifyKey
from vmforensics.errors import SigningKeyError, UnsafePathError, UsageError, VerificationError

KNOWN_RECORDS = {MANIFEST_NAME, SIGNATURE_NAME, PUBLIC_KEY_NAME, SUMS_NAME, LEDGER_NAME}


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

    @property
    def ok(self) -> bool:
        return (
            self.manifest_status == "OK"
            and self.signature_status == "VALID"
            and self.ledger_status == "OK"
            and all(f.status == "OK" for f in self.files)
            and all(check.ok for check in self.post_seal)
            and not self.problems
        )

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
        lines = [f"{'VERIFIED' if self.ok else 'FAILED'}: {self.path}"]
        lines.append(f"manifest: {self.manifest_status}")
        key = f" by key {self.key_id} ({self.key_source})" if self.key_id else ""
        lines.append(f"signature: {self.signature_status}{key}")
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
            f"<VerificationReport {'OK' if self.ok else 'FAILED'} {self.path} manifest={self.manifest_status} "
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
    without it the key stored beside the manifest is used, and the report says so. ``options``
    go to the checkers of events added after the seal (e.g. a TSA's CA for timestamps). A batch
    directory (batch.json) gets a BatchVerificationReport over its record and every member."""
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root} is not an evidence directory")
    if (root / "batch.json").is_file() and not (root / MANIFEST_NAME).exists():
        from vmforensics.acquire.batch_record import verify_batch  # a batch: the record and every member

        return verify_batch(root, public_key, **options)  # type: ignore[return-value]
    problems: list[str] = []
    post_seal: tuple[PostSealCheck, ...] = ()
    manifest_bytes, manifest, manifest_status = _load_manifest(root, problems)
    key, key_source = _choose_key(root, public_key, problems)
    signature_status = _check_signature(root, manifest_bytes, manifest, key, problems)
    chain = check_chain(root / LEDGER_NAME) if (root / LEDGER_NAME).exists() else None
    if chain is None:
        ledger_status = "MISSING"
        problems.append("custody.log.jsonl is missing")
    else:
        ledger_status = "OK" if chain.ok else "BROKEN"
        problems += [f"ledger: {p}" for p in chain.problems]
        if manifest is not None:
            lines = (root / LEDGER_NAME).read_bytes().splitlines()
            signed = manifest.integrity.ledger_events
            prefix_head = line_hash(lines[signed - 1]) if 0 < signed <= len(lines) else GENESIS
            if signed > len(lines) or prefix_head != manifest.integrity.ledger_head:
                ledger_status = "BROKEN"
                problems.append(
                    f"ledger: {len(lines)} events on disk do not begin with the {signed} events the manifest "
                    f"signed (head {manifest.integrity.ledger_head[:16]}…)"
                )
            else:
                post_seal = _check_post_seal(root, lines[signed:], manifest, options)
        if manifest is None and chain.events:
            last = json.loads((root / LEDGER_NAME).read_bytes().splitlines()[-1])
            problems.append(f"acquisition not sealed: the ledger ends with {last.get('action')!r}")
    vouched = {path for check in post_seal for path in check.files}
    files = _check_files(root, manifest, vouched) if manifest is not None else ()
    return VerificationReport(
        path=str(root),
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
    )


def _check_post_seal(
    root: Path, lines: list[bytes], manifest: Manifest, options: dict[str, Any]
) -> tuple[PostSealCheck, ...]:
    """Hand each event added after the seal to the checker registered for its action."""
    checks: list[PostSealCheck] = []
    for line in lines:
        try:
            event = CustodyEvent(**json.loads(line))
        except (TypeError, ValueError):
            continue  # already reported by the chain check
        checker = checker_for(event.action)
        if checker is None:
            checks.append(
                PostSealCheck(
                    event.action, "FAILED", f"event {event.seq} is not an action allowed after the seal"
                )
            )
            continue
        checks.append(checker(root, event, manifest, options))
    return tuple(checks)


def _load_manifest(root: Path, problems: list[str]) -> tuple[bytes | None, Manifest | None, str]:
    path = root / MANIFEST_NAME
    if not path.is_file() or path.is_symlink():
        problems.append("manifest.json is missing: the acquisition was never sealed")
        return None, None, "MISSING"
    raw = path.read_bytes()
    try:
        manifest = Manifest.from_json(raw)
    except UsageError as exc:
        problems.append(f"manifest: {exc}")
        return raw, None, "INVALID"
    if manifest.to_json() != raw:
        problems.append("manifest: not in canonical form (edited after sealing?)")
        return raw, manifest, "INVALID"
    return raw, manifest, "OK"


def _choose_key(
    root: Path, public_key: VerifyKey | str | os.PathLike[str] | None, problems: list[str]
) -> tuple[VerifyKey | None, str | None]:
    if public_key is not None:
        key = public_key if isinstance(public_key, VerifyKey) else VerifyKey.load(public_key)
        return key, "given"
    try:
        return VerifyKey.load(root / PUBLIC_KEY_NAME), "stored beside the manifest"
    except SigningKeyError as exc:
        problems.append(f"no usable public key beside the manifest: {exc}")
        return None, None


def _check_signature(
    root: Path, body: bytes | None, manifest: Manifest | None, key: VerifyKey | None, problems: list[str]
) -> str:
    path = root / SIGNATURE_NAME
    if body is None:
        return "MISSING"
    if not path.is_file():
        problems.append("manifest.json.sig is missing")
        return "MISSING"
    try:
        record = json.loads(path.read_bytes())
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        problems.append(f"signature file unreadable: {exc}")
        return "INVALID"
    if key is None:
        return "INVALID"
    if record.get("key_id") != key.key_id:
        problems.append(
            f"signature names key {record.get('key_id')}, not the key used to verify ({key.key_id})"
        )
        return "INVALID"
    if manifest is not None and manifest.integrity.signer_key_id != key.key_id:
        problems.append(f"the manifest names signer {manifest.integrity.signer_key_id}, not {key.key_id}")
        return "INVALID"
    if not key.verify(body, signature):
        problems.append("the signature does not match manifest.json")
        return "INVALID"
    return "VALID"


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
            checks.append(FileCheck(entry.local_path, "UNSAFE", entry.size, None, str(exc)))
            continue
        listed[entry.local_path] = entry
    with ThreadPoolExecutor(max_workers=2) as pool:
        checks += pool.map(lambda e: _check_one(root, e), listed.values())
    checks += _extras(root, set(listed) | vouched)
    return checks


def _check_one(root: Path, entry: EvidenceFile) -> FileCheck:
    path = root / entry.local_path
    try:
        info = path.lstat()
    except FileNotFoundError:
        return FileCheck(entry.local_path, "MISSING", entry.size, None, "not on disk")
    if not stat.S_ISREG(info.st_mode):
        return FileCheck(entry.local_path, "MISMATCH", entry.size, None, "not a regular file")
    actual = hash_file(path, entry.hashes)
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
            extras.append(FileCheck(relative, "EXTRA", None, None, "not in the manifest"))
    return extras
