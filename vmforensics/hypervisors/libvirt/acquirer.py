"""LibvirtAcquirer: a KVM/QEMU guest through ``virsh`` on its host, files over SSH.

The examiner needs only SSH access to the host: ``virsh -c qemu:///system`` and ``qemu-img`` run
on exec channels of the same verified connection that reads the files. Identification keeps the
domain XML (secrets removed), preservation takes an external snapshot with memory (or suspends, or
saves), and enumeration follows every disk's backing chain layer by layer, each file checked
before ``qemu-img info`` opens it (chain.py).

Evidence layout (under ``files/``)::

    domain/NAME.xml, domain/NAME.inactive.xml, domain/snapshots/SNAP.xml   (virsh, secrets removed)
    disks/TARGET/<base name of each chain member>   (one folder per disk: the qcow2 backing names,
                                                     absolute host paths, resolve by base name)
    memory/…  state/…  nvram/…  logs/NAME.log
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import posixpath
import socket
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import role_for
from vmforensics.confine import OUTSIDE, ConfinedPath, Refusal, RemoteConfinement
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import SourceError, UsageError
from vmforensics.hypervisors.libvirt.captured import PREFIX, CapturedTransport
from vmforensics.hypervisors.libvirt.chain import Chain, read_chain
from vmforensics.hypervisors.libvirt.commands import Host
from vmforensics.hypervisors.libvirt.domain_xml import (
    DiskSpec,
    DomainXML,
    parse_domain,
    redact_secrets,
    snapshot_memory_file,
)
from vmforensics.hypervisors.libvirt.host import (
    connect_host,
    libvirt_product,
    ssh_transport_options,
    virsh_fields,
)
from vmforensics.hypervisors.libvirt.preserve import DomainControl, overlay_path, snapshot_disks
from vmforensics.hypervisors.libvirt.roots import check_member, disk_folders, pool_roots
from vmforensics.transport.base import Transport

log = logging.getLogger(__name__)

_RUNNING = ("running", "paused", "pmsuspended", "in shutdown", "blocked", "idle")


class LibvirtAcquirer(Acquirer):
    """Acquire a libvirt (KVM/QEMU) domain by name or UUID.

    ``host=None`` works on this machine (the examiner is on the KVM host); otherwise SSH with the
    host key verified through ``known_hosts`` or ``host_key_fingerprint``. Files this acquisition
    creates on the host (overlays, memory and state files) go next to the first disk unless
    ``host_workdir`` names a folder. ``memory_dump=True`` adds an ELF memory image (``virsh dump
    --memory-only``, which Volatility 3 reads) to a snapshot; ``suspend`` always takes one.
    """

    kind = "libvirt"
    preserve_modes = ("snapshot", "suspend", "save", "none")

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
        uri: str = "qemu:///system",
        virsh: str = "virsh",
        qemu_img: str = "qemu-img",
        host_workdir: str | None = None,
        memory_dump: bool = False,
        command_timeout: float = 3600.0,
        transport_options: dict[str, Any] | None = None,
    ):
        if host_workdir is not None and not posixpath.isabs(host_workdir):
            raise UsageError(f"host_workdir must be an absolute path on the host, not {host_workdir!r}")
        self.host = host
        self.user = user or getpass.getuser()
        self.port = port
        self.uri = uri
        self.host_workdir = host_workdir
        self.memory_dump = memory_dump
        self.command_timeout = command_timeout
        self._ssh_options = ssh_transport_options(
            identity=identity,
            password=password,
            known_hosts=known_hosts,
            host_key_fingerprint=host_key_fingerprint,
            transport_options=transport_options,
        )
        self._tools = {"virsh": virsh, "qemu_img": qemu_img}
        self._files: Transport | None = None
        self._host: Host | None = None

    # -- connect -------------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        self._files, runner = connect_host(
            self.host, user=self.user, port=self.port, ssh_options=self._ssh_options
        )
        self._host = Host(
            runner,
            uri=self.uri,
            virsh=self._tools["virsh"],
            qemu_img=self._tools["qemu_img"],
            timeout=self.command_timeout,
        )
        product = libvirt_product(self._host)
        session.state["libvirt_hostname"] = product["hostname"]
        session.source = SourceInfo(
            kind="libvirt",
            host=self.host or socket.gethostname(),
            product=product,
            connection={**self._files.describe(), "commands": f"virsh -c {self.uri} on {runner.where}"},
        )

    @property
    def _run(self) -> Host:
        if self._host is None:
            raise SourceError("not connected")
        return self._host

    # -- identify ------------------------------------------------------------------------------

    def identify(self, session: Session, target: str) -> VMIdentity:
        host = self._run
        info = virsh_fields(host.virsh("dominfo", "--domain", target).stdout)
        uuid = info.get("UUID")
        if not uuid:
            raise SourceError(f"virsh dominfo {target!r} did not name a UUID")
        persistent = info.get("Persistent", "").lower() == "yes"
        live_text = host.virsh("dumpxml", "--domain", uuid, "--security-info").stdout
        domain = parse_domain(live_text)
        captured: dict[str, bytes] = {}
        redactions: list[dict[str, Any]] = []
        self._capture(captured, redactions, f"domain/{_safe(domain.name)}.xml", live_text, "dumpxml")
        if persistent:
            inactive = host.virsh("dumpxml", "--domain", uuid, "--inactive", "--security-info").stdout
            self._capture(
                captured,
                redactions,
                f"domain/{_safe(domain.name)}.inactive.xml",
                inactive,
                "dumpxml --inactive",
            )
        session.state.update(
            libvirt_domain=domain,
            libvirt_captured=captured,
            libvirt_info=info,
            libvirt_uuid=uuid,
            libvirt_persistent=persistent,
        )
        if redactions:
            session.ledger.append("secrets-removed", documents=redactions)
        state = host.virsh("domstate", "--domain", uuid, "--reason").stdout.strip()
        session.clock = measure_clock(self._host_clock, method=f"date -u +%s.%N on {host.runner.where}")
        snapshots = host.virsh("snapshot-list", "--domain", uuid, "--name").stdout.split()
        details = {
            "persistent": persistent,
            "autostart": info.get("Autostart"),
            "managed_save": info.get("Managed save"),
            "hypervisor_type": domain.hypervisor_type,
            "memory_kib": domain.memory_kib,
            "vcpus": info.get("CPU(s)"),
            "security_model": info.get("Security model"),
            "messages": info.get("Messages"),
            "disks": [d.describe() for d in domain.disks],
            "interfaces": [attrs.asdict(i) for i in domain.interfaces],
            "domiflist": host.virsh("domiflist", "--domain", uuid).stdout.strip(),
            "domblklist": host.virsh("domblklist", "--domain", uuid, "--details").stdout.strip(),
            "nvram": domain.nvram,
            "loader": domain.loader,
            "graphics": list(domain.graphics),
            "snapshots_before": snapshots,
            "xml_secrets_removed": redactions,
        }
        if not persistent:
            details["transient"] = "transient domain: no persistent definition exists on the host"
        folders = sorted({posixpath.dirname(d.path) for d in domain.disks if d.path and d.type == "file"})
        return VMIdentity(
            name=domain.name or info.get("Name", target),
            uuid=uuid,
            reference=info.get("Id") if info.get("Id") not in (None, "-") else None,
            config_path=f"/etc/libvirt/qemu/{domain.name}.xml"
            if persistent and "/system" in self.uri
            else None,
            mac_addresses=tuple(i.mac for i in domain.interfaces if i.mac),
            host=session.state.get("libvirt_hostname"),
            datastores=tuple(folders),
            power_state_before=state,
            details=details,
        )

    def _capture(
        self, captured: dict[str, bytes], redactions: list[dict[str, Any]], name: str, text: str, how: str
    ) -> None:
        clean, removed = redact_secrets(text)
        captured[f"{PREFIX}{name}"] = clean.encode("utf-8")
        for item in removed:
            redactions.append(
                {"document": name, "from": f"virsh {how} --security-info", **attrs.asdict(item)}
            )

    def _host_clock(self) -> dt.datetime | None:
        result = self._run.run(["date", "-u", "+%s.%N"], check=False)
        try:
            return dt.datetime.fromtimestamp(float(result.stdout.strip()), dt.UTC)
        except ValueError:
            return None

    # -- preserve ------------------------------------------------------------------------------

    def preserve(self, session: Session, mode: str, *, memory: bool, isolate: bool) -> None:
        domain: DomainXML = session.state["libvirt_domain"]
        uuid = session.state["libvirt_uuid"]
        tag = "vmforensics-" + session.state["acquisition_id"].replace("-", "")[:12]
        control = DomainControl(self._run, session, uuid, tag)
        state = control.state()
        running = state.split(" (")[0] in _RUNNING
        if mode != "none" and not running:
            raise SourceError(f"{domain.name} is {state}: its disks do not change; use --preserve none")
        if isolate:
            if not running:
                raise SourceError(f"{domain.name} is {state}: there is no live link to take down")
            control.isolate([i.mac for i in domain.interfaces if i.mac])
        workdir = self.host_workdir or _first_folder(domain)
        if mode == "snapshot":
            self._snapshot(session, control, domain, tag, memory, workdir, state)
        elif mode == "suspend":
            if not state.startswith("paused"):
                control.suspend()
            if memory:
                control.dump_memory(posixpath.join(workdir, f"{_safe(domain.name)}.{tag}.elf"))
        elif mode == "save":
            if not session.state["libvirt_persistent"]:
                raise SourceError(
                    f"{domain.name} is transient: after 'virsh save' it exists only in the state file; "
                    "use preserve='snapshot' or 'suspend'"
                )
            control.save(posixpath.join(workdir, f"{_safe(domain.name)}.{tag}.save"))
        elif running:
            session.ledger.append(
                "warning", message=f"{domain.name} is {state}: its disks may change while copied"
            )
        session.vm = attrs.evolve(session.vm, power_state_after=control.state())

    def _snapshot(
        self,
        session: Session,
        control: DomainControl,
        domain: DomainXML,
        tag: str,
        memory: bool,
        workdir: str,
        state: str,
    ) -> None:
        disks = snapshot_disks(domain.disks)
        overlays = {d.target: overlay_path(d, tag, self.host_workdir) for d in disks}
        memory_file = posixpath.join(workdir, f"{_safe(domain.name)}.{tag}.mem") if memory else None
        if self.memory_dump and memory:
            paused_here = not state.startswith("paused")
            if paused_here:
                control.suspend()  # one instant for the ELF image, the memory state and the disks
            control.dump_memory(posixpath.join(workdir, f"{_safe(domain.name)}.{tag}.elf"))
            control.snapshot(tag, disks, domain.disks, overlays, memory_file)
            if paused_here:
                control.resume()
        else:
            control.snapshot(tag, disks, domain.disks, overlays, memory_file)

    # -- enumerate -----------------------------------------------------------------------------

    def enumerate(self, session: Session) -> list[PlannedFile]:
        domain: DomainXML = session.state["libvirt_domain"]
        uuid = session.state["libvirt_uuid"]
        created = session.state.get("libvirt_created", {})
        captured: dict[str, bytes] = session.state["libvirt_captured"]
        plan = _Plan(session, self._files)
        folders = disk_folders(domain.disks)
        pools = pool_roots(self._run)
        allowed = session.options.get("allowed_roots") or ()
        if folders or pools or allowed:
            plan.confinement = RemoteConfinement([*folders, *pools], allowed)
            session.ledger.append(
                "backing-file-roots", disk_folders=folders, pools=pools, allowed_roots=list(allowed)
            )
        plan.commands = self._run
        for virtual, data in captured.items():
            plan.add(
                virtual, virtual[len(PREFIX) :], "domain-xml", len(data), f"virsh {virtual[len(PREFIX) :]}"
            )
        self._snapshots(session, plan, uuid, captured)
        snapshot = created.get("snapshot") or {}
        chains = []
        for disk in domain.disks:
            chains.append(self._disk(session, plan, disk, snapshot))
        for path, role, folder in (
            (created.get("memory_dump"), "memory", "memory"),
            (snapshot.get("memory_file"), "memory", "memory"),
            (created.get("saved"), "saved-state", "state"),
            (domain.nvram, "nvram", "nvram"),
        ):
            if path:
                plan.add_host_file(path, f"{folder}/{_safe(posixpath.basename(path))}", role)
        if session.state["libvirt_info"].get("Managed save", "").lower() == "yes":
            path = f"/var/lib/libvirt/qemu/save/{domain.name}.save"
            plan.add_host_file(path, f"state/{_safe(domain.name)}.save", "saved-state")
        plan.add_host_file(
            f"/var/log/libvirt/qemu/{domain.name}.log", f"logs/{_safe(domain.name)}.log", "log"
        )
        if session.state["libvirt_persistent"] and "/system" in self.uri:
            session.omit(
                f"/etc/libvirt/qemu/{domain.name}.xml",
                "domain-xml",
                "not copied as a file: it may hold passwords; its content is domain/"
                f"{_safe(domain.name)}.inactive.xml with secrets removed",
            )
        elif not session.state["libvirt_persistent"]:
            session.omit(
                f"/etc/libvirt/qemu/{domain.name}.xml",
                "domain-xml",
                "transient domain: no persistent definition exists; the live XML is domain/"
                f"{_safe(domain.name)}.xml",
            )
        if domain.tpm:
            session.omit(
                f"/var/lib/libvirt/swtpm/{uuid}", "other", "TPM emulator state is not acquired by vmforensics"
            )
        session.vm = attrs.evolve(session.vm, details={**session.vm.details, "disk_chains": chains})
        session.ledger.append("disk-chains", chains=chains)
        return plan.files

    def _snapshots(self, session: Session, plan: _Plan, uuid: str, captured: dict[str, bytes]) -> None:
        """Every snapshot's XML (secrets removed) and its external memory file."""
        host = self._run
        redactions: list[dict[str, Any]] = []
        for name in host.virsh("snapshot-list", "--domain", uuid, "--name").stdout.split():
            text = host.virsh(
                "snapshot-dumpxml", "--domain", uuid, "--snapshotname", name, "--security-info"
            ).stdout
            evidence_name = f"domain/snapshots/{_safe(name)}.xml"
            self._capture(captured, redactions, evidence_name, text, f"snapshot-dumpxml {name}")
            plan.add(
                f"{PREFIX}{evidence_name}",
                evidence_name,
                "domain-xml",
                len(captured[f"{PREFIX}{evidence_name}"]),
                f"virsh snapshot-dumpxml {name}",
            )
            memory_file = snapshot_memory_file(text)
            created = (session.state.get("libvirt_created", {}).get("snapshot") or {}).get("memory_file")
            if memory_file and memory_file != created:
                plan.add_host_file(memory_file, f"memory/{_safe(posixpath.basename(memory_file))}", "memory")
        if redactions:
            session.ledger.append("secrets-removed", documents=redactions)

    def _disk(
        self, session: Session, plan: _Plan, disk: DiskSpec, snapshot: dict[str, Any]
    ) -> dict[str, Any]:
        """Plan one disk's chain (as frozen by our snapshot, if one was taken); describe it."""
        entry: dict[str, Any] = {"target": disk.target, "device": disk.device, "type": disk.type}
        label = f"{disk.target}: {disk.type} disk"
        if disk.device in ("cdrom", "floppy"):
            if disk.path:
                session.omit(
                    disk.path,
                    "disk",
                    f"{label} ({disk.device} media image) is not acquired; "
                    "its path and format are in the domain XML",
                )
            entry["acquired"] = False
            return entry
        if disk.type == "network":
            where = ", ".join(disk.hosts) or "no host named"
            session.omit(
                f"{disk.protocol or 'network'}://{where}/{disk.network_name or ''}",
                "disk",
                f"{label} ({disk.protocol}) is not a file on the host; acquire it from the storage system",
            )
            entry.update(
                acquired=False, protocol=disk.protocol, name=disk.network_name, hosts=list(disk.hosts)
            )
            return entry
        if disk.type not in ("file", "volume") or not disk.path:
            session.omit(
                disk.path or f"{disk.target}",
                "disk",
                f"{label}: only disks backed by files are acquired (block devices and others are not)",
            )
            entry["acquired"] = False
            return entry
        top = (snapshot.get("bases") or {}).get(disk.target, disk.path)
        if disk.target in (snapshot.get("overlays") or {}):
            overlay = snapshot["overlays"][disk.target]
            session.omit(
                overlay,
                "disk",
                "created by this acquisition's snapshot: it holds the guest's writes "
                "after the snapshot point and is committed back at cleanup",
            )
            entry["snapshot_overlay"] = overlay
        assert self._files is not None
        chain = read_chain(self._run, self._files, top, disk.format if top == disk.path else None, plan.check)
        entry.update(self._plan_chain(session, plan, disk.target, chain))
        return entry

    def _plan_chain(self, session: Session, plan: _Plan, target: str, chain: Chain) -> dict[str, Any]:
        """Plan the chain's files (every one checked before it was opened) and its refusal."""
        folder = f"disks/{_safe(target)}"
        layers = []
        for layer in chain.layers:
            item: dict[str, Any] = {"source": layer.path, **layer.describe()}
            dest = plan.add_host_file(layer.path, f"{folder}/{_safe(posixpath.basename(layer.path))}", "disk")
            item["evidence"] = f"files/{dest}" if dest else None
            if layer.data_file:
                data_dest = plan.add_host_file(
                    layer.data_file, f"{folder}/{_safe(posixpath.basename(layer.data_file))}", "disk"
                )
                item["data_file_evidence"] = f"files/{data_dest}" if data_dest else None
            layers.append(item)
        names = [posixpath.basename(layer.path) for layer in chain.layers]
        opens = (
            chain.broken is None
            and chain.refused is None
            and len(set(names)) == len(names)
            and all(item["evidence"] for item in layers)
        )
        result: dict[str, Any] = {"acquired": bool(layers), "layers": layers, "opens_in_evidence": opens}
        if layers and layers[0]["evidence"]:
            result["evidence_top"] = layers[0]["evidence"]
        if chain.refused is not None:
            refusal = chain.refused
            if chain.refused_by is None:
                where = f"disk {target} as the domain XML names it"
            else:
                where = f"named {chain.refused_name!r} in {chain.refused_by.path}"
            session.omit(refusal.reference, "disk", f"{refusal}; {where}; not read")
            result["refused"] = {
                "reference": refusal.reference,
                "reason": refusal.reason,
                "kind": refusal.kind,
            }
        if chain.broken:
            result["broken_at"] = chain.broken
            session.omit(
                chain.broken,
                "disk",
                f"backing file of disk {target} cannot be opened on the host: {chain.error}",
            )
            session.ledger.append(
                "disk-chain-incomplete", disk=target, missing=chain.broken, error=chain.error
            )
        return result

    # -- transport and lifetime ----------------------------------------------------------------

    def transport(self, session: Session) -> Transport:
        if self._files is None:
            raise SourceError("not connected")
        return CapturedTransport(self._files, session.state.get("libvirt_captured", {}))

    def cleanup(self, session: Session) -> None:
        if not session.state.get("libvirt_created"):
            return
        control = DomainControl(self._run, session, session.state["libvirt_uuid"], "")
        try:
            control.cleanup()
        finally:
            if session.vm is not None:
                session.vm = attrs.evolve(session.vm, power_state_after=_quiet_state(control))

    def disconnect(self, session: Session) -> None:
        if self._host is not None:
            session.ledger.append("host-commands", where=self._host.runner.where, commands=self._host.history)
            self._host.runner.close()
            self._host = None
        if self._files is not None:
            self._files.close()
            self._files = None


