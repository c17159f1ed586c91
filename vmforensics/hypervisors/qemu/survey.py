"""survey_proxmox: every VM a Proxmox VE node keeps a config for, read-only.

From ``<config_root>/qemu-server/*.conf`` (identity, NICs and MACs, disks on their storages,
snapshots with their vmstate), the QMP socket of each running VM (``query-status`` only), the
modification times of the disks (last activity of VMs that do not run) and the image folders of
the ``dir`` storages (files no config names). Nothing on the node is changed.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import posixpath
import re
import time
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.clock import measure_clock
from vmforensics.custody.models import SourceInfo
from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import run_state
from vmforensics.hypervisors.qemu.proxmox import (
    CONFIG_LIMIT,
    Section,
    Storage,
    VMConfig,
    disk_volume,
    net_mac,
    options,
    parse_storage_config,
    parse_vm_config,
    resolve_volume,
)
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
)
from vmforensics.transport.base import RemoteStat

log = logging.getLogger(__name__)

#: VM configs read from one node.
VM_LIMIT = 10000
_CONF = re.compile(r"^([1-9]\d{2,8})\.conf$")
_SIZE = re.compile(r"^(\d{1,15})([KMGT]?)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def survey_proxmox(
    host: str | None = None,
    *,
    user: str | None = None,
    port: int = 22,
    identity: str | Path | None = None,
    password: str | None = None,
    known_hosts: str | Path | None = None,
    host_key_fingerprint: str | None = None,
    config_root: str = "/etc/pve",
    run_root: str = "/var/run/qemu-server",
    socat: str = "socat",
    thresholds: Thresholds | None = None,
    command_timeout: float = 600.0,
    transport_options: dict[str, Any] | None = None,
) -> SurveyReport:
    """Survey the VMs of one Proxmox VE node (``host=None``: this machine), as ProxmoxAcquirer reaches it."""
    began = time.monotonic()
    ssh = {
        "identity": identity,
        "password": password,
        "known_hosts": known_hosts,
        "host_key_fingerprint": host_key_fingerprint,
        **(transport_options or {}),
    }
    node = QemuHost(
        host, user=user or getpass.getuser(), port=port, ssh_options=ssh, socat=socat, timeout=command_timeout
    )
    try:
        report = _Survey(node, posixpath.normpath(config_root), posixpath.normpath(run_root)).run(
            host or "localhost", thresholds
        )
    finally:
        node.close()
    reconnect = AcquirerSettings.of(
        "proxmox",
        ["password"] if password is not None else [],
        host=host,
        user=user or getpass.getuser(),
        port=port,
        identity=identity,
        known_hosts=known_hosts,
        host_key_fingerprint=host_key_fingerprint,
        config_root=config_root,
        run_root=run_root,
        socat=socat,
    )
    return attrs.evolve(report, duration=round(time.monotonic() - began, 6), acquirer=reconnect)


class _Survey:
    def __init__(self, node: QemuHost, config_root: str, run_root: str):
        self.node = node
        self.config_root = config_root
        self.run_root = run_root
        self.notes: list[str] = []
        self.claimed: set[str] = set()

    def run(self, where: str, thresholds: Thresholds | None) -> SurveyReport:
        clock = measure_clock(self.node.clock, method=f"date -u +%s.%N on {self.node.where}")
        hostname = self.node.run(["uname", "-n"], check=False).text.strip() or where
        version = self.node.run(["sh", "-c", "command -v pveversion >/dev/null && pveversion"], check=False)
        product = version.text.strip() if version.status == 0 else None
        storages = self._storages()
        vms = []
        for vmid, path in self._configs():
            try:
                config = parse_vm_config(self._read(path), vmid)
            except SourceError as exc:
                self.notes.append(f"{path}: {exc}")
                continue
            vms.append(self._vm(config, path, storages, hostname, clock.examiner_utc))
        report = SurveyReport(
            source=SourceInfo(
                kind="proxmox",
                host=where,
                product={"name": "Proxmox VE", "version": product},
                connection={**self.node.files.describe(), "commands_sent": list(self.node.history)},
            ),
            vms=tuple(sorted(vms, key=lambda v: int(v.reference or 0))),
            hosts=(
                HostRecord(
                    name=hostname,
                    product=product or "Proxmox VE layout",
                    connection_state="connected",
                    clock=clock,
                ),
            ),
            unclaimed_files=tuple(self._unclaimed(storages)),
            thresholds=thresholds or Thresholds(),
            clock=clock,
            taken=clock.examiner_utc,
            notes=tuple(dict.fromkeys(self.notes)),
        )
        return with_findings(report)

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, path: str) -> str:
        info = self.node.files.stat(path)
        if info.size > CONFIG_LIMIT:
            raise SourceError(f"{info.size} bytes: larger than any Proxmox config")
        stream = self.node.files.open_read(path)
        data = bytearray()
        buffer = memoryview(bytearray(65536))
        try:
            while len(data) <= CONFIG_LIMIT and (count := stream.readinto(buffer)):
                data += buffer[:count]
        finally:
            stream.close()
        return data[: CONFIG_LIMIT + 1].decode("utf-8", "replace")

    def _storages(self) -> dict[str, Storage]:
        path = f"{self.config_root}/storage.cfg"
        try:
            return parse_storage_config(self._read(path))
        except SourceError as exc:
            self.notes.append(f"{path}: {exc}; volumes are not resolved to host paths")
            return {}

    def _configs(self) -> list[tuple[str, str]]:
        folder = f"{self.config_root}/qemu-server"
        try:
            entries = self.node.files.listdir(folder)
        except SourceError as exc:
            raise SourceError(
                f"{folder} cannot be listed on {self.node.where}: is this a Proxmox VE node? {exc}"
            ) from exc
        found = []
        for entry in entries:
            match = _CONF.match(posixpath.basename(entry.path))
            if match and not entry.is_dir:
                found.append((match.group(1), entry.path))
        if len(found) > VM_LIMIT:
            self.notes.append(f"{len(found)} VM configs: only the first {VM_LIMIT} are surveyed")
        return found[:VM_LIMIT]

    def _stat(self, path: str) -> RemoteStat | None:
        try:
            return self.node.files.stat(path)
        except SourceError:
            return None

    def _status(self, vmid: str) -> str:
        socket_path = f"{self.run_root}/{vmid}.qmp"
        if self.node.run(["test", "-S", socket_path], check=False).status != 0:
            return "stopped"
        try:
            with self.node.qmp(socket_path, timeout=10) as qmp:
                return run_state(qmp)
        except SourceError as exc:
            self.notes.append(f"VM {vmid}: its QMP socket did not answer: {exc}")
            return "unknown"

    # -- one VM ----------------------------------------------------------------------------------

    def _vm(
        self, config: VMConfig, path: str, storages: dict[str, Storage], hostname: str, taken: str
    ) -> VMRecord:
        state = self._status(config.vmid)
        disks = [self._disk(key, value, storages) for key, value in config.current.disks.items()]
        disks = [d for d in disks if d is not None]
        for section in config.snapshots:
            for value in [*section.disks.values(), section.get("vmstate") or ""]:
                volume_id, _ = disk_volume(value)
                if volume_id and (volume := resolve_volume(volume_id, storages)).path:
                    self.claimed.add(volume.path)
        last, basis = (taken, "running now") if state in ("running", "paused") else self._last_written(disks)
        return VMRecord(
            name=config.name or f"VM {config.vmid}",
            reference=config.vmid,
            uuid=config.uuid,
            power_state=state,
            host=hostname,
            datastores=tuple(sorted(_stores(config.current))),
            config_path=path,
            guest_os=config.current.get("ostype"),
            tools_status="agent enabled"
            if options(config.current.get("agent") or "")[0] in ("1", "enabled")
            else None,
            nics=tuple(_nic(key, value) for key, value in config.current.nets.items()),
            disks=tuple(disks),
            snapshots=tuple(_snapshots(config)),
            last_activity=last,
            last_activity_basis=basis,
            template=config.current.get("template") == "1",
            details={
                "vendor": "proxmox",
                "memory_mib": config.current.get("memory"),
                "cores": config.current.get("cores"),
            },
        )

    def _disk(self, key: str, value: str, storages: dict[str, Storage]) -> DiskRecord | None:
        volume_id, opts = disk_volume(value)
        if not volume_id or opts.get("media") == "cdrom":
            return None
        volume = resolve_volume(volume_id, storages)
        capacity = _size(opts.get("size"))
        if volume.path is None:
            return DiskRecord(path=volume_id, capacity=capacity, error=f"{key}: {volume.reason}")
        self.claimed.add(volume.path)
        info = self._stat(volume.path) if volume.kind == "file" else None
        fmt = (
            volume.path.rsplit(".", 1)[-1]
            if volume.kind == "file" and "." in posixpath.basename(volume.path)
            else "raw"
        )
        return DiskRecord(
            path=volume.path,
            capacity=capacity,
            allocated=info.size if info else None,
            format=fmt,
            files=(volume.path,),
            error=None if info or volume.kind != "file" else f"{key}: {volume.path} is not on the node",
        )

    def _last_written(self, disks: list[DiskRecord]) -> tuple[str | None, str | None]:
        times = [info.mtime for d in disks if d.files and (info := self._stat(d.files[0])) and info.mtime]
        if not times:
            return None, None
        return iso(dt.datetime.fromtimestamp(max(times), dt.UTC)), "disk files' modification time"

    def _unclaimed(self, storages: dict[str, Storage]) -> list[FileRecord]:
        found = []
        for storage in storages.values():
            root = storage.settings.get("path")
            if storage.type != "dir" or not root or not root.startswith("/"):
                continue
            images = posixpath.join(posixpath.normpath(root), "images")
            try:
                folders = self.node.files.listdir(images)
            except SourceError:
                continue
            for folder in folders[:VM_LIMIT]:
                if not folder.is_dir or folder.is_symlink:
                    continue
                try:
                    entries = self.node.files.listdir(folder.path)
                except SourceError:
                    continue
                for entry in entries[:VM_LIMIT]:
                    if entry.path not in self.claimed and not entry.is_dir:
                        found.append(
                            FileRecord(
                                path=entry.path,
                                datastore=storage.id,
                                size=entry.size,
                                modified=iso(dt.datetime.fromtimestamp(entry.mtime, dt.UTC))
                                if entry.mtime
                                else None,
                                reason="no VM config on this node names it",
                            )
                        )
        return found


def _nic(key: str, value: str) -> NICRecord:
    _first, opts = options(value)
    return NICRecord(
        label=key,
        mac=net_mac(value),
        address_type=None,  # Proxmox writes generated and typed-in MACs alike
        network=opts.get("bridge"),
        connected=opts.get("link_down") != "1",
    )


def _snapshots(config: VMConfig) -> list[SnapshotRecord]:
    parents = {s.name: s.get("parent") for s in config.snapshots}

    def depth(name: str | None) -> int:
        level, seen = 0, set()
        while name and name in parents and name not in seen:
            seen.add(name)
            level += 1
            name = parents[name]
        return level

    records = []
    for section in config.snapshots:
        created = section.get("snaptime")
        records.append(
            SnapshotRecord(
                name=section.name or "",
                reference=section.name,
                created=iso(dt.datetime.fromtimestamp(int(created), dt.UTC))
                if created and created.isdigit() and len(created) < 12
                else None,
                parent=section.get("parent"),
                depth=max(depth(section.name), 1),
                memory=bool(section.get("vmstate")),
                description=section.get("description"),
            )
        )
    return records


def _stores(section: Section) -> set[str]:
    found = set()
    for value in section.disks.values():
        volume_id, opts = disk_volume(value)
        if volume_id and opts.get("media") != "cdrom" and ":" in volume_id:
            found.add(volume_id.split(":", 1)[0])
    return found


def _size(text: str | None) -> int | None:
    match = _SIZE.match(text or "")
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None
