"""The survey's record: what runs where, as frozen attrs values with JSON, CSV and HTML views.

A :class:`SurveyReport` is the inventory of one hypervisor connection (or datastore folder) at
one moment, plus the findings computed from it. It changes nothing on the source; it can be
sealed into an evidence directory (:mod:`vmforensics.survey.seal`) and its VMs fed to
:func:`vmforensics.survey.acquisition.acquire_many`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from vmforensics.custody.models import (  # the converters are shared with the manifest's models
    ClockReading,
    ExaminerHost,
    SourceInfo,
    Tool,
    canonical_json,
    converter_for,
    optional_of,
    plain_dict,
    string_tuple,
    tuple_of,
    utc_now,
)
from vmforensics.errors import UsageError


def parse_time(value: str | None) -> dt.datetime | None:
    """An ISO 8601 time from a record as an aware UTC datetime (None stays None)."""
    if not value:
        return None
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    """The records' time format: UTC, microseconds, Z suffix."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attrs.frozen
class NICRecord:
    """A virtual network adapter: its MAC, how the MAC was assigned, and its network."""

    label: str | None
    mac: str | None
    address_type: str | None = None  # as the hypervisor says: generated, assigned/vpx, manual/static
    network: str | None = None
    connected: bool | None = None


@attrs.frozen
class DiskRecord:
    """A virtual disk as the VM uses it now: the top of its chain and how deep the chain is."""

    path: str
    capacity: int | None = None  # guest-visible bytes
    allocated: int | None = None  # bytes the chain's files take on the datastore
    chain_depth: int | None = None  # 1 = a base disk without snapshot deltas
    format: str | None = None
    files: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    error: str | None = None


@attrs.frozen
class SnapshotRecord:
    """One snapshot in a VM's tree; ``depth`` 1 is a root snapshot."""

    name: str
    reference: str | None = None  # moref, .vmsd uid, checkpoint id
    created: str | None = None
    parent: str | None = None
    depth: int = 1
    memory: bool | None = None
    size: int | None = None
    description: str | None = None
    quiesced: bool | None = None


@attrs.frozen
class MoveRecord:
    """A migration the hypervisor logged: where the VM ran before (its logs may still be there)."""

    time: str | None
    event: str
    source_host: str | None = None
    target_host: str | None = None
    source_datastore: str | None = None
    target_datastore: str | None = None
    user: str | None = None
    message: str | None = None


@attrs.frozen
class VMRecord:
    """One registered VM: identity, location, hardware, snapshots, activity and history."""

    name: str
    reference: str | None = None  # what an acquirer accepts: moref, .vmx path, domain UUID
    uuid: str | None = None
    instance_uuid: str | None = None
    power_state: str | None = None
    host: str | None = None
    cluster: str | None = None
    datacenter: str | None = None
    datastores: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    config_path: str | None = None
    guest_os: str | None = None
    tools_status: str | None = None
    nics: tuple[NICRecord, ...] = attrs.field(converter=tuple_of(NICRecord), factory=tuple)
    disks: tuple[DiskRecord, ...] = attrs.field(converter=tuple_of(DiskRecord), factory=tuple)
    snapshots: tuple[SnapshotRecord, ...] = attrs.field(converter=tuple_of(SnapshotRecord), factory=tuple)
    last_power_on: str | None = None
    last_activity: str | None = None  # the latest moment the VM is known to have run
    last_activity_basis: str | None = None  # where ``last_activity`` comes from
    lock_files: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    moves: tuple[MoveRecord, ...] = attrs.field(converter=tuple_of(MoveRecord), factory=tuple)
    template: bool = False
    details: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(n.mac for n in self.nics if n.mac)

    @property
    def target(self) -> str:
        """What to hand an acquirer to name this VM unambiguously."""
        return self.reference or self.name

    @property
    def snapshot_depth(self) -> int:
        return max((s.depth for s in self.snapshots), default=0)


