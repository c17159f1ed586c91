r"""HyperVAcquirer: a Hyper-V VM through PowerShell over WinRM, its files over SMB.

The steps run reviewed PowerShell scripts (scripts.py) through a verified WinRM
channel (winrm.py) and read files through the drive's administrative share or a
configured share (files.py)::

    HyperVAcquirer("hv01.lab", user="LAB\\ir", password=...).acquire(
        "web01", "/cases/2026-117/web01", case=case, preserve="checkpoint")

Preservation: ``checkpoint`` takes a Standard checkpoint (memory included; a VM set to Production
checkpoints is switched to Standard for this one checkpoint and switched back, both recorded),
``save`` runs Save-VM (memory to .vmrs/.bin, files closed), ``none`` copies as is (meant for a VM
that is Off). Cleanup removes only the checkpoint this run created (Remove-VMSnapshot merges its
differencing disks) and, when asked, starts a VM this run saved.
"""

from __future__ import annotations

import datetime as dt
import logging
import ntpath
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from vmforensics.acquire.base import Acquirer, AcquisitionResult, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import role_for
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import SourceError, UsageError, VMNotFoundError
from vmforensics.hypervisors.hyperv import scripts as scripts
from vmforensics.hypervisors.hyperv.files import HyperVFileTransport, ShareMap, confine_listing, vm_roots
from vmforensics.hypervisors.hyperv.scripts import Script, as_list
from vmforensics.hypervisors.hyperv.winrm import PowerShellSession, WinRMAuth
from vmforensics.transport.base import Transport
from vmforensics.transport.smb import SMBTransport

log = logging.getLogger(__name__)

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_PRODUCTION = ("Production", "ProductionOnly")
_ROLES_BY_KIND = {"smart-paging": "swap"}


