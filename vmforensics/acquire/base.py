"""The acquisition template every hypervisor follows.

``Acquirer.acquire`` runs connect -> identify -> preserve -> enumerate -> stream -> cleanup -> seal,
each phase a custody event. Cleanup comes before the seal so that what was undone on the source
is itself under the signature. A vendor module implements the steps; this module owns the
order, the ledger, the evidence directory, the manifest and the failure handling.
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from vmforensics.acquire.copier import RESUMED_NOTE, copy_file
from vmforensics.acquire.resume import (
    EarlierRun,
    check_identity,
    check_partial,
    check_source,
    check_start,
    refuse,
)
from vmforensics.confine import check_allowed_roots
from vmforensics.custody import names
from vmforensics.custody.derived import DerivedResult
from vmforensics.custody.evidence import FILES_DIR, EvidenceDirectory, check_hashes
from vmforensics.custody.ledger import LEDGER_NAME, Ledger
from vmforensics.custody.models import (
    CaseInfo,
    ClockReading,
    EvidenceFile,
    ExaminerHost,
    Integrity,
    Manifest,
    Omission,
    Phase,
    ResumedFile,
    SourceAction,
    SourceInfo,
    VMIdentity,
    new_acquisition_id,
    utc_now,
)
from vmforensics.custody.seal import make_read_only, write_sealed_records
from vmforensics.custody.signing import Signer, SigningKey
from vmforensics.custody.timestamps import TimestampResult, check_tsa_urls, timestamp_after_seal
from vmforensics.errors import EvidenceError, SourceError, UsageError, VMForensicsError
from vmforensics.progress import Progress, ProgressOption
from vmforensics.transport.base import Transport

log = logging.getLogger(__name__)

Preserve = Literal["snapshot", "suspend", "save", "checkpoint", "none"]


@attrs.frozen
class PlannedFile:
    """A file the enumeration found: where to read it and what to call it in the evidence."""

    source_path: str  # path for the transport
    dest_name: str  # relative name under files/ (checked again by the evidence writer)
    role: str
    size_reported: int | None = None
    label: str | None = None  # the hypervisor's own name for it, e.g. "[ds1] web01/web01.vmx"
    name_escaped: bool = False  # dest_name is the escaped form of the source's name (custody/names)
    source_b64: str | None = None  # the source path's exact bytes when they are not UTF-8


@attrs.frozen
class AcquisitionResult:
    """What ``acquire`` returns: the evidence directory, its sealed manifest and the duration."""

    path: Path
    manifest: Manifest
    duration: float
    timestamps: tuple[TimestampResult, ...] = ()  # one per TSA asked after the seal
    derived: tuple[DerivedResult, ...] = ()  # memory images converted after the seal

    @property
    def files(self) -> tuple[EvidenceFile, ...]:
        return self.manifest.files

    @property
    def omissions(self) -> tuple[Omission, ...]:
        return self.manifest.omissions

    def __repr__(self) -> str:
        return (
            f"<AcquisitionResult {self.path} files={len(self.files)} bytes={self.manifest.total_bytes} "
            f"omissions={len(self.omissions)} duration={self.duration:.1f}s>"
        )

    def _repr_html_(self) -> str:
        from vmforensics.reports import result_html

        return result_html(self.path, self.duration, self.manifest)


class Session:
    """The state of one acquisition run, shared by the template and the vendor steps."""

    def __init__(self, evidence: EvidenceDirectory, ledger: Ledger, case: CaseInfo, options: dict[str, Any]):
        self.evidence = evidence
        self.ledger = ledger
        self.case = case
        self.options = options
        self.source = SourceInfo(kind="unknown")
        self.vm: VMIdentity | None = None
        self.clock: ClockReading | None = None
        self.phases: list[Phase] = []
        self.actions: list[SourceAction] = []
        self.files: list[EvidenceFile] = []
        self.omissions: list[Omission] = []
        self.resumed: list[ResumedFile] = []  # what a resumed run took from the interrupted one
        self.state: dict[str, Any] = {}  # vendor steps keep their own facts here (snapshot ids...)

    def omit(self, source_path: str, role: str, reason: str) -> None:
        """Record a file the source has that will not be in the evidence, and why."""
        shown, raw = names.text(source_path), names.original_b64(source_path)
        self.omissions.append(Omission(shown, role, names.text(reason), raw))
        self.ledger.append("omit", source=shown, role=role, reason=names.text(reason), source_b64=raw)

    @contextlib.contextmanager
    def action(self, name: str, **parameters: Any) -> Iterator[dict[str, Any]]:
        """Record a change made on the source; the body fills ``details`` (task ids, results)."""
        details: dict[str, Any] = {}
        started = utc_now()
        self.ledger.append("source-action-start", action=name, parameters=parameters)
        outcome = "ok"
        try:
            yield details
        except BaseException as exc:
            outcome = f"failed: {exc}"
            raise
        finally:
            self.actions.append(SourceAction(name, parameters, started, utc_now(), outcome, details))
            self.ledger.append("source-action-end", action=name, outcome=outcome, details=details)


class Acquirer(abc.ABC):
    """The template: vendor modules implement the steps, :meth:`acquire` runs them in order."""

    kind: ClassVar[str] = ""
    preserve_modes: ClassVar[tuple[str, ...]] = ("none",)

    # --- the vendor steps ----------------------------------------------------------------------

    @abc.abstractmethod
    def connect(self, session: Session) -> None:
        """Open the API connection; fill ``session.source`` (product, host, verification)."""

    @abc.abstractmethod
    def identify(self, session: Session, target: str) -> VMIdentity:
        """Find the VM and return what identifies it (also measure ``session.clock`` here)."""

    def preserve(self, session: Session, mode: str, *, memory: bool, isolate: bool) -> None:  # noqa: B027
        """Freeze the VM's state (snapshot, suspend...) through ``session.action``."""

    @abc.abstractmethod
    def enumerate(self, session: Session) -> list[PlannedFile]:
        """Every file that belongs to the VM; what is left out goes to ``session.omit``."""

    @abc.abstractmethod
    def transport(self, session: Session) -> Transport:
        """The transport that reads the enumerated files."""

    def cleanup(self, session: Session) -> None:  # noqa: B027
        """Undo what ``preserve`` created (only that), through ``session.action``."""

    def disconnect(self, session: Session) -> None:  # noqa: B027
        """Close the API connection."""

    def source_roots(self, target: str) -> list[Path]:
        """Local folders and files this acquisition reads (none for a remote source): the evidence
        directory may be neither inside one of them nor hold one of them."""
        return []

    # --- the template --------------------------------------------------------------------------

    def acquire(
        self,
        target: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        case: CaseInfo,
        preserve: str = "none",
        memory: bool = True,
        isolate: bool = False,
        signer: Signer | None = None,
        hashes: Sequence[str] = ("sha256",),
        cleanup: bool = True,
        progress: ProgressOption = True,
        resume: bool = False,
        remote_hash: bool = False,
        exclude_roles: Sequence[str] = (),
        exclude: Sequence[str] = (),
        tsa: str | Sequence[str] = (),
        memory_image: bool | str = True,
        allowed_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> AcquisitionResult:
        """Acquire the VM ``target`` into the new evidence directory ``out`` and seal it.

        ``signer`` signs the manifest; without one a single-use key is generated and only its
        public half is kept (the signature then proves integrity, not who signed). ``exclude``:
        glob patterns (``*.vswp``, ``web01/*.log``) matched against each file's base name and its
        path under ``files/``; a match is recorded as an omission. ``tsa``: RFC 3161 time-stamping
        authority URL(s) asked for a token over the manifest after the seal; a TSA that fails is
        recorded in the ledger and never fails the sealed acquisition (``result.timestamps``).
        ``memory_image``: after the seal, convert each saved memory state to an image under
        derived/: True is "auto" (raw unless its holes would outweigh the memory, then ELF), or
        "raw"/"elf"/"lime"; False: none; a failure is recorded in the ledger, never raised
        (``result.derived``; docs/memory.md). ``allowed_roots``: folders or datastores beyond the
        ones the source names for the VM where its files may really live (vmforensics.confine);
        recorded in the manifest's options and the ledger.
        """
        target = os.fspath(target)
        if not isinstance(case, CaseInfo):
            raise UsageError("case must be a vmforensics.CaseInfo(case_id=..., examiner=...)")
        if preserve not in self.preserve_modes:
            raise UsageError(
                f"--preserve {preserve} is not available for this source (choose from "
                f"{', '.join(self.preserve_modes)})"
            )
        algorithms = check_hashes(hashes)
        tsa_urls = check_tsa_urls(tsa)
        extra_roots = check_allowed_roots(allowed_roots)
        check_out_of_source(out, self.source_roots(target))
        key = signer or SigningKey.generate()
        began = time.monotonic()
        evidence = EvidenceDirectory(out, resume=resume)
        session = self._open_session(
            evidence, case, resume, signer is None, target, preserve, memory, isolate
        )
        session.options.update(
            hashes=list(algorithms),
            remote_hash=remote_hash,
            exclude_roles=list(exclude_roles),
            exclude=list(exclude),
            allowed_roots=extra_roots,
        )
        if extra_roots:
            session.ledger.append("allowed-roots", roots=extra_roots)
        preserved = False
        transport: Transport | None = None
        bar = Progress(progress, description=f"acquire {target}") if progress else None
        try:
            with self._phase(session, "connect"):
                self.connect(session)
                session.source = SourceInfo(**names.json_safe(_plain(session.source)))
                connected = {"kind": session.source.kind, "host": session.source.host}
                session.ledger.append("connected", source=connected)
                if session.state["earlier"] is not None:
                    check_source(session.ledger, session.state["earlier"], connected)
            with self._phase(session, "identify"):
                session.vm = VMIdentity(**names.json_safe(_plain(self.identify(session, target))))
                session.ledger.append("identified", vm=_vm_summary(session.vm), clock=_plain(session.clock))
                if session.state["earlier"] is not None:
                    check_identity(session.ledger, session.state["earlier"], _vm_summary(session.vm))
            with self._phase(session, "preserve"):
                preserved = preserve != "none" or isolate
                self.preserve(session, preserve, memory=memory, isolate=isolate)
            with self._phase(session, "enumerate"):
                planned = self._store_names(session, self.enumerate(session))
                planned = self._exclude(session, planned, exclude_roles, exclude)
                session.ledger.append("enumerated", files=[p.label or p.source_path for p in planned])
            with self._phase(session, "stream"):
                transport = self.transport(session)
                if transport.scheme == "file":  # a local source: never acquire the evidence itself
                    planned = self._outside_evidence(session, planned)
                if bar is not None:
                    bar.set_total(sum(p.size_reported or 0 for p in planned) or None)
                self._stream(session, transport, planned, algorithms, bar, resume, remote_hash)
        except BaseException as exc:
            session.ledger.append("failed", error=f"{type(exc).__name__}: {exc}", resume_hint=_resume_hint())
            if preserved and cleanup:
                self._cleanup_quietly(session)
            self._disconnect_quietly(session, transport)
            if bar is not None:
                bar.close()
            raise
        if bar is not None:
            bar.close()
        if preserved and cleanup:
            with self._phase(session, "cleanup"):
                self.cleanup(session)
        self._disconnect_quietly(session, transport)
        manifest = self._seal(session, key, algorithms)
        stamps = timestamp_after_seal(evidence.root, tsa_urls) if tsa_urls else ()
        derived = _memory_images(evidence.root, manifest, memory_image) if memory and memory_image else ()
        return AcquisitionResult(evidence.root, manifest, time.monotonic() - began, stamps, derived)

    # --- the pieces of the template --------------------------------------------------------------

    def _open_session(
        self,
        evidence: EvidenceDirectory,
        case: CaseInfo,
        resume: bool,
        ephemeral_key: bool,
        target: str,
        preserve: str,
        memory: bool,
        isolate: bool,
    ) -> Session:
        host = ExaminerHost.current()
        actor = {"examiner": case.examiner, "host": host.hostname, "user": host.user}
        ledger_path = evidence.root / LEDGER_NAME
        earlier = None
        if resume and ledger_path.exists():  # (a sealed directory was refused by EvidenceDirectory)
            ledger = Ledger.reopen(ledger_path, actor, repair=True)
            earlier = EarlierRun.from_events(ledger.events())
            ledger.append("resume", target=names.text(target), acquisition_id=earlier.acquisition_id)
            check_start(ledger, earlier, self.kind, names.text(target))
        else:
            ledger = Ledger.create(ledger_path, actor)
        options = {
            "preserve": preserve,
            "memory": memory,
            "isolate": isolate,
            "ephemeral_signing_key": ephemeral_key,
        }
        session = Session(evidence, ledger, case, options)
        session.state["examiner_host"] = host
        session.state["earlier"] = earlier
        session.state["acquisition_id"] = earlier.acquisition_id if earlier else new_acquisition_id()
        session.state["started"] = utc_now()
        ledger.append(
            "start",
            acquisition_id=session.state["acquisition_id"],
            acquirer=self.kind,
            target=names.text(target),
            case=_plain(case),
            options=options,
            command_line=list(host.command_line),
        )
        return session

    @contextlib.contextmanager
    def _phase(self, session: Session, name: str) -> Iterator[None]:
        started = utc_now()
        session.ledger.append("phase-start", phase=name)
        try:
            yield
        except BaseException as exc:
            session.phases.append(Phase(name, started, utc_now(), f"failed: {exc}"))
            raise
        session.phases.append(Phase(name, started, utc_now()))
        session.ledger.append("phase-end", phase=name)

    @staticmethod
    def _store_names(session: Session, planned: list[PlannedFile]) -> list[PlannedFile]:
        """Every planned file gets a name that can be stored and shown: the source's name escaped
        where it must be (the original bytes recorded), or an omission when even that cannot be."""
        stored: list[PlannedFile] = []
        for item in planned:
            label = item.label or item.source_path
            try:
                dest = names.escape_relative(item.dest_name)
            except EvidenceError as exc:
                session.omit(label, item.role, f"name cannot be stored: {exc}")
                continue
            escaped = item.name_escaped or dest != item.dest_name
            if escaped:
                session.ledger.append(
                    "name-escaped",
                    source=names.text(label),
                    local=f"{FILES_DIR}/{dest}",
                    source_b64=names.original_b64(label),
                )
            stored.append(
                attrs.evolve(
                    item,
                    dest_name=dest,
                    label=names.text(label),
                    name_escaped=escaped,
                    source_b64=item.source_b64 or names.original_b64(label),
                )
            )
        return stored

    @staticmethod
    def _exclude(
        session: Session, planned: list[PlannedFile], roles: Sequence[str], patterns: Sequence[str] = ()
    ) -> list[PlannedFile]:
        """Drop exact duplicates; record excluded roles and globs and name clashes as omissions."""
        kept: list[PlannedFile] = []
        by_name: dict[str, PlannedFile] = {}
        for item in planned:
            label = item.label or item.source_path
            first = by_name.get(item.dest_name)
            if first is not None:
                if first.source_path != item.source_path:
                    session.omit(
                        label, item.role, f"same evidence name as {first.label or first.source_path}"
                    )
                continue
            by_name[item.dest_name] = item
            base = label.replace("\\", "/").rsplit("/", 1)[-1]
            matched = next(
                (
                    g
                    for g in patterns
                    if fnmatch.fnmatchcase(base, g) or fnmatch.fnmatchcase(item.dest_name, g)
                ),
                None,
            )
            if item.role in roles:
                session.omit(label, item.role, "excluded by the examiner")
            elif matched is not None:
                session.omit(label, item.role, f"excluded by the examiner (--exclude {matched})")
            else:
                kept.append(item)
        return kept

    @staticmethod
    def _outside_evidence(session: Session, planned: list[PlannedFile]) -> list[PlannedFile]:
        """A local file the source names inside the evidence directory is an omission, not a copy."""
        evidence = Path(os.path.realpath(session.evidence.root))
        kept = []
        for item in planned:
            if Path(os.path.realpath(item.source_path)).is_relative_to(evidence):
                session.omit(item.label or item.source_path, item.role, "inside the evidence directory")
            else:
                kept.append(item)
        return kept

    def _stream(
        self,
        session: Session,
        transport: Transport,
        planned: list[PlannedFile],
        algorithms: tuple[str, ...],
        bar: Progress | None,
        resume: bool,
        remote_hash: bool,
    ) -> None:
        for item in planned:
            label = item.label or item.source_path
            try:
                record = copy_file(
                    transport,
                    item.source_path,
                    session.evidence,
                    item.dest_name,
                    role=item.role,
                    hashes=algorithms,
                    ledger=session.ledger,
                    progress=bar,
                    resume=resume,
                    remote_hash=remote_hash,
                    size_reported=item.size_reported,
                    source_label=label,
                )
            except SourceError as exc:
                if resume and session.evidence.is_sealed(item.dest_name):
                    raise
                session.omit(label, item.role, f"could not be read: {exc}")
                continue
            except EvidenceError:
                if resume and session.evidence.is_sealed(item.dest_name):
                    session.files.append(self._already_sealed(session, item, algorithms, transport))
                    continue
                raise
            if item.name_escaped or item.source_b64:
                record = attrs.evolve(record, name_escaped=item.name_escaped, source_path_b64=item.source_b64)
            if record.resumed:
                proof = next(n for n in record.notes if n.startswith(RESUMED_NOTE)).split(": ", 1)[1]
                session.resumed.append(ResumedFile(record.local_path, "continued", record.resumed, proof))
            session.files.append(record)

    @staticmethod
    def _already_sealed(
        session: Session, item: PlannedFile, algorithms: tuple[str, ...], transport: Transport
    ) -> EvidenceFile:
        """A file sealed by the interrupted run: reused only when it still hashes as that run's
        ``acquire-file`` event says; a source changed since then is noted on the file."""
        from vmforensics.custody.verify import hash_file

        local = f"{FILES_DIR}/{item.dest_name}"
        label = item.label or item.source_path
        earlier: EarlierRun | None = session.state.get("earlier")
        facts = earlier.acquired.get(local) if earlier else None
        path = session.evidence.local_path(item.dest_name)
        size, digests = path.stat().st_size, hash_file(path, algorithms)
        if facts is None and earlier is not None and local in earlier.begun:
            facts = Acquirer._prove_unrecorded(session, earlier, local, label, item, transport, size, digests)
        if facts is None or facts.get("source") != label:
            refuse(
                session.ledger,
                f"{local} is sealed but the ledger records no acquisition of it from {label!r}",
            )
        recorded = facts.get("hashes") or {}
        if size != facts.get("size") or any(recorded.get(n, v) != v for n, v in digests.items()):
            refuse(session.ledger, f"{local} no longer hashes as the interrupted run recorded", local=local)
        begun = earlier.begun.get(local, {}) if earlier else {}
        now = transport.stat(item.source_path)
        notes = ["acquired by an earlier, interrupted run of this acquisition"]
        changed = bool(facts.get("changed")) or (begun.get("size"), begun.get("mtime")) != (
            now.size,
            now.mtime,
        )
        if (begun.get("size"), begun.get("mtime")) != (now.size, now.mtime):
            notes.append(
                f"the source changed since then: size {begun.get('size')} -> {now.size}, "
                f"mtime {begun.get('mtime')} -> {now.mtime}; this copy is of the earlier state"
            )
        proof = (
            f"sealed by the interrupted run; its size and hashes equal that run's acquire-file event; "
            f"source {'changed' if len(notes) > 1 else 'unchanged'} (size and mtime) since"
        )
        session.ledger.append(
            "acquire-file", source=label, local=local, role=item.role, size=size, hashes=digests,
            changed=changed, remote_hash=None, reused=True, proof=proof,
        )  # fmt: skip
        session.resumed.append(ResumedFile(local, "reused", size, proof))
        return EvidenceFile(
            source_path=label,
            local_path=local,
            role=item.role,
            size=size,
            hashes=digests,
            size_reported=item.size_reported,
            source_mtime=begun.get("mtime") if isinstance(begun.get("mtime"), float | int) else None,
            transport=transport.scheme,
            changed_during_acquisition=changed,
            notes=tuple(notes),
            source_path_b64=item.source_b64,
            name_escaped=item.name_escaped,
        )

    @staticmethod
    def _prove_unrecorded(
        session: Session,
        earlier: EarlierRun,
        local: str,
        label: str,
        item: PlannedFile,
        transport: Transport,
        size: int,
        digests: dict[str, str],
    ) -> dict[str, Any]:
        """A file the interrupted run sealed but died before recording (the crash window between
        the copy's seal and its ``acquire-file`` event): reused only when the whole source, re-read
        now, hashes as the copy does and its size and mtime equal the run's start event."""
        now = transport.stat(item.source_path)
        if size != now.size:
            refuse(
                session.ledger,
                f"{local}: {size} bytes sealed, but the source is {now.size} bytes",
                local=local,
            )
        check_partial(
            session.ledger, earlier, local, label, now, transport, item.source_path, size, digests["sha256"]
        )
        return {"source": label, "size": size, "hashes": digests, "changed": False}

    def _seal(self, session: Session, key: Signer, algorithms: tuple[str, ...]) -> Manifest:
        session.ledger.append(
            "seal", files=len(session.files), omissions=len(session.omissions), signer_key_id=key.key_id
        )
        manifest = Manifest(
            acquisition_id=session.state["acquisition_id"],
            case=session.case,
            source=attrs.evolve(session.source, vm=session.vm),
            files=tuple(session.files),
            integrity=Integrity(session.ledger.head, session.ledger.count, key.key_id, key.algorithm),
            examiner_host=session.state["examiner_host"],
            clock=session.clock,
            phases=tuple(session.phases),
            actions=tuple(session.actions),
            omissions=tuple(session.omissions),
            options=session.options,
            started=session.state["started"],
            finished=utc_now(),
            resumed=tuple(session.resumed),
        )
        manifest = write_sealed_records(session.evidence.root, manifest, key)
        make_read_only(session.evidence.root)
        return manifest

    def _cleanup_quietly(self, session: Session) -> None:
        try:
            with self._phase(session, "cleanup"):
                self.cleanup(session)
        except VMForensicsError as exc:
            log.error("cleanup after failure failed: %s", exc)

    def _disconnect_quietly(self, session: Session, transport: Transport | None) -> None:
        for close in (transport.close if transport is not None else None, lambda: self.disconnect(session)):
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # closing must never hide the real outcome
                log.warning("closing the connection failed: %s", exc)


def check_out_of_source(out: str | os.PathLike[str], roots: Sequence[Path]) -> None:
    """Refuse (before anything is written) an evidence directory equal to, inside or holding a
    source root: the tool never writes into the source, nor acquires its own evidence."""
    evidence = Path(os.path.realpath(out))
    for root in roots:
        source = Path(os.path.realpath(root))
        if evidence == source or evidence.is_relative_to(source):
            raise UsageError(
                f"--out {names.printable(os.fspath(out))} is inside the source {names.printable(str(root))}: "
                "evidence is never written into the source; choose a directory outside it "
                "(were the source and --out swapped?)"
            )
        if source.is_relative_to(evidence):
            raise UsageError(
                f"the source {names.printable(str(root))} is inside the evidence directory "
                f"--out {names.printable(os.fspath(out))}; choose a directory outside the source"
            )


def _memory_images(root: Path, manifest: Manifest, memory_image: bool | str) -> tuple[DerivedResult, ...]:
    """Derived memory images after the seal; nothing here may lose the sealed acquisition."""
    from vmforensics.memory.derive import derive_memory_images

    try:
        return derive_memory_images(root, manifest, "auto" if memory_image is True else str(memory_image))
    except Exception as exc:  # the sealed acquisition stands whatever happens here
        log.warning("no memory images derived from %s: %s", root, exc)
        return ()


def _plain(value: Any) -> Any:
    from vmforensics.custody.models import to_plain

    return to_plain(value)


def _vm_summary(vm: VMIdentity) -> dict[str, Any]:
    return {"name": vm.name, "uuid": vm.uuid, "reference": vm.reference, "macs": list(vm.mac_addresses)}


def _resume_hint() -> str:
    return "files already sealed are kept; acquire again into the same directory with --resume"
