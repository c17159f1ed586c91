"""Batch plans: what to acquire, built into an acquirer on the worker, secrets named but never held.

An :class:`AcquisitionPlan` is a picklable description of one VM's acquisition: the acquirer kind,
its constructor settings, and *where* the worker finds each secret (:class:`SecretRef`: an
environment variable or a keyring entry). Plans travel to Dask workers in task payloads, so they
must never carry a password: settings whose name looks like a secret are refused, and secrets are
resolved only in :meth:`AcquisitionPlan.build`, on the machine that runs the acquisition.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.base import Acquirer
from vmforensics.custody.signing import Signer, SigningKey
from vmforensics.errors import UsageError
from vmforensics.hypervisors import hypervisors, load
from vmforensics.survey.models import SECRET_SETTING

#: Acquirer kinds -> "module:Class": every registered hypervisor (vmforensics.hypervisors), and files.
ACQUIRER_KINDS = {
    **{hypervisor.name: hypervisor.acquirer for hypervisor in hypervisors()},
    # files over SSH: settings are SSHTransport's plus paths/recursive
    "ssh-files": "vmforensics.acquire.files:FilesAcquirer",
}


def _pair(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    service, user = value
    return (str(service), str(user))


@attrs.frozen
class SecretRef:
    """Where a worker finds a secret (an environment variable or a keyring entry), never its value."""

    env: str | None = None
    keyring: tuple[str, str] | None = attrs.field(default=None, converter=_pair)

    def __attrs_post_init__(self) -> None:
        if (self.env is None) == (self.keyring is None):
            raise UsageError("a SecretRef names exactly one place: env='VAR' or keyring=(service, user)")

    def resolve(self) -> str:
        """The secret, read here (on the worker); UsageError when this machine does not have it."""
        where = socket.gethostname()
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UsageError(f"the secret ${self.env} is not set in the environment on {where}")
            return value
        assert self.keyring is not None
        try:
            import keyring
        except ImportError as exc:
            raise UsageError(
                f"keyring is not installed on {where} (pip install vmforensics[keyring])"
            ) from exc
        value = keyring.get_password(*self.keyring)
        if value is None:
            raise UsageError(f"no keyring entry {self.keyring[0]}/{self.keyring[1]} on {where}")
        return value

    @classmethod
    def from_plain(cls, value: Mapping[str, Any]) -> SecretRef:
        if not isinstance(value, Mapping) or not set(value) <= {"env", "keyring"}:
            raise UsageError(f"a secret is {{'env': VAR}} or {{'keyring': [service, user]}}, not {value!r}")
        return cls(env=value.get("env"), keyring=value.get("keyring"))


@attrs.frozen
class KeyRef:
    """The examiner's signing key as a worker loads it: a PEM path, where its passphrase is, and the
    certificate chain (a PEM file, leaf first) that certifies it."""

    path: str = attrs.field(converter=os.fspath)
    passphrase: SecretRef | None = None
    certificates: str | None = attrs.field(default=None, converter=attrs.converters.optional(os.fspath))

    def load(self) -> Signer:
        key = SigningKey.load(self.path, self.passphrase.resolve() if self.passphrase else None)
        return key.with_certificates(self.certificates) if self.certificates else key


@attrs.frozen
class TokenKeyRef:
    """The examiner's key on a PKCS#11 token as a worker opens it: module, token and key labels, and
    where the PIN is, and the certificate chain (PEM file). One session per process and key is
    opened and shared by its acquisitions."""

    module: str = attrs.field(converter=os.fspath)
    token_label: str
    key_label: str
    pin: SecretRef = SecretRef(env="VMFORENSICS_PKCS11_PIN")
    certificates: str | None = attrs.field(default=None, converter=attrs.converters.optional(os.fspath))

    def load(self) -> Signer:
        from vmforensics.custody.pkcs11 import PKCS11Key

        with _TOKEN_LOCK:
            key = _TOKEN_KEYS.get(self)
            if key is None:
                key = _TOKEN_KEYS[self] = PKCS11Key(
                    self.module,
                    self.token_label,
                    self.key_label,
                    self.pin.resolve(),
                    certificates=self.certificates or (),
                )
            return key


_TOKEN_KEYS: dict[TokenKeyRef, Signer] = {}
_TOKEN_LOCK = threading.Lock()
SignerRef = KeyRef | TokenKeyRef


def _settings(value: Mapping[str, Any]) -> dict[str, Any]:
    plain = dict(value)
    leaked = sorted(name for name in plain if SECRET_SETTING.search(name))
    if leaked:
        raise UsageError(
            f"settings {', '.join(leaked)} look like secrets: name them in secrets= as "
            "SecretRef(env=...) or SecretRef(keyring=...) so that they never travel in a task"
        )
    return plain


def _secrets(value: Mapping[str, SecretRef | Mapping[str, Any]]) -> dict[str, SecretRef]:
    return {
        name: ref if isinstance(ref, SecretRef) else SecretRef.from_plain(ref) for name, ref in value.items()
    }


def _kind(_: Any, __: Any, value: str) -> None:
    if value not in ACQUIRER_KINDS:
        raise UsageError(f"unknown acquirer kind {value!r} (choose from {', '.join(ACQUIRER_KINDS)})")


@attrs.frozen
class AcquisitionPlan:
    """One VM of a batch: the acquirer kind and settings, the target, and where it runs (limits)."""

    name: str
    target: str
    kind: str = attrs.field(default="local", validator=_kind)
    settings: dict[str, Any] = attrs.field(factory=dict, converter=_settings)
    secrets: dict[str, SecretRef] = attrs.field(factory=dict, converter=_secrets)
    host: str | None = None  # the hypervisor host (limit key); default: settings["host"] or "local"
    datastores: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def limit_host(self) -> str:
        return self.host or str(self.settings.get("host") or "local")

    def build(self) -> Acquirer:
        """The acquirer, made here with the secrets resolved here (call it on the worker)."""
        import vmforensics

        cls = load(ACQUIRER_KINDS[self.kind])
        arguments = {**self.settings, **{name: ref.resolve() for name, ref in self.secrets.items()}}
        try:
            if self.kind == "ssh-files":
                paths = arguments.pop("paths", [self.target])
                recursive = bool(arguments.pop("recursive", False))
                return cls(vmforensics.SSHTransport(**arguments), paths, recursive=recursive)
            return cls(**arguments)
        except TypeError as exc:
            raise UsageError(f"{self.name}: settings do not fit the {self.kind} acquirer: {exc}") from exc

    def to_plain(self) -> dict[str, Any]:
        """The plan as recorded in batch.json (secret references only)."""
        return {
            "name": self.name,
            "target": self.target,
            "kind": self.kind,
            "host": self.limit_host,
            "datastores": list(self.datastores),
            "settings": self.settings,
            "secrets": {
                name: attrs.asdict(ref, filter=lambda _, v: v is not None)
                for name, ref in self.secrets.items()
            },
        }


#: Where the command line says workers find a survey's password: settings -> a reference.
PasswordSource = Callable[[Mapping[str, Any]], SecretRef]


def plans_from_file(
    path: str | os.PathLike[str],
    *,
    password: PasswordSource | None = None,
    host_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[AcquisitionPlan]:
    """Read PLAN.json: a ``survey … --json`` report (of any hypervisor), or a batch plan.

    A survey report names how its VMs are reached again (``acquirer``: kind, settings, the names of
    the secrets needed); ``password(settings)`` says where workers find the password
    (``--password-env``, ``--password-keyring``). A batch plan is ``{"connections": {NAME: {"kind",
    "settings", "secrets"}}, "surveys": [{"path", "connection", "secrets", "select": {"names", "host",
    "power_state", "finding"}}], "members": [{"name", "target", "connection", "host",
    "datastores"}]}``; survey paths are relative to it, and a survey entry's connection and secrets
    add to (and win over) what the survey recorded. ``host_defaults`` (the options file's
    ``[hosts."NAME"]`` tables) fill settings the survey does not give, by the acquirer's own names.
    """
    from vmforensics.survey.models import SurveyReport

    source = Path(path)
    try:
        raw = source.read_bytes()
        document = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the plan {source}: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"{source} is neither a survey report nor a batch plan")
    reading = _SurveyReading(password, host_defaults or {})
    if "vms" in document:  # a survey report
        plans = reading.plans(SurveyReport.from_json(raw), source, {}, {})
        if not plans:
            raise UsageError(f"{source} selects no VM")
        return plans
    connections = document.get("connections", {})
    plans = []
    for entry in document.get("surveys", []):
        survey = source.parent / entry["path"]
        try:
            report = SurveyReport.from_json(survey.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read the survey {survey}: {exc}") from exc
        connection = connections.get(entry["connection"], None) if entry.get("connection") else {}
        if connection is None:
            raise UsageError(f"the plan names connection {entry['connection']!r}, which it does not define")
        secrets = {**connection.get("secrets", {}), **entry.get("secrets", {})}
        plans += reading.plans(report, survey, {**connection, "secrets": secrets}, entry.get("select", {}))
    for member in document.get("members", []):
        kind, settings, secrets = _connection(connections, member.get("connection"), "local")
        plans.append(
            AcquisitionPlan(
                name=member["name"],
                target=member.get("target", member["name"]),
                kind=kind,
                settings=settings,
                secrets=secrets,
                host=member.get("host"),
                datastores=member.get("datastores", ()),
            )
        )
    if not plans:
        raise UsageError(f"{source} selects no VM")
    return plans


@attrs.frozen
class _SurveyReading:
    """Plans from a survey report: its recorded acquirer settings, the options file's defaults for
    that host, the plan's connection on top, and every secret the survey needed given a place."""

    password: PasswordSource | None
    host_defaults: Mapping[str, Mapping[str, Any]]

    def plans(
        self, report: Any, source: Path, connection: Mapping[str, Any], select: Mapping[str, Any]
    ) -> list[AcquisitionPlan]:
        from vmforensics.survey.models import AcquirerSettings

        recorded = report.acquirer
        if recorded is None and "kind" in connection:
            recorded = AcquirerSettings(connection["kind"])
        elif recorded is None:
            if report.source.kind != "local":
                raise UsageError(
                    f"{source} is a {report.source.kind} survey that records no acquirer settings "
                    "(made by an older vmforensics?): survey again, or name its connection in a batch plan"
                )
            recorded = AcquirerSettings("local")
        kind = connection.get("kind", recorded.kind)
        settings = {**recorded.settings, **connection.get("settings", {})}
        host = settings.get("host")
        defaults = self.host_defaults.get(host, {}) if isinstance(host, str) else {}
        if defaults:
            accepted = _parameters(kind)
            settings = {**{k: v for k, v in defaults.items() if k in accepted}, **settings}
        secrets: dict[str, Any] = dict(connection.get("secrets", {}))
        for name in recorded.secrets:
            if name not in secrets:
                if self.password is None or name != "password":
                    raise UsageError(
                        f"{source}: the {kind} survey of {host or 'this machine'} logged in with a {name}; "
                        "say where the workers find it: --password-env VAR, --password-keyring, or "
                        'the plan\'s "secrets": {"password": {"env": VAR}}'
                    )
                secrets[name] = self.password(settings)
        return [_from_record(vm, kind, settings, secrets) for vm in report.select(**select)]


def _parameters(kind: str) -> frozenset[str]:
    """The keyword names the acquirer of ``kind`` takes (to pick settings from the options file)."""
    cls = load(ACQUIRER_KINDS[kind])
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self", "password", "options"}


def _connection(
    connections: Mapping[str, Any], name: str | None, default_kind: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if name is None:
        return default_kind, {}, {}
    if name not in connections:
        raise UsageError(f"the plan names connection {name!r}, which it does not define")
    entry = connections[name]
    return entry.get("kind", default_kind), entry.get("settings", {}), entry.get("secrets", {})


def _from_record(vm: Any, kind: str, settings: dict[str, Any], secrets: Any = None) -> AcquisitionPlan:
    return AcquisitionPlan(
        name=vm.name,
        target=vm.target,
        kind=kind,
        settings=settings,
        secrets=secrets or {},
        host=vm.host,
        datastores=vm.datastores,
    )
