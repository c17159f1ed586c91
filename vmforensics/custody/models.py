"""The chain-of-custody record: frozen, typed, canonical-JSON value types.

Every class here converts from the plain dicts of its JSON form (so ``Manifest.from_json`` rebuilds
and validates a whole manifest) and back (:func:`to_plain`), and the canonical bytes (RFC 8785)
are stable across a round trip.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import platform
import socket
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import rfc8785

from vmforensics.errors import UsageError

SCHEMA_VERSION = "1.0"
T = TypeVar("T")


def utc_now() -> str:
    """The examiner's UTC clock as ISO 8601 with microseconds and a Z suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_plain(value: Any) -> Any:
    """attrs instances -> dicts, tuples -> lists, recursively (the JSON form)."""
    if attrs.has(type(value)):
        return {f.name: to_plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical UTF-8 bytes of ``value``."""
    return rfc8785.dumps(to_plain(value))


MAX_SAFE_INTEGER = 2**53 - 1


def parse_json(data: bytes | str) -> Any:
    """Strict JSON for untrusted records: no NaN/Infinity, integers within +-(2^53 - 1) (the
    range RFC 8785 can represent), no duplicate keys, no nesting deep enough to exhaust the
    stack; ValueError otherwise."""
    import json

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def integer(digits: str) -> int:
        value = int(digits)
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {digits[:24]} is outside +-(2^53 - 1)")
        return value

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate key in an object")
        return result

    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(data, parse_constant=constant, parse_int=integer, object_pairs_hook=unique)
        rfc8785.dumps(value)  # lone surrogates, floats JCS cannot represent: ValueError here
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return value


def converter_for(cls: type[T]) -> Callable[[Any], T]:
    def convert(value: Any) -> T:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise UsageError(f"{cls.__name__} expects a mapping, got {type(value).__name__}")
        return cls(**value)

    return convert


def optional_of(cls: type[T]) -> Callable[[Any], T | None]:
    build = converter_for(cls)
    return lambda value: None if value is None else build(value)


def tuple_of(cls: type[T]) -> Callable[[Any], tuple[T, ...]]:
    build = converter_for(cls)
    return lambda values: tuple(build(v) for v in values)


def string_tuple(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def _non_empty(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be a non-empty string")


def plain_dict(value: Any) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen
class CaseInfo:
    """Who asked for this acquisition and under which case and authority."""

    case_id: str = attrs.field(validator=_non_empty)
    examiner: str = attrs.field(validator=_non_empty)
    evidence_id: str | None = None
    description: str | None = None
    notes: str | None = None
    authority: str | None = None


@attrs.frozen
class ExaminerHost:
    """The machine and account that ran the tool."""

    hostname: str
    fqdn: str
    os: str
    user: str
    python: str
    command_line: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)

    @classmethod
    def current(cls) -> ExaminerHost:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        return cls(
            hostname=socket.gethostname(),
            fqdn=socket.getfqdn(),
            os=platform.platform(),
            user=user,
            python=platform.python_version(),
            command_line=tuple(sys.argv),
        )


@attrs.frozen
class Tool:
    name: str = "vmforensics"
    version: str = attrs.field(factory=lambda: __import__("vmforensics").__version__)


@attrs.frozen
class VMIdentity:
    """What identifies the VM, as the hypervisor reports it (guest facts are flagged unverified)."""

    name: str
    uuid: str | None = None
    instance_uuid: str | None = None
    reference: str | None = None  # moref, Hyper-V VM id, libvirt domain id
    config_path: str | None = None
    mac_addresses: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    host: str | None = None
    cluster: str | None = None
    datacenter: str | None = None
    datastores: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    power_state_before: str | None = None
    power_state_after: str | None = None
    guest_reported: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)
    history: tuple[dict[str, Any], ...] = attrs.field(converter=tuple, factory=tuple)
    details: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)


@attrs.frozen
class SourceInfo:
    """The hypervisor and the connection to it: product, host, and how the peer was verified."""

    kind: str  # "local", "vmware", "hyperv", "libvirt", "files"
    host: str | None = None
    product: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)
    connection: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)
    vm: VMIdentity | None = attrs.field(converter=optional_of(VMIdentity), default=None)


@attrs.frozen
class ClockReading:
    """The hypervisor's clock against the examiner's, measured across one round trip."""

    examiner_utc: str
    source_utc: str | None
    skew_seconds: float | None
    round_trip_seconds: float | None
    method: str


@attrs.frozen
class Phase:
    name: str
    started: str
    finished: str | None = None
    outcome: str = "ok"


@attrs.frozen
class SourceAction:
    """A state change made on the source (snapshot, suspend, isolate, cleanup...)."""

    action: str
    parameters: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)
    started: str = attrs.field(factory=utc_now)
    finished: str | None = None
    outcome: str = "ok"
    details: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)


@attrs.frozen
class RemoteHashCheck:
    algorithm: str
    value: str | None
    matched: bool | None


_text = attrs.validators.instance_of(str)
_optional_text = attrs.validators.optional(_text)


def _count(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be a non-negative integer")


def _digests(instance: Any, attribute: attrs.Attribute, value: dict[str, Any]) -> None:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(
            f"{type(instance).__name__}.{attribute.name} must map algorithm names to hex strings"
        )


@attrs.frozen
class EvidenceFile:
    """One acquired file: where it came from, how, and what it hashes to."""

    source_path: str = attrs.field(validator=_text)
    local_path: str = attrs.field(validator=_text)  # relative to the evidence directory, POSIX separators
    role: str = attrs.field(validator=_text)
    size: int = attrs.field(validator=_count)
    hashes: dict[str, str] = attrs.field(converter=plain_dict, validator=_digests)
    size_reported: int | None = None
    source_mtime: float | None = None
    transport: str = "file"
    started: str | None = None
    finished: str | None = None
    resumed: int = 0  # bytes taken from an interrupted earlier run (proven; see Manifest.resumed)
    reconnections: int = 0  # connection losses this run recovered from
    changed_during_acquisition: bool = False
    remote_hash: RemoteHashCheck | None = attrs.field(converter=optional_of(RemoteHashCheck), default=None)
    notes: tuple[str, ...] = attrs.field(converter=string_tuple, factory=tuple)
    source_path_b64: str | None = None  # the source path's exact bytes when they are not UTF-8
    name_escaped: bool = False  # local_path is the escaped form of the source's name (custody/names)


@attrs.frozen
class Omission:
    """A file the source listed that is not in the evidence, and why."""

    source_path: str
    role: str
    reason: str
    source_path_b64: str | None = None


@attrs.frozen
class ResumedFile:
    """What a resumed run did with one file an interrupted run had started, and the proof used."""

    local_path: str
    outcome: str  # "continued" (partial copy extended) or "reused" (sealed by the earlier run)
    offset: int  # bytes taken from the earlier run
    proof: str


@attrs.frozen
class Integrity:
    ledger_head: str = attrs.field(validator=_text)
    ledger_events: int = attrs.field(validator=_count)
    signer_key_id: str | None = attrs.field(validator=_optional_text)
    signature_algorithm: str | None = attrs.field(validator=_optional_text)
    sums_sha256: str | None = attrs.field(
        default=None, validator=_optional_text
    )  # SHA-256 of SHA256SUMS, which lists the files/ entries


@attrs.frozen
class Manifest:
    """The sealed record of one acquisition (the signed part of an evidence directory)."""

    acquisition_id: str = attrs.field(validator=_text)
    case: CaseInfo = attrs.field(converter=converter_for(CaseInfo))
    source: SourceInfo = attrs.field(converter=converter_for(SourceInfo))
    files: tuple[EvidenceFile, ...] = attrs.field(converter=tuple_of(EvidenceFile))
    integrity: Integrity = attrs.field(converter=converter_for(Integrity))
    examiner_host: ExaminerHost = attrs.field(converter=converter_for(ExaminerHost))
    tool: Tool = attrs.field(converter=converter_for(Tool), factory=Tool)
    schema_version: str = SCHEMA_VERSION
    clock: ClockReading | None = attrs.field(converter=optional_of(ClockReading), default=None)
    phases: tuple[Phase, ...] = attrs.field(converter=tuple_of(Phase), factory=tuple)
    actions: tuple[SourceAction, ...] = attrs.field(converter=tuple_of(SourceAction), factory=tuple)
    omissions: tuple[Omission, ...] = attrs.field(converter=tuple_of(Omission), factory=tuple)
    options: dict[str, Any] = attrs.field(converter=plain_dict, factory=dict)
    started: str | None = None
    finished: str | None = None
    resumed: tuple[ResumedFile, ...] = attrs.field(converter=tuple_of(ResumedFile), factory=tuple)

    def to_json(self) -> bytes:
        return canonical_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        try:
            value = parse_json(data)
            if not isinstance(value, Mapping):
                raise TypeError("the top level is not an object")
            return cls(**value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"not a valid vmforensics manifest: {exc}") from exc

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def __repr__(self) -> str:
        vm = self.source.vm.name if self.source.vm else "-"
        return (
            f"<Manifest {self.acquisition_id} case={self.case.case_id!r} vm={vm!r} "
            f"files={len(self.files)} bytes={self.total_bytes} omissions={len(self.omissions)}>"
        )

    def _repr_html_(self) -> str:
        from vmforensics.reports import manifest_html

        return manifest_html(self)


def new_acquisition_id() -> str:
    return str(uuid.uuid4())