@attrs.frozen
class HostRecord:
    """A hypervisor host and its clock against the examiner's."""

    name: str
    reference: str | None = None
    cluster: str | None = None
    datacenter: str | None = None
    product: str | None = None
    connection_state: str | None = None
    clock: ClockReading | None = attrs.field(converter=optional_of(ClockReading), default=None)


@attrs.frozen
class FileRecord:
    """A datastore file that no registered VM uses."""

    path: str
    datastore: str | None = None
    size: int | None = None
    modified: str | None = None
    reason: str | None = None


@attrs.frozen
class Finding:
    """Something the responder should know, in one sentence, with the facts behind it."""

    kind: str
    severity: str  # "high", "warning", "info"
    subject: str
    explanation: str
    facts: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)


#: Setting names that look like secrets: never in a survey's acquirer settings nor a batch plan's.
SECRET_SETTING = re.compile(r"pass(word|phrase)|secret|token|private|cookie", re.IGNORECASE)


def _public_settings(value: Any) -> dict[str, Any]:
    plain = plain_dict(value)
    leaked = sorted(name for name in plain if SECRET_SETTING.search(name))
    if leaked:
        raise UsageError(f"acquirer settings never hold secrets: {', '.join(leaked)}")
    return plain


@attrs.frozen
class AcquirerSettings:
    """How an acquirer reaches the surveyed source again: its kind (vmforensics.hypervisors), the
    constructor settings the survey connected with (host, port, user, TLS pin or CA file, known_hosts
    or host key fingerprint...), and the names of the secrets it needs (never their values)."""

    kind: str
    settings: dict[str, Any] = attrs.field(converter=_public_settings, factory=dict)
    secrets: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)

    @classmethod
    def of(cls, kind: str, secrets: Iterable[str] = (), **settings: Any) -> AcquirerSettings:
        """Settings given as keywords; those that are None (left at the acquirer's default) are dropped."""
        given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in settings.items()}
        return cls(kind, {k: v for k, v in given.items() if v is not None}, tuple(secrets))


@attrs.frozen
class Thresholds:
    """When a fact becomes a finding. Defaults follow vendor guidance where there is one."""

    dormant_days: float = 90.0
    active_since: str | None = None  # ISO date: VMs not run since then are dormant too
    snapshot_age_days: float = 3.0  # VMware: keep a snapshot no longer than 72 hours
    snapshot_depth: int = 3  # VMware: at most 2-3 snapshots in a chain for performance
    clock_skew_seconds: float = 60.0
    moved_within_days: float = 30.0


#: Columns of the per-VM table (CSV and HTML), in order.
VM_COLUMNS = (
    "name",
    "power_state",
    "host",
    "cluster",
    "datacenter",
    "datastores",
    "guest_os",
    "tools_status",
    "macs",
    "networks",
    "disks",
    "disk_capacity",
    "max_chain_depth",
    "snapshots",
    "oldest_snapshot",
    "last_activity",
    "moves",
    "findings",
    "uuid",
    "instance_uuid",
    "reference",
    "config_path",
)


