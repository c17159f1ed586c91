"""Resuming an interrupted acquisition only where continuity is proven; it never splices.

The interrupted run's ledger says what it was acquiring (acquisition id, acquirer, target, the
source it connected to, the VM it identified) and, for each file it began, the source's size and
mtime at that moment. A resumed run must match all of it; a partial copy is continued only after
the prefix already on disk is re-read from the source and hashes the same. Any mismatch is a
``resume-refused`` ledger event and a :class:`ResumeRefusedError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import attrs

from vmforensics.custody.ledger import CustodyEvent, Ledger
from vmforensics.custody.names import printable
from vmforensics.errors import ResumeRefusedError
from vmforensics.transport.base import RemoteStat, Transport

PROOF_CHUNK = 8 * 1024 * 1024


@attrs.frozen
class EarlierRun:
    """What the interrupted run(s) recorded, read back from the ledger."""

    acquisition_id: str | None
    acquirer: str | None
    target: str | None
    source: Mapping[str, Any] | None
    vm: Mapping[str, Any] | None
    begun: Mapping[str, Mapping[str, Any]]  # local path -> the first acquire-file-start details
    acquired: Mapping[str, Mapping[str, Any]]  # local path -> the last acquire-file details

    @classmethod
    def from_events(cls, events: Iterable[CustodyEvent]) -> EarlierRun:
        start: Mapping[str, Any] = {}
        source = vm = None
        begun: dict[str, Mapping[str, Any]] = {}
        acquired: dict[str, Mapping[str, Any]] = {}
        for event in events:
            details = event.details
            if event.action == "start" and not start:
                start = details
            elif event.action == "connected" and source is None:
                source = details.get("source")
            elif event.action == "identified" and vm is None:
                vm = details.get("vm")
            elif event.action == "acquire-file-start" and isinstance(details.get("local"), str):
                begun.setdefault(details["local"], details)
            elif event.action == "acquire-file" and isinstance(details.get("local"), str):
                acquired[details["local"]] = details
        return cls(
            acquisition_id=_text(start.get("acquisition_id")),
            acquirer=_text(start.get("acquirer")),
            target=_text(start.get("target")),
            source=source if isinstance(source, Mapping) else None,
            vm=vm if isinstance(vm, Mapping) else None,
            begun=begun,
            acquired=acquired,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def refuse(ledger: Ledger, reason: str, **facts: Any) -> NoReturn:
    """Record why the resume is refused, then raise; nothing of the earlier run is changed."""
    ledger.append("resume-refused", reason=reason, **facts)
    raise ResumeRefusedError(
        f"--resume refused: {printable(reason)}. The evidence written so far is kept as it is; "
        "acquire into a new directory instead"
    )


def check_start(ledger: Ledger, earlier: EarlierRun, acquirer: str, target: str) -> None:
    if earlier.acquisition_id is None:
        refuse(ledger, "the ledger has no start event: it records no acquisition to continue")
    if earlier.acquirer != acquirer or earlier.target != target:
        refuse(
            ledger,
            f"the interrupted run acquired {earlier.acquirer} {earlier.target!r}, not {acquirer} {target!r}",
            earlier_acquirer=earlier.acquirer,
            earlier_target=earlier.target,
        )


def check_source(ledger: Ledger, earlier: EarlierRun, source: Mapping[str, Any]) -> None:
    if earlier.source is not None and dict(earlier.source) != dict(source):
        refuse(
            ledger,
            f"the source is {dict(source)}, but the interrupted run connected to {dict(earlier.source)}",
        )


def check_identity(ledger: Ledger, earlier: EarlierRun, vm: Mapping[str, Any]) -> None:
    if earlier.vm is None:
        return  # the interrupted run stopped before it identified the VM: nothing was copied
    for key in ("name", "uuid", "reference"):
        if earlier.vm.get(key) != vm.get(key):
            refuse(
                ledger,
                f"the VM's {key} is {vm.get(key)!r}, but the interrupted run acquired {earlier.vm.get(key)!r}",
            )


def check_partial(
    ledger: Ledger,
    earlier: EarlierRun,
    local: str,
    label: str,
    now: RemoteStat,
    transport: Transport,
    path: str,
    prefix_length: int,
    prefix_sha256: str,
) -> str:
    """Prove that the partial copy ``local`` is the start of the source as it is now; returns
    the proof's description (recorded as a ``resume-proof`` event), or refuses."""
    begun = earlier.begun.get(local)
    if begun is None:
        refuse(ledger, f"{local}: no record of where its {prefix_length} bytes came from", local=local)
    if begun.get("source") != label:
        refuse(ledger, f"{local} was begun from {begun.get('source')!r}, not {label!r}", local=local)
    if begun.get("size") != now.size or begun.get("mtime") != now.mtime:
        refuse(
            ledger,
            f"{label} changed since the interrupted run: size {begun.get('size')} -> {now.size}, "
            f"mtime {begun.get('mtime')} -> {now.mtime}",
            local=local,
        )
    if prefix_length > now.size:
        refuse(
            ledger, f"{local}: {prefix_length} bytes on disk but the source is {now.size} bytes", local=local
        )
    source_sha256 = prefix_hash(transport, path, prefix_length)
    if source_sha256 != prefix_sha256:
        refuse(
            ledger,
            f"{label}: its first {prefix_length} bytes differ from the partial copy's "
            f"(sha256 {source_sha256[:16]}… on the source, {prefix_sha256[:16]}… on disk)",
            local=local,
            source_prefix_sha256=source_sha256,
            copy_prefix_sha256=prefix_sha256,
        )
    proof = (
        f"source size and mtime equal the interrupted run's; the SHA-256 of the first "
        f"{prefix_length} bytes re-read from the source equals the partial copy's ({prefix_sha256})"
    )
    ledger.append("resume-proof", local=local, offset=prefix_length, prefix_sha256=prefix_sha256, proof=proof)
    return proof


def prefix_hash(transport: Transport, path: str, length: int) -> str:
    """SHA-256 of the source's first ``length`` bytes, read again from the source."""
    digest = hashlib.sha256()
    buffer = bytearray(min(PROOF_CHUNK, max(length, 1)))
    view = memoryview(buffer)
    remaining = length
    stream = transport.open_read(path, 0)
    try:
        while remaining:
            got = stream.readinto(view[: min(len(view), remaining)])
            if not got:
                break  # the source is shorter now: the hash below differs
            digest.update(view[:got])
            remaining -= got
    finally:
        stream.close()
    return digest.hexdigest()