class _Plan:
    """Planned files with unique evidence names; what cannot be read becomes an omission."""

    def __init__(self, session: Session, files: Transport | None):
        self.session = session
        self.transport = files
        self.files: list[PlannedFile] = []
        self.by_source: dict[str, str] = {}
        self.taken: set[str] = set()
        #: Checks disk files named by the XML or image headers (None: no root, so all are refused).
        self.confinement: RemoteConfinement | None = None
        self.commands: Host | None = None

    def add(self, source: str, dest: str, role: str, size: int | None, label: str) -> str:
        if source in self.by_source:
            return self.by_source[source]
        dest = self._unique(dest)
        self.files.append(PlannedFile(source, dest, role, size, label))
        self.by_source[source] = dest
        self.taken.add(dest)
        return dest

    def check(self, path: str) -> ConfinedPath | Refusal:
        """Whether a disk file the domain XML or an image header names may be opened on the host."""
        if self.confinement is None or self.commands is None:
            return Refusal(path, "the acquisition has no root to confine disk files to", OUTSIDE)
        return check_member(self.commands, self.confinement, path)

    def add_host_file(self, path: str, dest: str, role: str) -> str | None:
        """Plan a host file after checking it exists; else record the omission (None)."""
        if path in self.by_source:
            return self.by_source[path]
        assert self.transport is not None
        try:
            info = self.transport.stat(path)
        except SourceError as exc:
            self.session.omit(path, role, f"not readable on the host: {exc}")
            return None
        if info.is_dir:
            self.session.omit(path, role, "a directory where a file was expected")
            return None
        return self.add(path, dest, role if role != "disk" else role_for("libvirt", path), info.size, path)

    def _unique(self, dest: str) -> str:
        if dest not in self.taken:
            return dest
        folder, name = posixpath.split(dest)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        count = 2
        while True:
            candidate = posixpath.join(folder, f"{stem}~{count}{'.' + ext if ext else ''}")
            if candidate not in self.taken:
                return candidate
            count += 1


def _safe(name: str) -> str:
    """A host-given name as one evidence path component ('/' and control characters replaced)."""
    cleaned = "".join("_" if ch == "/" or ord(ch) < 32 or ch == "\\" else ch for ch in name)
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}_"


def _first_folder(domain: DomainXML) -> str:
    for disk in domain.disks:
        if disk.path and disk.type in ("file", "volume") and disk.device == "disk":
            return posixpath.dirname(disk.path)
    return "/var/tmp"


def _quiet_state(control: DomainControl) -> str | None:
    try:
        return control.state()
    except SourceError:
        return None
