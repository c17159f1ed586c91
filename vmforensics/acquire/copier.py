"""The streaming copier: one remote file into the evidence directory, hashed in the same pass.

Reads run on the caller's thread while hashing and writing run on the evidence writer's worker,
so the link, the hash and the disk overlap. A dropped connection is resumed from the bytes
already durable on disk (reconnect with backoff, a bounded number of times), and each retry is
a custody event. The source's size and mtime are compared before and after.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from vmforensics.acquire.resume import EarlierRun, check_partial
from vmforensics.custody.evidence import FILES_DIR, Buffer, EvidenceDirectory
from vmforensics.custody.ledger import Ledger
from vmforensics.custody.models import EvidenceFile, RemoteHashCheck, utc_now
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    ResumeRefusedError,
    SourceError,
)
from vmforensics.progress import Progress
from vmforensics.transport.base import RemoteStat, Transport

log = logging.getLogger(__name__)
RESUMED_NOTE = "continued the interrupted run's partial copy of"


def copy_file(
    transport: Transport,
    remote_path: str,
    evidence: EvidenceDirectory,
    dest_name: str,
    *,
    role: str = "file",
    hashes: tuple[str, ...] = ("sha256",),
    ledger: Ledger | None = None,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    remote_hash: bool = False,
    resume: bool = False,
    size_reported: int | None = None,
    source_label: str | None = None,
) -> EvidenceFile:
    """Acquire ``remote_path`` as ``files/<dest_name>`` and return its sealed record."""
    label = source_label or remote_path
    before = _stat(transport, remote_path, retries, backoff)
    if before.is_dir or before.is_symlink:
        kind = "a directory" if before.is_dir else "a symbolic link"
        raise SourceError(f"{label} is {kind}, not a file")
    started = utc_now()
    # a fresh copy (also a resumed run's file not begun yet) opens the source before its evidence
    # file exists: one that cannot be read (unreadable, a FIFO or socket, refused by the
    # confinement) leaves no empty file behind
    first = None
    if not resume or not os.path.lexists(evidence.local_path(dest_name)):
        try:
            first = transport.open_read(remote_path, 0)
        except (HostVerificationError, AuthenticationError):
            raise
        except ConnectionError_:
            pass  # the copy loop below reconnects and retries
    try:
        writer = evidence.open_file(dest_name, hashes, resume=resume)
    except BaseException:
        if first is not None:
            first.close()
        raise
    local = f"{FILES_DIR}/{dest_name}"
    proof = None
    try:
        if writer.resumed_from:
            if ledger is None:
                raise ResumeRefusedError(f"{local}: a partial copy cannot be continued without its ledger")
            earlier = EarlierRun.from_events(ledger.events())
            proof = check_partial(
                ledger, earlier, local, label, before, transport, remote_path,
                writer.resumed_from, writer.prefix_sha256 or "",
            )  # fmt: skip
            ledger.append("resume-file", source=label, local=dest_name, offset=writer.resumed_from)
        elif ledger is not None:
            ledger.append(
                "acquire-file-start", source=label, local=local, size=before.size, mtime=before.mtime
            )
        if progress is not None:
            progress.start_file(dest_name, before.size, writer.size)
        reconnections = _stream(
            transport, remote_path, label, writer, ledger, progress, retries, backoff, first
        )
        digests = writer.seal()
    finally:
        writer.close()
    after = _stat(transport, remote_path, retries, backoff)  # a drop here must not fail a complete copy
    changed = _changed(before, after) or writer.size != before.size
    notes: list[str] = []
    if changed:
        notes.append(
            f"source changed during acquisition: size {before.size} -> {after.size}, "
            f"mtime {before.mtime} -> {after.mtime}, copied {writer.size}"
        )
        log.warning("%s: %s", label, notes[-1])
    if proof is not None:
        notes.insert(0, f"{RESUMED_NOTE} {writer.resumed_from} bytes: {proof}")
    check = _remote_check(transport, remote_path, digests) if remote_hash else None
    if check is not None and check.matched is False:
        notes.append(f"remote {check.algorithm} {check.value} differs from the copy's")
    record = EvidenceFile(
        source_path=label,
        local_path=f"files/{dest_name}",
        role=role,
        size=writer.size,
        hashes=digests,
        size_reported=size_reported if size_reported is not None else before.size,
        source_mtime=before.mtime,
        transport=transport.scheme,
        started=started,
        finished=utc_now(),
        resumed=writer.resumed_from,
        reconnections=reconnections,
        changed_during_acquisition=changed,
        remote_hash=check,
        notes=tuple(notes),
    )
    if ledger is not None:
        ledger.append(
            "acquire-file",
            source=label,
            local=record.local_path,
            role=role,
            size=record.size,
            hashes=digests,
            changed=changed,
            remote_hash=None if check is None else {"value": check.value, "matched": check.matched},
        )
    return record


def _stream(
    transport: Transport,
    path: str,
    label: str,
    writer: Any,
    ledger: Ledger | None,
    progress: Progress | None,
    retries: int,
    backoff: float,
    first: Any = None,
) -> int:
    """Copy from the writer's current size to the end (``first``: a stream already open at 0);
    returns the number of reconnections."""
    attempt = 0
    while True:
        stream, first = first, None
        try:
            if stream is None:
                stream = transport.open_read(path, writer.size)
            while True:
                if _fill(stream, writer.buffer(), writer, progress):
                    return attempt
        except (HostVerificationError, AuthenticationError):
            raise  # a changed host key or refused credentials: retrying cannot help, and must not
        except ConnectionError_ as exc:
            writer.flush()  # everything received so far is durable: the resume point
            attempt += 1
            if ledger is not None:
                ledger.append(
                    "transfer-interrupted", source=label, offset=writer.size, attempt=attempt, error=str(exc)
                )
            if attempt > retries:
                raise ConnectionError_(
                    f"{label}: gave up after {retries} reconnections at byte {writer.size}; "
                    "what was copied is kept — run the acquisition again with resume to continue"
                ) from exc
            log.warning("%s: connection lost at byte %d (%s); reconnecting", label, writer.size, exc)
            time.sleep(min(backoff * 2 ** (attempt - 1), 30))
            try:
                transport.reconnect()
            except ConnectionError_ as again:
                log.warning("%s: reconnect failed: %s", label, again)
        finally:
            if stream is not None:
                stream.close()


def _fill(stream: Any, buffer: Buffer, writer: Any, progress: Progress | None) -> bool:
    """Fill one buffer with as many reads as it takes (network streams return small pieces), then
    hand it to the writer; bytes received before a failure are kept, as they are valid.
    Returns True at the end of the file."""
    view = memoryview(buffer)
    count = 0
    finished = False
    try:
        while count < len(view):
            got = stream.readinto(view[count:])
            if not got:
                finished = True
                break
            count += got
            if progress is not None:
                progress.advance(got)
    finally:
        writer.submit(buffer, count)
    return finished


def _stat(transport: Transport, path: str, retries: int, backoff: float) -> RemoteStat:
    """``transport.stat`` that survives a dropped connection: reconnect with backoff, ``retries`` times."""
    attempt = 0
    while True:
        try:
            return transport.stat(path)
        except (HostVerificationError, AuthenticationError):
            raise
        except ConnectionError_ as exc:
            attempt += 1
            if attempt > retries:
                raise
            log.warning("%s: connection lost at stat (%s); reconnecting", path, exc)
            time.sleep(min(backoff * 2 ** (attempt - 1), 30))
            try:
                transport.reconnect()
            except ConnectionError_ as again:
                log.warning("%s: reconnect failed: %s", path, again)


def _changed(before: RemoteStat, after: RemoteStat) -> bool:
    return before.size != after.size or (
        before.mtime is not None and after.mtime is not None and before.mtime != after.mtime
    )


def _remote_check(transport: Transport, path: str, digests: dict[str, str]) -> RemoteHashCheck | None:
    try:
        value = transport.remote_hash(path, "sha256")
    except (ConnectionError_, SourceError) as exc:
        log.warning("%s: remote hash failed: %s", path, exc)
        value = None
    if value is None:
        return RemoteHashCheck(algorithm="sha256", value=None, matched=None)
    return RemoteHashCheck(
        algorithm="sha256", value=value.lower(), matched=value.lower() == digests["sha256"]
    )