class HyperVAcquirer(Acquirer):
    """Acquire a VM from a Hyper-V host (Windows Server / Windows with the Hyper-V role)."""

    kind: ClassVar[str] = "hyperv"
    preserve_modes: ClassVar[tuple[str, ...]] = ("checkpoint", "save", "none")

    def __init__(
        self,
        host: str,
        *,
        user: str,
        password: str,
        transport: WinRMAuth = "ntlm",
        winrm_https: bool = True,
        winrm_port: int | None = None,
        ca_bundle: str | None = None,
        verify_certificate: bool = True,
        smb_share: str | None = None,
        smb_share_root: str | None = None,
        smb_host: str | None = None,
        smb_port: int = 445,
        smb_encrypt: bool | None = None,
        restart_saved: bool = False,
    ) -> None:
        """``user`` is ``DOMAIN\\name`` or ``name``; the same account reads the files over SMB.

        ``smb_share``/``smb_share_root`` read files through one share that exports the local
        folder ``smb_share_root`` instead of the administrative shares (C$, D$...).
        ``restart_saved`` starts the VM again after a ``save`` acquisition.
        """
        if not host:
            raise UsageError("HyperVAcquirer needs the Hyper-V host's name or address")
        self.host = host
        self.user = user
        self.restart_saved = restart_saved
        self.shares = ShareMap(smb_share, smb_share_root)
        self._password = password
        self._smb = {"host": smb_host or host, "port": smb_port, "encrypt": smb_encrypt}
        domain, _, name = user.rpartition("\\")
        self._smb_user = (name, domain or None)
        self._smb_auth = "kerberos" if transport == "kerberos" else "ntlm"
        self.powershell = PowerShellSession(
            host,
            user=user,
            password=password,
            auth=transport,
            https=winrm_https,
            port=winrm_port,
            ca_bundle=ca_bundle,
            verify_certificate=verify_certificate,
        )

    def acquire(
        self, target: str, out: Any, *, remote_hash: bool = True, **options: Any
    ) -> AcquisitionResult:
        """As :meth:`Acquirer.acquire`; each file is also hashed on the host (Get-FileHash) by default."""
        return super().acquire(target, out, remote_hash=remote_hash, **options)

    # --- the steps -----------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        def record(script: Script, arguments: dict[str, Any], status: int) -> None:
            session.ledger.append(
                "remote-script",
                script=script.name,
                sha256=script.sha256,
                arguments=arguments,
                exit_status=status,
            )

        self.powershell.observer = record
        host = self.powershell.run(scripts.HOST)
        session.state["host"] = host
        session.source = SourceInfo(
            kind=self.kind,
            host=self.host,
            product={
                "name": "Microsoft Hyper-V",
                "version": host.get("hyperv_version"),
                "os": host.get("os_caption"),
                "os_version": host.get("os_version"),
                "build": host.get("os_build"),
                "computer_name": host.get("computer_name"),
                "fqdn": host.get("fqdn"),
            },
            connection={"winrm": self.powershell.describe(), "scripts": _script_hashes()},
        )

    def identify(self, session: Session, target: str) -> VMIdentity:
        session.clock = measure_clock(self._host_clock, method="PowerShell Get-Date over WinRM")
        key = {"id": target.strip("{}")} if _GUID.match(target) else {"name": target}
        found = self.powershell.run(scripts.IDENTIFY, **key)
        vm = found.get("vm")
        if vm is None:
            candidates = as_list(found.get("candidates"))
            if not candidates:
                raise VMNotFoundError(f"Hyper-V host {self.host} has no VM named {target!r}")
            listing = ", ".join(f"{c.get('name')} ({c.get('id')})" for c in candidates)
            raise UsageError(
                f"several VMs on {self.host} are named {target!r}: {listing}; give the VM id instead"
            )
        session.state["vm"] = found
        session.state["vm_id"] = vm["id"]
        events = as_list(self.powershell.run(scripts.EVENTS, id=vm["id"]).get("events"))
        adapters = as_list(found.get("network_adapters"))
        drives = as_list(found.get("hard_drives"))
        return VMIdentity(
            name=vm["name"],
            uuid=vm["id"],
            reference=vm["id"],
            config_path=vm_config_path(vm),
            mac_addresses=tuple(_mac(a.get("mac_address")) for a in adapters if a.get("mac_address")),
            host=vm.get("computer_name") or session.state["host"].get("computer_name"),
            cluster="clustered" if vm.get("is_clustered") else None,
            datastores=tuple(_folders(vm, drives)),
            power_state_before=vm.get("state"),
            guest_reported={
                "ip_addresses": {
                    a.get("name") or str(i): as_list(a.get("ip_addresses")) for i, a in enumerate(adapters)
                },
                "note": "reported by the guest's integration services; unverified",
            },
            history=tuple(events),
            details={
                "generation": vm.get("generation"),
                "configuration_version": vm.get("version"),
                "checkpoint_type": vm.get("checkpoint_type"),
                "path": vm.get("path"),
                "configuration_location": vm.get("configuration_location"),
                "snapshot_file_location": vm.get("snapshot_file_location"),
                "smart_paging_file_path": vm.get("smart_paging_file_path"),
                "network_adapters": adapters,
                "hard_drives": drives,
                "checkpoints": as_list(found.get("snapshots")),
            },
        )

    def preserve(self, session: Session, mode: str, *, memory: bool, isolate: bool) -> None:
        assert session.vm is not None
        vm_id = session.state["vm_id"]
        state = session.vm.power_state_before
        if mode == "save" and state != "Running":
            raise UsageError(
                f"Save-VM needs a running VM; {session.vm.name} is {state} (use preserve='none')"
            )
        if isolate:
            self._isolate(session, vm_id)
        if mode == "checkpoint":
            state = self._checkpoint(session, vm_id, memory)
        elif mode == "save":
            with session.action("save", memory=True, method="Save-VM") as details:
                details["script_sha256"] = scripts.SAVE.sha256
                state = self.powershell.run(scripts.SAVE, id=vm_id).get("state")
                details["state_after"] = state
                session.state["saved"] = True
        elif state not in ("Off", "Saved"):
            session.ledger.append(
                "note", text=f"preserve=none while the VM is {state}: files are copied in use"
            )
        session.vm = attrs.evolve(session.vm, power_state_after=state)

    def enumerate(self, session: Session) -> list[PlannedFile]:
        answer = self.powershell.run(scripts.ENUMERATE, id=session.state["vm_id"])
        roots = vm_roots(answer.get("roots") or {})
        allowed = [str(r) for r in session.options.get("allowed_roots") or ()]
        session.ledger.append("hyperv-roots", roots=roots, allowed_roots=allowed)
        listed, refused = confine_listing(as_list(answer.get("files")), roots, allowed)
        for item, reason in refused:
            path = item["path"]
            session.omit(path, _ROLES_BY_KIND.get(str(item.get("kind")), role_for("hyperv", path)), reason)
        planned: list[PlannedFile] = []
        for item in listed:
            path = item["path"]
            role = _ROLES_BY_KIND.get(str(item.get("kind")), role_for("hyperv", path))
            if item.get("missing"):
                session.omit(path, role, f"listed by the host but not readable: {item['missing']}")
                continue
            size = item.get("size")
            planned.append(
                PlannedFile(
                    source_path=path,
                    dest_name=_dest_name(path),
                    role=role,
                    size_reported=size if isinstance(size, int) else None,
                    label=path,
                )
            )
        return planned

    def transport(self, session: Session) -> Transport:
        files = HyperVFileTransport(self.shares, self.open_share, self.powershell)
        config = session.vm.config_path if session.vm else None
        if config:
            try:
                files.stat(config)
            except SourceError as exc:
                log.warning("cannot reach %s over SMB yet: %s", config, exc)
        connection = dict(session.source.connection, files=files.describe())
        session.source = attrs.evolve(session.source, connection=connection)
        return files

    def cleanup(self, session: Session) -> None:
        vm_id = session.state.get("vm_id")
        state = None
        if session.state.get("checkpoint_type_to_restore"):
            self._restore_checkpoint_type(session, vm_id)
        checkpoint = session.state.get("checkpoint_id")
        if checkpoint:
            with session.action(
                "remove-checkpoint",
                checkpoint_id=checkpoint,
                method="Remove-VMSnapshot (merges its differencing disks)",
            ) as details:
                details["script_sha256"] = scripts.REMOVE_CHECKPOINT.sha256
                state = self.powershell.run(scripts.REMOVE_CHECKPOINT, id=vm_id, snapshot_id=checkpoint).get(
                    "state"
                )
                details["state_after"] = state
            session.state.pop("checkpoint_id")
        if session.state.get("saved") and self.restart_saved:
            with session.action("start", method="Start-VM", reason="restart_saved=True") as details:
                details["script_sha256"] = scripts.START.sha256
                state = self.powershell.run(scripts.START, id=vm_id).get("state")
                details["state_after"] = state
            session.state.pop("saved")
        if state is not None and session.vm is not None:
            session.vm = attrs.evolve(session.vm, power_state_after=state)

    def disconnect(self, session: Session) -> None:
        self.powershell.close()

    # --- the pieces ------------------------------------------------------------------------------

    def _host_clock(self) -> dt.datetime | None:
        return _parse_utc(self.powershell.run(scripts.CLOCK).get("utc_now"))

    def _isolate(self, session: Session, vm_id: str) -> None:
        with session.action("isolate", method="Disconnect-VMNetworkAdapter") as details:
            details["script_sha256"] = scripts.ISOLATE.sha256
            details["disconnected"] = as_list(
                self.powershell.run(scripts.ISOLATE, id=vm_id).get("disconnected")
            )

    def _checkpoint(self, session: Session, vm_id: str, memory: bool) -> str | None:
        assert session.vm is not None
        current = session.vm.details.get("checkpoint_type")
        if memory and current in _PRODUCTION:
            with session.action(
                "set-checkpoint-type",
                checkpoint_type="Standard",
                reason="Production checkpoints hold no memory; switched for this one checkpoint",
            ) as details:
                details["script_sha256"] = scripts.SET_CHECKPOINT_TYPE.sha256
                details.update(
                    self.powershell.run(scripts.SET_CHECKPOINT_TYPE, id=vm_id, checkpoint_type="Standard")
                )
            session.state["checkpoint_type_to_restore"] = current
        name = f"vmforensics {session.state['acquisition_id']}"
        try:
            with session.action(
                "checkpoint", memory=memory, quiesce=False, checkpoint_name=name, method="Checkpoint-VM"
            ) as details:
                details["script_sha256"] = scripts.CHECKPOINT.sha256
                result = self.powershell.run(scripts.CHECKPOINT, id=vm_id, name=name)
                details.update(checkpoint_id=result.get("id"), snapshot_type=result.get("snapshot_type"))
                details["created"] = result.get("creation_time")
                session.state["checkpoint_id"] = result.get("id")
        finally:
            if session.state.get("checkpoint_type_to_restore"):
                self._restore_checkpoint_type(session, vm_id)
        return result.get("state")

    def _restore_checkpoint_type(self, session: Session, vm_id: str) -> None:
        wanted = session.state["checkpoint_type_to_restore"]
        with session.action("restore-checkpoint-type", checkpoint_type=wanted) as details:
            details["script_sha256"] = scripts.SET_CHECKPOINT_TYPE.sha256
            details.update(self.powershell.run(scripts.SET_CHECKPOINT_TYPE, id=vm_id, checkpoint_type=wanted))
        session.state.pop("checkpoint_type_to_restore")

    def open_share(self, share: str) -> SMBTransport:
        """A new SMB connection to ``share`` on the host, as this acquirer's account and settings."""
        name, domain = self._smb_user
        return SMBTransport(
            self._smb["host"],
            share,
            user=name,
            password=self._password,
            port=self._smb["port"],
            domain=domain,
            auth=self._smb_auth,
            encrypt=self._smb["encrypt"],
        )


