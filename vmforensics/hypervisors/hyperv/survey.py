r"""Survey of a Hyper-V host: reviewed PowerShell over WinRM for the inventory, SMB for the folders.

The connection is the Hyper-V acquirer's (verified WinRM, NTLM/Kerberos/CredSSP message
encryption or HTTPS; files through the administrative shares). Three reading scripts run: the
acquirer's ``host`` and ``clock`` and the survey's ``survey-inventory`` (every VM with its
adapters, VHD chains and checkpoints). Then the folders Hyper-V keeps VMs in are listed over SMB:
``Virtual Machines`` and ``Snapshots`` files named by a GUID no VM or checkpoint has, and VHDs in
no disk chain, are reported as orphaned; the newest write to a VM's own files dates a VM that is
off. A parent disk Get-VHD names outside the folders Hyper-V names for its VM (or an
``allowed_roots`` folder) is refused as the acquirer refuses it (:func:`files.confine_listing`): the
disk's ``error`` gives the reason and the exact ParentPath, and nothing of it is counted or listed.
Nothing on the host is changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import ntpath
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from vmforensics.acquire.clock import measure_clock
from vmforensics.custody.models import ClockReading, SourceInfo
from vmforensics.errors import SourceError
from vmforensics.hypervisors.hyperv import scripts as acquirer_scripts
from vmforensics.hypervisors.hyperv import survey_scripts as scripts
from vmforensics.hypervisors.hyperv.acquirer import HyperVAcquirer, vm_config_path
from vmforensics.hypervisors.hyperv.files import HyperVFileTransport, confine_listing, vm_roots
from vmforensics.hypervisors.hyperv.scripts import Script, as_list
from vmforensics.hypervisors.hyperv.winrm import PowerShellSession, WinRMAuth
from vmforensics.survey import macs
from vmforensics.survey.findings import with_findings
from vmforensics.survey.models import (
    AcquirerSettings,
    DiskRecord,
    FileRecord,
    HostRecord,
    NICRecord,
    SnapshotRecord,
    SurveyReport,
    Thresholds,
    VMRecord,
    iso,
    parse_time,
)
from vmforensics.transport.base import RemoteStat

log = logging.getLogger(__name__)

#: The scripts a survey may run: each only reads (``Get-*`` cmdlets).
READING_SCRIPTS: dict[str, Script] = {
    acquirer_scripts.HOST.name: acquirer_scripts.HOST,
    acquirer_scripts.CLOCK.name: acquirer_scripts.CLOCK,
    **scripts.ALL,
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DISKS = (".vhd", ".vhdx", ".avhd", ".avhdx", ".vhds")
_TRACKING = (".rct", ".mrt")
_VM_FOLDERS = ("Virtual Machines", "Snapshots", "Virtual Hard Disks")
_RUNNING = ("running", "paused")


def survey_hyperv(
    host: str,
    *,
    user: str,
    password: str,
    transport: WinRMAuth = "ntlm",
    winrm_https: bool = True,
    winrm_port: int | None = None,
    ca_bundle: str | None = None,
    verify_certificate: bool = True,
    smb_host: str | None = None,
    smb_port: int = 445,
    smb_encrypt: bool | None = None,
    files: bool = True,
    thresholds: Thresholds | None = None,
    allowed_roots: Sequence[str] = (),
) -> SurveyReport:
    """Survey every VM, checkpoint and VHD chain of one Hyper-V host.

    WinRM and SMB are set up and verified as for :class:`HyperVAcquirer`. ``files=False`` skips
    the SMB listing (no orphaned-file search, and VMs that are off have no last-activity time).
    ``allowed_roots`` are host folders whose parent disks are followed although Hyper-V names
    them for no VM (the acquirer's ``--allow-root``).
    """
    began = time.monotonic()
    settings = HyperVAcquirer(
        host,
        user=user,
        password=password,
        transport=transport,
        winrm_https=winrm_https,
        winrm_port=winrm_port,
        ca_bundle=ca_bundle,
        verify_certificate=verify_certificate,
        smb_host=smb_host,
        smb_port=smb_port,
        smb_encrypt=smb_encrypt,
    )
    ran: list[dict[str, Any]] = []
    powershell = settings.powershell
    powershell.observer = lambda script, arguments, status: ran.append(
        {"script": script.name, "sha256": script.sha256, "arguments": arguments, "exit_status": status}
    )
    listing: HyperVFileTransport | None = None
    try:
        facts = powershell.run(acquirer_scripts.HOST)
        clock = host_clock(powershell)
        inventory = powershell.run(scripts.INVENTORY)
        connection: dict[str, Any] = {"winrm": powershell.describe()}
        if files:
            listing = HyperVFileTransport(settings.shares, settings.open_share, None)
        report = build_report(host, facts, inventory, clock, listing, thresholds, allowed_roots)
        if listing is not None:
            connection["files"] = listing.describe()
    finally:
        if listing is not None:
            listing.close()
        powershell.close()
    connection["scripts_run"] = ran
    source = attrs.evolve(report.source, connection=connection)
    reconnect = AcquirerSettings.of(  # an opted-out certificate check is not carried into a plan
        "hyperv",
        ["password"],
        host=host,
        user=user,
        transport=transport,
        winrm_https=winrm_https,
        winrm_port=winrm_port,
        ca_bundle=ca_bundle,
        smb_host=smb_host,
        smb_port=smb_port,
        smb_encrypt=smb_encrypt,
    )
    return attrs.evolve(
        report, source=source, duration=round(time.monotonic() - began, 6), acquirer=reconnect
    )


def host_clock(powershell: PowerShellSession) -> ClockReading:
    """The host's clock (``Get-Date`` in the reviewed CLOCK script) against the examiner's."""

    def read() -> dt.datetime | None:
        return parse_time(powershell.run(acquirer_scripts.CLOCK).get("utc_now"))

    return measure_clock(read, method="PowerShell Get-Date over WinRM")


def build_report(
    where: str,
    facts: dict[str, Any],
    inventory: dict[str, Any],
    clock: ClockReading,
    files: HyperVFileTransport | None,
    thresholds: Thresholds | None,
    allowed_roots: Sequence[str] = (),
) -> SurveyReport:
    """The report from the scripts' output and, when ``files`` is given, the folders' listing."""
    notes: list[str] = []
    host = inventory.get("host") or {}
    vms = [
        _confined(v, allowed_roots)
        for v in as_list(inventory.get("vms"))
        if isinstance(v, dict) and v.get("id")
    ]
    claims = _Claims(vms)
    folders = _folders(vms, host, files, notes) if files is not None else {}
    if files is None:
        notes.append(
            "VM folders not listed (files=False): no orphaned files, no activity of VMs that are off"
        )
    _range_note(host, notes)
    computer = facts.get("computer_name") or host.get("computer_name") or where
    records = [_vm(vm, computer, folders, claims, clock.examiner_utc) for vm in vms]
    report = SurveyReport(
        source=SourceInfo(
            kind="hyperv",
            host=where,
            product={
                "name": "Microsoft Hyper-V",
                "version": facts.get("hyperv_version"),
                "os": facts.get("os_caption"),
                "os_version": facts.get("os_version"),
                "build": facts.get("os_build"),
                "computer_name": facts.get("computer_name"),
                "fqdn": facts.get("fqdn"),
            },
        ),
        vms=tuple(sorted(records, key=lambda v: (v.name, v.uuid or ""))),
        hosts=(
            HostRecord(
                name=computer,
                reference=facts.get("fqdn"),
                product=f"Hyper-V {facts.get('hyperv_version') or ''}".strip(),
                connection_state="connected",
            ),
        ),
        unclaimed_files=tuple(claims.unclaimed(folders)),
        thresholds=thresholds or Thresholds(),
        clock=clock,
        taken=clock.examiner_utc,
        notes=tuple(dict.fromkeys(notes)),
    )
    return with_findings(report)


class _Claims:
    """What the registered VMs account for: their GUIDs (VMs and checkpoints) and VHD files."""

    def __init__(self, vms: list[dict[str, Any]]):
        self.guids = {str(vm["id"]).lower() for vm in vms}
        self.guids |= {str(s.get("id")).lower() for vm in vms for s in as_list(vm.get("snapshots"))}
        self.disks: set[str] = set()
        for vm in vms:
            for drive in as_list(vm.get("hard_drives")):
                self.disks |= {_key(layer.get("path")) for layer in as_list(drive.get("chain"))}
                self.disks.add(_key(drive.get("path")))
            for snapshot in as_list(vm.get("snapshots")):
                self.disks |= {_key(p) for p in as_list(snapshot.get("hard_drives"))}
        self.disks.discard("")

    def owner(self, entry: RemoteStat) -> str | None:
        """The GUID a configuration/state file is named after (or sits in a folder named after)."""
        for part in (ntpath.basename(entry.path), ntpath.basename(ntpath.dirname(entry.path))):
            match = _GUID.match(part)
            if match:
                return match.group(0).lower()
        return None

    def claimed(self, entry: RemoteStat) -> bool | None:
        """True/False for files Hyper-V names by VM, checkpoint or disk; None for other files."""
        name = ntpath.basename(entry.path).lower()
        if name.endswith(_DISKS):
            return _key(entry.path) in self.disks
        if name.endswith(_TRACKING):
            stem = entry.path[: -len(".rct")]
            candidates = (stem, *(stem + suffix for suffix in _DISKS))
            return any(_key(c) in self.disks for c in candidates)
        owner = self.owner(entry)
        return None if owner is None else owner in self.guids

    def unclaimed(self, folders: dict[str, list[RemoteStat]]) -> list[FileRecord]:
        found = []
        for folder, entries in sorted(folders.items()):
            for entry in entries:
                if entry.is_dir or self.claimed(entry) is not False:
                    continue
                name = ntpath.basename(entry.path).lower()
                if name.endswith(_DISKS):
                    reason = "a virtual hard disk in no registered VM's disk chain or checkpoint"
                elif name.endswith(_TRACKING):
                    reason = "change tracking of a virtual hard disk no registered VM uses"
                else:
                    reason = "named after a GUID that is no registered VM or checkpoint (an unregistered VM)"
                found.append(
                    FileRecord(
                        path=entry.path,
                        datastore=ntpath.splitdrive(folder)[0] or None,
                        size=entry.size,
                        modified=_mtime(entry),
                        reason=reason,
                    )
                )
        return found


def _folders(
    vms: list[dict[str, Any]], host: dict[str, Any], files: HyperVFileTransport, notes: list[str]
) -> dict[str, list[RemoteStat]]:
    """Files of every folder Hyper-V keeps VMs in, with one level of GUID-named subfolders."""
    wanted: dict[str, str] = {}

    def want(path: Any) -> None:
        if isinstance(path, str) and path:
            wanted.setdefault(_key(path), ntpath.normpath(path))

    default_home = _key(host.get("virtual_machine_path"))
    want(host.get("virtual_hard_disk_path"))
    for vm in vms:
        want(ntpath.join(vm.get("configuration_location") or "", "Virtual Machines"))
        want(ntpath.join(vm.get("snapshot_file_location") or "", "Snapshots"))
        for drive in as_list(vm.get("hard_drives")):
            for layer in as_list(drive.get("chain")) or [drive]:
                if isinstance(layer.get("path"), str):
                    want(ntpath.dirname(layer["path"]))
    homes = {ntpath.dirname(ntpath.normpath(vm["path"])) for vm in vms if isinstance(vm.get("path"), str)}
    homes = {h for h in homes if h and _key(h) != default_home and ntpath.dirname(h) != h}
    if host.get("virtual_machine_path"):
        for sub in ("Virtual Machines", "Snapshots"):
            want(ntpath.join(host["virtual_machine_path"], sub))
    for home in sorted(homes):  # C:\Hyper-V: each subfolder is a VM's, registered or not
        for entry in _list(files, home, notes):
            if entry.is_dir:
                for sub in _VM_FOLDERS:
                    want(ntpath.join(entry.path, sub))
    found: dict[str, list[RemoteStat]] = {}
    for folder in wanted.values():
        entries = _list(files, folder, notes, missing_ok=True)
        for entry in list(entries):
            if entry.is_dir and _GUID.match(ntpath.basename(entry.path)):
                entries += [e for e in _list(files, entry.path, notes) if not e.is_dir]
        if entries:
            found[folder] = entries
    return found


def _list(
    files: HyperVFileTransport, folder: str, notes: list[str], *, missing_ok: bool = False
) -> list[RemoteStat]:
    try:
        return files.listdir(folder)
    except SourceError as exc:
        text = str(exc).lower()
        if not missing_ok or not any(word in text for word in ("not found", "no such", "cannot find")):
            notes.append(f"{folder}: not listed over SMB ({exc})")
        return []


def _vm(
    vm: dict[str, Any],
    computer: str,
    folders: dict[str, list[RemoteStat]],
    claims: _Claims,
    taken: str,
) -> VMRecord:
    state = str(vm.get("state") or "Unknown")
    vm_id = str(vm["id"])
    snapshots = as_list(vm.get("snapshots"))
    own = [e for entries in folders.values() for e in entries if claims.owner(e) == vm_id.lower()]
    disks = [_disk(d) for d in as_list(vm.get("hard_drives"))]
    tops = {_key(d.path) for d in disks}
    own += [e for entries in folders.values() for e in entries if _key(e.path) in tops]
    last_on, last, basis = _activity(state, vm.get("uptime_seconds"), taken, own)
    return VMRecord(
        name=str(vm.get("name") or vm_id),
        reference=vm_id,
        uuid=vm_id,
        power_state=state,
        host=vm.get("computer_name") or computer,
        cluster="clustered" if vm.get("is_clustered") else None,
        datastores=tuple(_stores(vm, disks)),
        config_path=vm_config_path(vm),
        tools_status=_integration(vm),
        nics=tuple(_nic(a) for a in as_list(vm.get("network_adapters"))),
        disks=tuple(disks),
        snapshots=tuple(_snapshots(snapshots, folders)),
        last_power_on=last_on,
        last_activity=last,
        last_activity_basis=basis,
        details={
            "vendor": "hyperv",
            "status": vm.get("status"),
            "generation": vm.get("generation"),
            "configuration_version": vm.get("version"),
            "checkpoint_type": vm.get("checkpoint_type"),
            "created": vm.get("creation_time"),
            "path": vm.get("path"),
        },
    )


def _activity(
    state: str, uptime: Any, taken: str, own: list[RemoteStat]
) -> tuple[str | None, str | None, str | None]:
    """(last start, the latest moment it ran, what says so)."""
    if state.lower() in _RUNNING:
        started = None
        if isinstance(uptime, int | float) and uptime > 0:
            started = iso(parse_time(taken) - dt.timedelta(seconds=uptime))
        return started, taken, f"{state} at the time of the survey"
    dated = [e for e in own if e.mtime is not None and not e.is_dir]
    if not dated:
        return None, None, None
    newest = max(dated, key=lambda e: e.mtime or 0.0)
    return None, _mtime(newest), f"the modification time of {newest.path} (over SMB)"


def _confined(vm: dict[str, Any], allowed_roots: Sequence[str]) -> dict[str, Any]:
    """The VM with each disk chain cut before its first parent outside the VM's roots.

    The refusal (reason and exact ParentPath) is kept in the drive's ``refused``."""
    drives = [d for d in as_list(vm.get("hard_drives")) if isinstance(d, dict)]
    roots = vm_roots({**vm, "disks": [d.get("path") for d in drives]})
    confined = []
    for drive in drives:
        chain = [layer for layer in as_list(drive.get("chain")) if isinstance(layer, dict)]
        listed = [
            {"path": layer.get("path"), "named_by": above.get("path"), "reference": above.get("parent_path")}
            for above, layer in zip([{}, *chain], chain, strict=False)
        ]
        _, refused = confine_listing(listed, roots, allowed_roots)
        first = next((i for i, item in enumerate(listed) if refused and item is refused[0][0]), len(chain))
        confined.append({**drive, "chain": chain[:first], "refused": refused[0][1] if refused else None})
    return {**vm, "hard_drives": confined}


def _disk(drive: dict[str, Any]) -> DiskRecord:
    chain = [layer for layer in as_list(drive.get("chain")) if isinstance(layer, dict)]
    readable = [layer for layer in chain if not layer.get("error")]
    broken = next((layer for layer in chain if layer.get("error")), None)
    top = readable[0] if readable else {}
    sizes = [layer.get("file_size") for layer in readable if isinstance(layer.get("file_size"), int)]
    return DiskRecord(
        path=str(drive.get("path") or f"{drive.get('controller_type')} {drive.get('controller_location')}"),
        capacity=top.get("size") if isinstance(top.get("size"), int) else None,
        allocated=sum(sizes) if sizes else None,
        chain_depth=len(readable) or None,
        format="/".join(str(top[k]) for k in ("vhd_format", "vhd_type") if top.get(k)) or None,
        files=tuple(str(layer.get("path")) for layer in chain if layer.get("path")),
        error=drive["refused"]
        if drive.get("refused")
        else f"{broken.get('path')}: {broken.get('error')}"
        if broken
        else None,
    )


def _snapshots(snapshots: list[dict[str, Any]], folders: dict[str, list[RemoteStat]]) -> list[SnapshotRecord]:
    parents = {
        str(s.get("id")).lower(): str(s.get("parent_snapshot_id") or "").lower() or None for s in snapshots
    }
    sizes: dict[str, int] = {}
    for entries in folders.values():
        for entry in entries:
            match = _GUID.match(ntpath.basename(entry.path))
            if match and match.group(0).lower() in parents and not entry.is_dir:
                sizes[match.group(0).lower()] = sizes.get(match.group(0).lower(), 0) + entry.size
    records = []
    for snapshot in snapshots:
        key = str(snapshot.get("id")).lower()
        depth, current, seen = 1, parents.get(key), {key}
        while current is not None and current in parents and current not in seen:
            seen.add(current)
            depth += 1
            current = parents[current]
        kind = str(snapshot.get("snapshot_type") or "")
        state = str(snapshot.get("state") or "")
        records.append(
            SnapshotRecord(
                name=str(snapshot.get("name") or key),
                reference=snapshot.get("id"),
                created=iso(parse_time(snapshot.get("creation_time"))),
                parent=snapshot.get("parent_snapshot_id") or None,
                depth=depth,
                # Standard checkpoints of a running VM keep its memory; Production ones never do.
                memory=(kind.startswith("Standard") and state.lower() in ("running", "paused", "saved"))
                if state
                else None,
                size=sizes.get(key),
                description=kind or None,
            )
        )
    return records


def _nic(adapter: dict[str, Any]) -> NICRecord:
    dynamic = adapter.get("dynamic_mac_address_enabled")
    raw = adapter.get("mac_address")
    return NICRecord(
        label=adapter.get("name"),
        mac=macs.normalise(raw) or (str(raw) if raw else None),
        address_type=None if dynamic is None else ("dynamic" if dynamic else "static"),
        network=adapter.get("switch_name"),
        connected=adapter.get("connected"),
    )


def _integration(vm: dict[str, Any]) -> str | None:
    parts = [vm.get("integration_services_state"), vm.get("integration_services_version")]
    text = ", ".join(str(p) for p in parts if p)
    return f"integration services: {text}" if text else None


def _stores(vm: dict[str, Any], disks: Iterable[DiskRecord]) -> list[str]:
    folders = [vm.get("configuration_location"), vm.get("snapshot_file_location")]
    folders += [ntpath.dirname(d.path) for d in disks if ntpath.isabs(d.path)]
    unique: dict[str, str] = {}
    for folder in folders:
        if folder:
            unique.setdefault(_key(folder), folder)
    return list(unique.values())


def _range_note(host: dict[str, Any], notes: list[str]) -> None:
    low, high = host.get("mac_address_minimum"), host.get("mac_address_maximum")
    if low and high and not str(low).upper().startswith("00155D"):
        notes.append(
            f"this host's dynamic MAC pool is {low}-{high}, not Hyper-V's default 00155D…: "
            "dynamic MACs from it are reported as outside the vendor range"
        )


def _key(path: Any) -> str:
    """Windows paths compare without regard to case or separators."""
    return ntpath.normcase(ntpath.normpath(path)) if isinstance(path, str) and path else ""


def _mtime(entry: RemoteStat) -> str | None:
    return iso(dt.datetime.fromtimestamp(entry.mtime, dt.UTC)) if entry.mtime is not None else None