@attrs.frozen
class SurveyReport:
    """The inventory of one source at one moment, and the findings computed from it."""

    source: SourceInfo = attrs.field(converter=converter_for(SourceInfo))
    vms: tuple[VMRecord, ...] = attrs.field(converter=tuple_of(VMRecord))
    hosts: tuple[HostRecord, ...] = attrs.field(converter=tuple_of(HostRecord), factory=tuple)
    unclaimed_files: tuple[FileRecord, ...] = attrs.field(converter=tuple_of(FileRecord), factory=tuple)
    findings: tuple[Finding, ...] = attrs.field(converter=tuple_of(Finding), factory=tuple)
    thresholds: Thresholds = attrs.field(converter=converter_for(Thresholds), factory=Thresholds)
    clock: ClockReading | None = attrs.field(converter=optional_of(ClockReading), default=None)
    taken: str = attrs.field(factory=utc_now)
    survey_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    duration: float | None = None
    notes: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    examiner_host: ExaminerHost = attrs.field(
        converter=converter_for(ExaminerHost), factory=ExaminerHost.current
    )
    tool: Tool = attrs.field(converter=converter_for(Tool), factory=Tool)
    #: How a worker connects to acquire this report's VMs (``acquire-batch`` plans from it).
    acquirer: AcquirerSettings | None = attrs.field(converter=optional_of(AcquirerSettings), default=None)

    # --- views -----------------------------------------------------------------------------------

    def to_json(self) -> bytes:
        """Canonical JSON (RFC 8785): the same bytes for the same report."""
        return canonical_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> SurveyReport:
        try:
            return cls(**json.loads(data))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"not a vmforensics survey report: {exc}") from exc

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per VM (the CSV and HTML table)."""
        by_vm: dict[str, list[str]] = {}
        for finding in self.findings:
            by_vm.setdefault(finding.subject, []).append(finding.kind)
        return [_row(vm, by_vm.get(vm.name, [])) for vm in self.vms]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The per-VM table as CSV; written to ``path`` too when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=VM_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w", newline="", encoding="utf-8") as f:
                f.write(text)
        return text

    def findings_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["kind", "severity", "subject", "explanation"])
        for f in self.findings:
            writer.writerow([f.kind, f.severity, f.subject, f.explanation])
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        from vmforensics.survey.html import report_html

        return report_html(self)

    def __repr__(self) -> str:
        return (
            f"<SurveyReport {self.source.kind} {self.source.host or ''} vms={len(self.vms)} "
            f"hosts={len(self.hosts)} findings={len(self.findings)} unclaimed_files={len(self.unclaimed_files)}>"
        )

    # --- choosing VMs to acquire -----------------------------------------------------------------

    def select(
        self,
        names: Iterable[str] | None = None,
        *,
        where: Callable[[VMRecord], bool] | None = None,
        finding: str | None = None,
        power_state: str | None = None,
        host: str | None = None,
    ) -> tuple[VMRecord, ...]:
        """The VMs matching every criterion given: names (or references), a predicate, a finding
        kind they are the subject of, a power state, a host. Unknown names raise UsageError."""
        chosen = list(self.vms)
        if names is not None:
            wanted = list(names)
            known = {vm.name for vm in self.vms} | {vm.reference for vm in self.vms if vm.reference}
            missing = [n for n in wanted if n not in known]
            if missing:
                raise UsageError(f"not in this survey: {', '.join(missing)}")
            chosen = [vm for vm in chosen if vm.name in wanted or vm.reference in wanted]
        if finding is not None:
            subjects = {f.subject for f in self.findings if f.kind == finding}
            chosen = [vm for vm in chosen if vm.name in subjects]
        if power_state is not None:
            chosen = [vm for vm in chosen if vm.power_state == power_state]
        if host is not None:
            chosen = [vm for vm in chosen if vm.host == host]
        if where is not None:
            chosen = [vm for vm in chosen if where(vm)]
        return tuple(chosen)

    def findings_of(self, kind: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind == kind)


def _row(vm: VMRecord, findings: list[str]) -> dict[str, Any]:
    snapshot_times = sorted(s.created for s in vm.snapshots if s.created)
    return {
        "name": vm.name,
        "power_state": vm.power_state,
        "host": vm.host,
        "cluster": vm.cluster,
        "datacenter": vm.datacenter,
        "datastores": list(vm.datastores),
        "guest_os": vm.guest_os,
        "tools_status": vm.tools_status,
        "macs": list(vm.macs),
        "networks": sorted({n.network for n in vm.nics if n.network}),
        "disks": len(vm.disks),
        "disk_capacity": sum(d.capacity or 0 for d in vm.disks),
        "max_chain_depth": max((d.chain_depth or 0 for d in vm.disks), default=0),
        "snapshots": len(vm.snapshots),
        "oldest_snapshot": snapshot_times[0] if snapshot_times else None,
        "last_activity": vm.last_activity,
        "moves": len(vm.moves),
        "findings": sorted(set(findings)),
        "uuid": vm.uuid,
        "instance_uuid": vm.instance_uuid,
        "reference": vm.reference,
        "config_path": vm.config_path,
    }


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else value