def _parse_utc(value: Any) -> dt.datetime | None:
    """.NET's round-trip format (7 fractional digits, ``Z``) as an aware datetime; None if unreadable."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", str(value or ""))
    if not match:
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return dt.datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}")


def _script_hashes() -> dict[str, str]:
    return {name: script.sha256 for name, script in scripts.ALL.items()}


def _mac(raw: str) -> str:
    digits = re.sub(r"[^0-9A-Fa-f]", "", raw).lower()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2)) if len(digits) == 12 else raw


def vm_config_path(vm: dict[str, Any]) -> str | None:
    """The VM's configuration file from a script's ``vm`` fields: ``.vmcx``, or ``.xml`` before version 6.0."""
    location = vm.get("configuration_location")
    if not location:
        return None
    try:
        legacy = float(vm.get("version") or 0) < 6.0
    except ValueError:
        legacy = False
    return ntpath.join(location, "Virtual Machines", f"{vm['id'].upper()}.{'xml' if legacy else 'vmcx'}")


def _folders(vm: dict[str, Any], drives: Sequence[dict[str, Any]]) -> list[str]:
    folders = [vm.get("configuration_location"), vm.get("snapshot_file_location")]
    folders += [ntpath.dirname(d["path"]) for d in drives if isinstance(d.get("path"), str)]
    unique: dict[str, str] = {}
    for folder in folders:
        if folder:
            unique.setdefault(folder.lower(), folder)
    return list(unique.values())


def _dest_name(path: str) -> str:
    r"""Evidence name keeping the host layout: ``C:\Hyper-V\a\b.vhdx`` -> ``C/Hyper-V/a/b.vhdx``."""
    clean = ntpath.normpath(path)
    drive, rest = ntpath.splitdrive(clean)
    if drive.startswith("\\\\"):
        head = "UNC/" + drive.strip("\\").replace("\\", "/")
    else:
        head = drive.rstrip(":") or "host"
    parts = [p for p in rest.split("\\") if p and p not in (".", "..")]
    return "/".join([head, *parts])
