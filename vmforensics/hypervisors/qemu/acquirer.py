"""QemuAcquirer (any host running QEMU with a QMP socket) and ProxmoxAcquirer (a Proxmox VE VM).

The examiner needs SSH access to the host (or runs on it: ``host=None``). Identification asks
QMP (``query-name``, ``query-uuid``, ``query-status``, ``query-block``,
``query-named-block-nodes``, ``query-rx-filter``) and measures the host clock; preservation
pauses the VM, takes its memory (ELF core or migration stream) and an atomic external snapshot of
every writable disk (:mod:`.preserve`); enumeration plans each drive's frozen chain, the memory and
state files, configs and logs (:mod:`.files`). Proxmox adds the VM's ``.conf`` (identity, MACs,
snapshots, disks on its storages) and works on VMs that are not running (``preserve="none"``).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.confine import open_named_file
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import RefusedPathError, SourceError, UsageError, VMNotFoundError
from vmforensics.hypervisors.qemu.blockdev import BlockDeviceTransport
from vmforensics.hypervisors.qemu.chain import read_chain
from vmforensics.hypervisors.qemu.files import Plan, safe_name
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import BlockDevice, run_state, vm_facts
from vmforensics.hypervisors.qemu.preserve import QemuControl
from vmforensics.hypervisors.qemu.proxmox import (
    CONFIG_LIMIT,
    VMConfig,
    disk_volume,
    parse_storage_config,
    parse_vm_config,
    resolve_volume,
    storage_folder,
)
from vmforensics.transport.base import Transport

log = logging.getLogger(__name__)

_VMID = re.compile(r"^[1-9]\d{2,8}$")


class QemuAcquirer(Acquirer):
    """Acquire the QEMU VM whose QMP unix socket on the host is ``target``.

    ``preserve="pause"`` stops the VM, writes an ELF memory core (when ``memory``) and snapshots
    every writable disk; ``"save"`` writes a migration stream instead of the core; both resume
    the VM unless ``keep_running=False``. Files created on the host go to ``host_workdir`` (default:
    the first disk's folder; overlays go beside their disks unless ``host_workdir`` is given).
    """

    kind = "qemu"
    preserve_modes = ("pause", "save", "none")

    def __init__(
        self,
        host: str | None = None,
        *,
        user: str | None = None,
        port: int = 22,
        identity: str | Path | None = None,
        password: str | None = None,
        known_hosts: str | Path | None = None,
        host_key_fingerprint: str | None = None,
        socat: str = "socat",
        qemu_img: str = "qemu-img",
        host_workdir: str | None = None,
        keep_running: bool = True,
        log_files: Sequence[str] = (),
        config_files: Sequence[str] = (),
        command_timeout: float = 3600.0,
        transport_options: dict[str, Any] | None = None,
    ):
        for path in (host_workdir, *log_files, *config_files):
            if path is not None and not posixpath.isabs(path):
                raise UsageError(f"{path!r} must be an absolute path on the host")
        self.host = host
        self.user = user or getpass.getuser()
        self.port = port
        self.socat = socat
        self.qemu_img = qemu_img
        self.host_workdir = host_workdir
        self.keep_running = keep_running
        self.log_files = tuple(log_files)
        self.config_files = tuple(config_files)
        self.command_timeout = command_timeout
        self._ssh_options = {
            "identity": identity,
            "password": password,
            "known_hosts": known_hosts,
            "host_key_fingerprint": host_key_fingerprint,
            **(transport_options or {}),
        }
        self._host: QemuHost | None = None
        self._transport: BlockDeviceTransport | None = None

    # -- connect ---------------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        self._host = QemuHost(
            self.host,
            user=self.user,
            port=self.port,
            ssh_options=self._ssh_options,
            socat=self.socat,
            timeout=self.command_timeout,
        )
        uname = self._host.run(["uname", "-n", "-r", "-m"], check=False).text.split()
        session.state["qemu_hostname"] = uname[0] if uname else None
        session.source = SourceInfo(
            kind=self.kind,
            host=self.host or "localhost",
            product={"name": "QEMU", "host_kernel": " ".join(uname[1:]) or None},
            connection={**self._host.files.describe(), "qmp": self._qmp_route()},
        )

    def _qmp_route(self) -> str:
        if self.host is None:
            return "unix socket on this machine"
        return f"{self.socat} - UNIX-CONNECT:<socket> on an SSH exec channel"

    @property
    def _run(self) -> QemuHost:
        if self._host is None:
            raise SourceError("not connected")
        return self._host

    # -- out of source ---------------------------------------------------------------------------

    def source_roots(self, target: str) -> list[Path]:
        """On this machine: the examiner's host paths and the folders of the images QEMU has open
        (one read-only QMP ``query-block``), so that ``--out`` can be refused before anything is
        written. A remote host's folders are not this machine's."""
        if self.host is not None:
            return []
        roots = [*(p for p in (self.host_workdir, *self.log_files, *self.config_files) if p)]
        roots += self._local_socket_roots(self._socket_of(target))
        return [Path(p) for p in sorted(set(roots))]

    def _socket_of(self, target: str) -> str | None:
        return target if posixpath.isabs(target) else None

    def _local_socket_roots(self, socket_path: str | None) -> list[str]:
        if socket_path is None or not Path(socket_path).is_socket():
            return []
        host = QemuHost(None, user=self.user, socat=self.socat, timeout=self.command_timeout)
        try:
            with host.qmp(socket_path) as qmp:
                return list(_folders(vm_facts(qmp)["devices"]))
        except (SourceError, UsageError) as exc:  # identify reports it properly
            log.debug("no drive folders from %s: %s", socket_path, exc)
            return []

    # -- identify --------------------------------------------------------------------------------

    def identify(self, session: Session, target: str) -> VMIdentity:
        if not posixpath.isabs(target):
            raise UsageError(
                f"the target of a QEMU acquisition is its QMP socket's absolute path, not {target!r}"
            )
        facts = self._qmp_facts(session, target)
        session.clock = measure_clock(self._run.clock, method=f"date -u +%s.%N on {self._run.where}")
        return VMIdentity(
            name=facts["name"] or posixpath.basename(target),
            uuid=facts["uuid"],
            reference=target,
            mac_addresses=tuple(n["mac"] for n in facts["nics"] if n["mac"]),
            host=session.state.get("qemu_hostname"),
            datastores=_folders(facts["devices"]),
            power_state_before=facts["status"],
            details={**self._details(facts), "qmp_socket": target},
        )

    def _qmp_facts(self, session: Session, socket_path: str) -> dict[str, Any]:
        with self._run.qmp(socket_path) as qmp:
            facts = vm_facts(qmp)
        session.state.update(qemu_socket=socket_path, qemu_devices=facts["devices"])
        version = facts["qemu_version"]
        qemu = version.get("qemu") if isinstance(version.get("qemu"), dict) else {}
        session.source = attrs.evolve(
            session.source,
            product={
                **session.source.product,
                "version": ".".join(str(qemu.get(k)) for k in ("major", "minor", "micro")) if qemu else None,
                "package": version.get("package") if isinstance(version.get("package"), str) else None,
            },
        )
        session.ledger.append(
            "qmp-identity",
            socket=socket_path,
            status=facts["status"],
            block=[d.describe() for d in facts["devices"]],
            nodes=facts["nodes"],
            nics=facts["nics"],
        )
        return facts

    @staticmethod
    def _details(facts: dict[str, Any]) -> dict[str, Any]:
        return {
            "running": facts["running"],
            "disks": [d.describe() for d in facts["devices"]],
            "block_nodes": facts["nodes"],
            "nics": facts["nics"],
        }

    # -- preserve --------------------------------------------------------------------------------

    def preserve(self, session: Session, mode: str, *, memory: bool, isolate: bool) -> None:
        if isolate:
            raise UsageError(
                "isolate is not available for QEMU VMs (take the host's bridge port down instead)"
            )
        if mode == "none":
            if session.vm is not None and session.vm.power_state_before == "running":
                session.ledger.append(
                    "warning", message="the VM is running: its disks may change while copied"
                )
            return
        if "qemu_socket" not in session.state:
            raise SourceError("the VM is not running (no QMP socket): use --preserve none")
        if mode == "save" and not self.keep_running:
            raise UsageError(
                "--preserve save leaves QEMU's images inactive until the VM runs again, so its overlays "
                "cannot be committed while it stays paused: drop --keep-paused, or use --preserve pause"
            )
        tag = "vmf" + session.state["acquisition_id"].replace("-", "")[:12]
        control = self._control(session)
        devices: tuple[BlockDevice, ...] = session.state["qemu_devices"]
        workdir = self.host_workdir or _first_folder(devices)
        control.preserve(
            mode,
            memory=memory,
            keep_running=self.keep_running,
            tag=tag,
            workdir=workdir,
            overlay_dir=self.host_workdir,
        )
        with self._run.qmp(session.state["qemu_socket"]) as qmp:
            state = run_state(qmp)
        session.vm = attrs.evolve(session.vm, power_state_after=state)

    def _control(self, session: Session) -> QemuControl:
        return QemuControl(self._run, session, session.state["qemu_socket"], job_timeout=self.command_timeout)

    # -- enumerate -------------------------------------------------------------------------------

    def enumerate(self, session: Session) -> list[PlannedFile]:
        plan = Plan(session, self._run, self._roots(session))
        self._plan_extra(session, plan)
        chains = self._plan_disks(session, plan)
        created = session.state.get("qemu_created", {})
        for key, role in (("memory_dump", "memory"), ("saved_state", "memory-state")):
            if created.get(key):
                plan.add(created[key], f"memory/{safe_name(posixpath.basename(created[key]))}", role)
        for path in self.config_files:
            plan.add(path, f"config/{safe_name(posixpath.basename(path))}", "config")
        for path in self.log_files:
            plan.add(path, f"logs/{safe_name(posixpath.basename(path))}", "log")
        session.vm = attrs.evolve(session.vm, details={**session.vm.details, "disk_chains": chains})
        session.ledger.append("disk-chains", chains=chains)
        self._transport = BlockDeviceTransport(
            self._run, plan.devices, plan.confined_reader(), plan.confined_paths
        )
        return plan.files

    def _roots(self, session: Session) -> list[str]:
        """Where backing files may live: the folders of the images the drives have open (+ workdir)."""
        devices: tuple[BlockDevice, ...] = session.state.get("qemu_devices", ())
        tops = [d.layers[0].filename for d in devices if d.layers and d.layers[0].on_host]
        return sorted(
            {posixpath.dirname(p) for p in tops} | ({self.host_workdir} if self.host_workdir else set())
        )

    def _plan_extra(self, session: Session, plan: Plan) -> None:
        """Vendor files planned first (the Proxmox config)."""

    def _plan_disks(self, session: Session, plan: Plan) -> list[dict[str, Any]]:
        devices: tuple[BlockDevice, ...] = session.state.get("qemu_devices", ())
        snapshot = session.state.get("qemu_created", {}).get("snapshot") or {}
        chains = []
        for device in devices:
            if device.removable:
                for layer in device.layers[:1]:
                    session.omit(
                        layer.filename,
                        "disk",
                        f"{device.name}: removable media (CD/DVD image) is not acquired",
                    )
                continue
            layers = device.layers  # identified before the snapshot: the frozen chain
            if device.name in (snapshot.get("overlays") or {}):
                session.omit(
                    snapshot["overlays"][device.name],
                    "disk",
                    "created by this acquisition's snapshot: it holds the guest's writes after the "
                    "snapshot point and is committed back at cleanup",
                )
            chains.append(plan.chain(device.name, layers, device.chain_cut))
        return chains

    def chain_on_host(self, plan: Plan, drive: str, path: str) -> dict[str, Any]:
        """The chain of an image no QEMU has open, each file checked before qemu-img opens it."""
        layers, cut, refused = read_chain(self._run, self.qemu_img, path, None, plan.check)
        if refused is not None:
            named = f"; named {refused.reference!r} in {layers[-1].filename}" if layers else ""
            plan.session.omit(refused.reference, "disk", f"{refused}{named}; not read")
        return plan.chain(drive, layers, cut, first_confined=True)

    # -- transport and lifetime ------------------------------------------------------------------

    def transport(self, session: Session) -> Transport:
        if self._transport is None:
            raise SourceError("not connected")
        return self._transport

    def cleanup(self, session: Session) -> None:
        if not session.state.get("qemu_created"):
            return
        control = self._control(session)
        try:
            control.cleanup()
        finally:
            if session.vm is not None:
                session.vm = attrs.evolve(session.vm, power_state_after=self._quiet_state(session))

    def _quiet_state(self, session: Session) -> str | None:
        try:
            with self._run.qmp(session.state["qemu_socket"]) as qmp:
                return run_state(qmp)
        except SourceError:
            return None

    def disconnect(self, session: Session) -> None:
        if self._host is not None:
            session.ledger.append("host-commands", where=self._host.where, commands=self._host.history)
            self._host.close()
            self._host = None


class ProxmoxAcquirer(QemuAcquirer):
    """Acquire Proxmox VE VM ``target`` (its numeric VM id) on a Proxmox node.

    Reads ``<config_root>/qemu-server/<vmid>.conf`` and ``<config_root>/storage.cfg``, talks to
    the QMP socket ``<run_root>/<vmid>.qmp`` when the VM runs, and also acquires the vmstate
    (memory) volumes of the VM's snapshots and disks named in the config that QEMU has not open.
    """

    kind = "proxmox"

    def __init__(
        self,
        host: str | None = None,
        *,
        config_root: str = "/etc/pve",
        run_root: str = "/var/run/qemu-server",
        **options: Any,
    ):
        for path in (config_root, run_root):
            if not posixpath.isabs(path):
                raise UsageError(f"{path!r} must be an absolute path on the host")
        super().__init__(host, **options)
        self.config_root = posixpath.normpath(config_root)
        self.run_root = posixpath.normpath(run_root)

    def _qmp_route(self) -> str:
        return super()._qmp_route().replace("<socket>", f"{self.run_root}/<vmid>.qmp")

    def _socket_of(self, target: str) -> str | None:
        vmid = str(target).strip()
        return f"{self.run_root}/{vmid}.qmp" if _VMID.match(vmid) else None

    def source_roots(self, target: str) -> list[Path]:
        """The QEMU roots, the node's config folder and the folder of every storage in storage.cfg."""
        if self.host is not None:
            return []
        roots = {str(p) for p in super().source_roots(target)} | {self.config_root}
        try:
            fd = open_named_file(f"{self.config_root}/storage.cfg")  # a FIFO is refused, never opened
        except RefusedPathError:
            return [Path(p) for p in sorted(roots)]
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(CONFIG_LIMIT).decode("utf-8", "replace")
        with contextlib.suppress(SourceError):  # identify refuses a broken file with its line
            roots |= {f for s in parse_storage_config(text).values() if (f := storage_folder(s))}
        return [Path(p) for p in sorted(roots)]

    def identify(self, session: Session, target: str) -> VMIdentity:
        vmid = str(target).strip()
        if not _VMID.match(vmid):
            raise UsageError(f"a Proxmox VM id is a number from 100 to 999999999, not {target!r}")
        config_path = f"{self.config_root}/qemu-server/{vmid}.conf"
        if not self._run.exists(config_path):
            raise VMNotFoundError(f"no VM {vmid} on {self._run.where}: {config_path} does not exist")
        config = parse_vm_config(self._read_text(config_path), vmid)
        storage_path = f"{self.config_root}/storage.cfg"
        storages = (
            parse_storage_config(self._read_text(storage_path)) if self._run.exists(storage_path) else {}
        )
        session.state.update(
            proxmox_config=config, proxmox_storages=storages, proxmox_config_path=config_path
        )
        socket_path = f"{self.run_root}/{vmid}.qmp"
        facts = (
            self._qmp_facts(session, socket_path)
            if self._run.run(["test", "-S", socket_path], check=False).status == 0
            else None
        )
        session.clock = measure_clock(self._run.clock, method=f"date -u +%s.%N on {self._run.where}")
        config_macs = [mac for _key, mac in config.macs()]
        details: dict[str, Any] = {
            "proxmox_config": config.describe(),
            "snapshots": [s.name for s in config.snapshots],
            "storages": {k: {"type": s.type, **s.settings} for k, s in storages.items()},
        }
        if facts:
            details.update(self._details(facts))
            details["qmp_socket"] = socket_path
            qmp_macs = sorted({n["mac"] for n in facts["nics"] if n["mac"]})
            if config.uuid and facts["uuid"] and config.uuid.lower() != facts["uuid"].lower():
                session.ledger.append(
                    "warning", message=f"smbios1 uuid {config.uuid} differs from QEMU's {facts['uuid']}"
                )
            if qmp_macs and sorted(set(config_macs)) != qmp_macs:
                details["mac_mismatch"] = {"config": config_macs, "qemu": qmp_macs}
                session.ledger.append(
                    "warning", message=f"MACs in the config {config_macs} differ from QEMU's {qmp_macs}"
                )
        else:
            details["running"] = False
        return VMIdentity(
            name=config.name or (facts or {}).get("name") or vmid,
            uuid=config.uuid or (facts or {}).get("uuid"),
            reference=vmid,
            config_path=config_path,
            mac_addresses=tuple(dict.fromkeys(config_macs)),
            host=session.state.get("qemu_hostname"),
            datastores=tuple(storages),
            power_state_before=facts["status"] if facts else "stopped",
            details=details,
        )

    def _read_text(self, path: str) -> str:
        info = self._run.files.stat(path)
        if info.size > CONFIG_LIMIT:
            raise SourceError(f"{path} is {info.size} bytes: larger than any Proxmox config")
        stream = self._run.files.open_read(path)
        data = bytearray()
        try:
            buffer = memoryview(bytearray(65536))
            while len(data) <= CONFIG_LIMIT and (count := stream.readinto(buffer)):
                data += buffer[:count]
        finally:
            stream.close()
        if len(data) > CONFIG_LIMIT:
            raise SourceError(f"{path} grew past {CONFIG_LIMIT} bytes while read")
        return data.decode("utf-8", "replace")

    def _roots(self, session: Session) -> list[str]:
        """The drives' folders and every storage of storage.cfg that has a folder (linked clones' bases)."""
        roots = set(super()._roots(session))
        for storage in session.state["proxmox_storages"].values():
            if folder := storage_folder(storage):
                roots.add(folder)
        return sorted(roots)

    def _plan_extra(self, session: Session, plan: Plan) -> None:
        config: VMConfig = session.state["proxmox_config"]
        plan.add(session.state["proxmox_config_path"], f"config/qemu-server/{config.vmid}.conf", "config")
        if session.state["proxmox_storages"]:
            plan.add(f"{self.config_root}/storage.cfg", "config/storage.cfg", "config")
        firewall = f"{self.config_root}/firewall/{config.vmid}.fw"
        if self._run.exists(firewall):
            plan.add(firewall, f"config/firewall/{config.vmid}.fw", "config")

    def _plan_disks(self, session: Session, plan: Plan) -> list[dict[str, Any]]:
        chains = super()._plan_disks(session, plan)
        config: VMConfig = session.state["proxmox_config"]
        storages = session.state["proxmox_storages"]
        open_files = {layer.filename for d in session.state.get("qemu_devices", ()) for layer in d.layers}
        running = "qemu_socket" in session.state
        for section in (config.current, *config.snapshots):
            where = f"snapshot {section.name}" if section.name else "current config"
            items = list(section.disks.items())
            if section.get("vmstate"):
                items.append(("vmstate", section.get("vmstate") or ""))
            for key, value in items:
                volume_id, opts = disk_volume(value)
                if not volume_id or opts.get("media") == "cdrom":
                    continue
                volume = resolve_volume(volume_id, storages)
                label = f"{config.vmid}.conf {where} {key}: {volume_id}"
                if volume.path is None:
                    if volume.kind != "none":
                        session.omit(volume_id, "disk", f"{label}: {volume.reason}")
                    continue
                if volume.path in open_files:
                    continue
                if key == "vmstate":
                    plan.add(
                        volume.path,
                        f"memory/{safe_name(posixpath.basename(volume.path))}",
                        "memory-state",
                        label,
                    )
                elif not running and section.name is None and volume.kind == "file":
                    chain = self.chain_on_host(plan, key, volume.path)
                    open_files.update(layer["source"] for layer in chain["layers"])
                    chains.append(chain)
                else:
                    plan.add(
                        volume.path,
                        f"disks/{safe_name(key)}/{safe_name(posixpath.basename(volume.path))}",
                        "disk",
                        label,
                    )
        return chains


def _folders(devices: tuple[BlockDevice, ...]) -> tuple[str, ...]:
    return tuple(
        sorted({posixpath.dirname(layer.filename) for d in devices for layer in d.layers if layer.on_host})
    )


def _first_folder(devices: tuple[BlockDevice, ...]) -> str:
    for device in devices:
        if device.snapshottable and not device.layers[0].is_block_device:
            return posixpath.dirname(device.layers[0].filename)
    raise SourceError(
        "no disk of the VM is a file on the host: give host_workdir= for the memory and state files"
    )
