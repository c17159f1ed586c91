"""Survey of a KVM/QEMU host through ``virsh`` and ``qemu-img``, over SSH or on the host itself.

The connection is the libvirt acquirer's: one verified SSH connection carries a single shell for
the commands (``virsh -c URI …``, ``qemu-img info -U``, ``date``, ``tail``) and SFTP for listing
folders. Only reading commands are sent: domains are listed and described (``dominfo``,
``dumpxml`` without ``--security-info``, so no secret ever travels), snapshots read
(``snapshot-dumpxml``), each disk's backing chain followed, storage pools described and their
folders listed (never ``pool-refresh``), chain members' types read (``stat -c %F``), and the tail of each domain's QEMU log read for the last
time it ran. Every command sent is kept in the report's ``details``.

Backing chains are confined as the acquirer confines them (chain.py, roots.py): each file is
checked beneath the domain's disk folders and the host's file pools before qemu-img opens it, and
a refused name ends the disk's chain with the reason in the disk's ``error``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import posixpath
import re
import shlex
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmforensics.acquire.clock import measure_clock
from vmforensics.confine import ConfinedPath, Refusal, RemoteConfinement
from vmforensics.custody.models import ClockReading, SourceInfo
from vmforensics.errors import SourceError
from vmforensics.hypervisors.libvirt.chain import Chain, read_chain
from vmforensics.hypervisors.libvirt.commands import Host
from vmforensics.hypervisors.libvirt.domain_xml import DomainXML, parse_domain, parse_xml
from vmforensics.hypervisors.libvirt.host import (
    connect_host,
    libvirt_product,
    ssh_transport_options,
    virsh_fields,
)
from vmforensics.hypervisors.libvirt.roots import FILE_POOLS, check_member, disk_folders
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
from vmforensics.transport.base import RemoteStat, Transport

log = logging.getLogger(__name__)

#: The QEMU driver's log folder for qemu:///system (qemu:///session keeps logs in the user's cache).
SYSTEM_LOG_DIR = "/var/log/libvirt/qemu"
#: ``virsh`` sub-commands a survey sends: each only reads (checked by the tests).
READING_COMMANDS = frozenset(
    {
        "version",
        "hostname",
        "list",
        "dominfo",
        "dumpxml",
        "snapshot-list",
        "snapshot-dumpxml",
        "pool-list",
        "pool-dumpxml",
    }
)
_LOG_TAIL = 64 * 1024
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:?\d\d)?")
_IMAGE_SUFFIXES = (".qcow2", ".qcow", ".img", ".raw", ".vmdk", ".vdi", ".vhd", ".vhdx", ".qed")
_STATE_SUFFIXES = (".save", ".mem", ".elf", ".core", ".dump")
_LIBOSINFO = "{http://libosinfo.org/xmlns/libvirt/domain/1.0}"


def survey_libvirt(
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
    log_dir: str | None = SYSTEM_LOG_DIR,
    thresholds: Thresholds | None = None,
    command_timeout: float = 600.0,
    transport_options: dict[str, Any] | None = None,
    allowed_roots: Sequence[str] = (),
) -> SurveyReport:
    """Survey every domain, snapshot, disk chain and storage pool of one libvirt host.

    ``host=None`` surveys this machine; otherwise SSH with the host key verified through
    ``known_hosts`` or ``host_key_fingerprint``, as for :class:`LibvirtAcquirer`. ``log_dir``
    is where the QEMU driver writes ``NAME.log`` (None: do not read logs). ``allowed_roots``:
    folders on the host beyond the disk folders and file pools where chain members may lie.
    """
    began = time.monotonic()
    options = ssh_transport_options(
        identity=identity,
        password=password,
        known_hosts=known_hosts,
        host_key_fingerprint=host_key_fingerprint,
        transport_options=transport_options,
    )
    files, runner = connect_host(host, user=user or getpass.getuser(), port=port, ssh_options=options)
    commands = Host(runner, uri=uri, virsh=virsh, qemu_img=qemu_img, timeout=command_timeout)
    try:
        report = _Survey(commands, files, uri, log_dir, tuple(allowed_roots)).run(
            host or socket.gethostname(), thresholds
        )
    finally:
        runner.close()
        files.close()
    reconnect = AcquirerSettings.of(
        "libvirt",
        ["password"] if password is not None else [],
        host=host,
        user=user or getpass.getuser(),
        port=port,
        identity=identity,
        known_hosts=known_hosts,
        host_key_fingerprint=host_key_fingerprint,
        uri=uri,
        virsh=virsh,
        qemu_img=qemu_img,
    )
    return attrs.evolve(report, duration=round(time.monotonic() - began, 6), acquirer=reconnect)


def host_clock(commands: Host) -> ClockReading:
    """The KVM host's clock (``date -u +%s.%N``) against the examiner's."""

    def read() -> dt.datetime | None:
        result = commands.run(["date", "-u", "+%s.%N"], check=False)
        try:
            return dt.datetime.fromtimestamp(float(result.stdout.strip()), dt.UTC)
        except ValueError:
            return None

    return measure_clock(read, method=f"date -u +%s.%N on {commands.runner.where}")


@attrs.frozen
class _Snapshot:
    """One ``<domainsnapshot>`` as the survey needs it."""

    record: SnapshotRecord
    files: tuple[str, ...]  # external memory and disk files it names


@attrs.frozen
class _Pool:
    name: str
    type: str
    path: str | None
    active: bool


class _Survey:
    """One pass over the host: commands through ``commands``, folder listings through ``files``."""

    def __init__(
        self, commands: Host, files: Transport, uri: str, log_dir: str | None, allowed_roots: tuple[str, ...]
    ):
        self.commands = commands
        self.files = files
        self.uri = uri
        self.log_dir = log_dir
        self.allowed_roots = allowed_roots
        self.notes: list[str] = []
        self.claimed: set[str] = set()
        self.stats: dict[str, RemoteStat | None] = {}

    def run(self, where: str, thresholds: Thresholds | None) -> SurveyReport:
        product = libvirt_product(self.commands)
        hostname = product["hostname"]
        clock = host_clock(self.commands)
        taken = clock.examiner_utc
        pools = self._pools()
        logs = self._log_listing()
        with_snapshots = set(self._uuids("--with-snapshot"))
        vms = [
            self._domain(uuid, uuid in with_snapshots, hostname, pools, logs, taken) for uuid in self._uuids()
        ]
        unclaimed = self._unclaimed(pools, logs, {vm.name for vm in vms})
        report = SurveyReport(
            source=SourceInfo(
                kind="libvirt",
                host=where,
                product=product,
                connection={
                    **self.files.describe(),
                    "commands": f"virsh -c {self.uri} on {self.commands.runner.where}",
                    "commands_sent": list(self.commands.history),
                },
            ),
            vms=tuple(sorted(vms, key=lambda v: (v.name, v.uuid or ""))),
            hosts=(
                HostRecord(
                    name=hostname or where,
                    product=product["hypervisor"],
                    connection_state="connected",
                ),
            ),
            unclaimed_files=tuple(unclaimed),
            thresholds=thresholds or Thresholds(),
            clock=clock,
            taken=taken,
            notes=tuple(dict.fromkeys(self.notes)),
        )
        return with_findings(report)

    # -- domains -------------------------------------------------------------------------------

    def _uuids(self, *flags: str) -> list[str]:
        out = self.commands.virsh("list", "--all", "--uuid", *flags).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _domain(
        self,
        uuid: str,
        has_snapshots: bool,
        hostname: str | None,
        pools: list[_Pool],
        logs: dict[str, RemoteStat],
        taken: str,
    ) -> VMRecord:
        info = virsh_fields(self.commands.virsh("dominfo", "--domain", uuid).stdout)
        live_text = self.commands.virsh("dumpxml", "--domain", uuid).stdout
        domain = parse_domain(live_text)
        root = parse_xml(live_text, "domain XML")
        state = info.get("State", "unknown")
        persistent = info.get("Persistent", "").lower() == "yes"
        running = state in ("running", "paused", "idle", "blocked", "in shutdown", "pmsuspended")
        if persistent and running:  # disks the next boot would use are the domain's too
            inactive = parse_domain(self.commands.virsh("dumpxml", "--domain", uuid, "--inactive").stdout)
            self.claimed |= {d.path for d in inactive.disks if d.path}
        self.claimed |= {p for p in (domain.nvram, domain.loader) if p}
        snapshots = self._snapshots(uuid) if has_snapshots else []
        roots = [*disk_folders(domain.disks), *(p.path for p in pools if p.type in FILE_POOLS and p.path)]
        confinement = RemoteConfinement(roots, self.allowed_roots) if roots or self.allowed_roots else None
        disks = [self._disk(d, confinement) for d in domain.disks if d.device not in ("cdrom", "floppy")]
        self.claimed |= {d.path for d in domain.disks if d.path and d.device in ("cdrom", "floppy")}
        log_file = logs.get(f"{domain.name}.log")
        first, last, basis = self._activity(domain, running, taken, log_file, disks)
        return VMRecord(
            name=domain.name or info.get("Name", uuid),
            reference=uuid,
            uuid=uuid,
            power_state=state,
            host=hostname,
            datastores=tuple(_stores(disks, pools)),
            config_path=f"/etc/libvirt/qemu/{domain.name}.xml"
            if persistent and "/system" in self.uri
            else None,
            guest_os=_guest_os(root),
            tools_status=_agent(root),
            nics=tuple(
                NICRecord(
                    label=i.target or f"net{n}",
                    mac=i.mac,
                    address_type=None,  # libvirt writes generated and typed-in MACs alike
                    network=f"{i.type}:{i.source}" if i.source else i.type,
                    connected=None if i.link is None else i.link != "down",
                )
                for n, i in enumerate(domain.interfaces)
            ),
            disks=tuple(disks),
            snapshots=tuple(s.record for s in snapshots),
            last_power_on=first,
            last_activity=last,
            last_activity_basis=basis,
            details={
                "vendor": "libvirt",
                "persistent": persistent,
                "autostart": info.get("Autostart"),
                "managed_save": info.get("Managed save"),
                "hypervisor_type": domain.hypervisor_type,
                "memory_kib": domain.memory_kib,
                "vcpus": info.get("CPU(s)"),
            },
        )

    def _snapshots(self, uuid: str) -> list[_Snapshot]:
        names = self.commands.virsh("snapshot-list", "--domain", uuid, "--name").stdout.split()
        found = []
        for name in names:
            text = self.commands.virsh("snapshot-dumpxml", "--domain", uuid, "--snapshotname", name).stdout
            found.append(self._snapshot(text))
        levels = _depths({s.record.name: s.record.parent for s in found})
        for snapshot in found:
            self.claimed |= set(snapshot.files)
        return [_Snapshot(attrs.evolve(s.record, depth=levels[s.record.name]), s.files) for s in found]

    def _snapshot(self, text: str) -> _Snapshot:
        root = parse_xml(text, "snapshot XML")
        created = root.findtext("creationTime")
        memory = root.find("memory")
        memory_mode = memory.get("snapshot") if memory is not None else None
        memory_file = memory.get("file") if memory is not None and memory_mode == "external" else None
        state = (root.findtext("state") or "").strip()
        files = [memory_file] if memory_file else []
        for disk in root.iterfind("disks/disk"):
            source = disk.find("source")
            if source is not None and source.get("file"):
                files.append(source.get("file"))
        size = None
        if memory_file and (info := self._stat(memory_file)) is not None:
            size = info.size
        return _Snapshot(
            SnapshotRecord(
                name=(root.findtext("name") or "").strip(),
                reference=(root.findtext("name") or "").strip(),
                created=iso(dt.datetime.fromtimestamp(int(created), dt.UTC))
                if created and created.strip().isdigit()
                else None,
                parent=(root.findtext("parent/name") or "").strip() or None,
                memory=state in ("running", "paused") and memory_mode not in ("no", None),
                size=size,
                description=(root.findtext("description") or "").strip() or None,
            ),
            tuple(files),
        )

    def _disk(self, disk: Any, confinement: RemoteConfinement | None) -> DiskRecord:
        if disk.type not in ("file", "volume") or not disk.path:
            where = disk.path or disk.network_name or disk.target
            return DiskRecord(path=str(where), format=disk.format, error=f"{disk.type} disk: no chain read")
        if confinement is None:  # a relative source path: no folder to confine its chain to
            return DiskRecord(
                path=disk.path, format=disk.format, error="not an absolute host path: no chain read"
            )

        def check(path: str) -> ConfinedPath | Refusal:
            return check_member(self.commands, confinement, path)

        chain: Chain = read_chain(self.commands, self.files, disk.path, disk.format, check)
        paths = [layer.path for layer in chain.layers]
        paths += [layer.data_file for layer in chain.layers if layer.data_file]
        self.claimed |= {disk.path, *paths}
        sizes = [info.size for p in paths if (info := self._stat(p)) is not None]
        top = chain.layers[0] if chain.layers else None
        return DiskRecord(
            path=disk.path,
            capacity=top.virtual_size if top else None,
            allocated=sum(sizes) if sizes else None,
            chain_depth=len(chain.layers) or None,
            format=top.format if top else disk.format,
            files=tuple(paths),
            error=_chain_error(chain),
        )

    def _activity(
        self,
        domain: DomainXML,
        running: bool,
        taken: str,
        log_file: RemoteStat | None,
        disks: list[DiskRecord],
    ) -> tuple[str | None, str | None, str | None]:
        """(last start, last moment it ran, what says so)."""
        started = stopped = None
        if log_file is not None:
            started, stopped = self._log_times(log_file.path)
        if running:
            return iso(started), taken, "running at the time of the survey"
        candidates: list[tuple[dt.datetime, str]] = []
        if stopped is not None:
            candidates.append((stopped, f"the last timestamped line of {log_file.path}"))
        elif log_file is not None and log_file.mtime is not None:
            candidates.append((_utc(log_file.mtime), f"the modification time of {log_file.path}"))
        for disk in disks:
            info = self._stat(disk.files[0]) if disk.files else None
            if info is not None and info.mtime is not None:
                candidates.append((_utc(info.mtime), f"the modification time of {info.path}"))
        if not candidates:
            return iso(started), None, None
        moment, basis = max(candidates, key=lambda pair: pair[0])
        return iso(started), iso(moment), basis

    def _log_times(self, path: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The last ``starting up`` line and the last timestamped line of a domain's QEMU log."""
        result = self.commands.run(["tail", "-c", str(_LOG_TAIL), "--", path], check=False)
        if result.status != 0:
            self.notes.append(f"{path}: not readable ({result.stderr.strip()[:200]})")
            return None, None
        started = last = None
        for line in result.stdout.splitlines():
            moment = _line_time(line)
            if moment is None:
                continue
            last = moment
            if "starting up" in line:
                started = moment
        return started, last

    # -- storage and logs ----------------------------------------------------------------------

    def _pools(self) -> list[_Pool]:
        names = self.commands.virsh("pool-list", "--all", "--name").stdout.split()
        active = set(self.commands.virsh("pool-list", "--name").stdout.split())
        pools = []
        for name in names:
            root = parse_xml(self.commands.virsh("pool-dumpxml", "--pool", name).stdout, "pool XML")
            path = (root.findtext("target/path") or "").strip() or None
            pools.append(_Pool(name, root.get("type", "?"), path, name in active))
        return pools

    def _log_listing(self) -> dict[str, RemoteStat]:
        if self.log_dir is None:
            return {}
        try:
            entries = self.files.listdir(self.log_dir)
        except SourceError as exc:
            self.notes.append(f"domain logs not read: {exc}")
            return {}
        return {posixpath.basename(e.path): e for e in entries if not e.is_dir}

    def _unclaimed(
        self, pools: list[_Pool], logs: dict[str, RemoteStat], names: set[str]
    ) -> list[FileRecord]:
        found: list[FileRecord] = []
        media = 0
        for pool in pools:
            if pool.type not in FILE_POOLS or not pool.path:
                if pool.type not in FILE_POOLS:
                    self.notes.append(
                        f"pool {pool.name} ({pool.type}) holds no files; not searched for orphans"
                    )
                continue
            try:
                entries = self.files.listdir(pool.path)
            except SourceError as exc:
                self.notes.append(f"pool {pool.name}: {pool.path} not listed ({exc})")
                continue
            for entry in entries:
                base = posixpath.basename(entry.path)
                if entry.is_dir or base.startswith(".") or entry.path in self.claimed:
                    continue
                if base.lower().endswith(".iso"):
                    media += 1
                    continue
                found.append(_file(entry, pool.name, _reason(base)))
        if media:
            self.notes.append(f"{media} ISO images in storage pools are attached to no domain (not counted)")
        for base, entry in sorted(logs.items()):
            owner = re.sub(r"\.log(\.\d+)?(\.gz)?$", "", base)
            if owner != base and owner not in names:
                found.append(
                    _file(entry, "logs", "the QEMU log of a domain not defined here (deleted or moved away)")
                )
        return found

    def _stat(self, path: str) -> RemoteStat | None:
        if path not in self.stats:
            try:
                self.stats[path] = self.files.stat(path)
            except SourceError:
                self.stats[path] = None
        return self.stats[path]


def commands_sent(report: SurveyReport) -> list[str]:
    """The command lines a libvirt survey ran on the host, as recorded in its report."""
    return [c["command"] for c in report.source.connection.get("commands_sent", [])]


def reading_only(command: str) -> bool:
    """Whether a recorded command line only reads (a virsh sub-command from the reading list)."""
    argv = shlex.split(command)
    if not argv:
        return False
    tool = posixpath.basename(argv[0])
    if tool == "virsh":
        verbs = [a for a in argv[3:] if not a.startswith("-")]
        return bool(verbs) and verbs[0] in READING_COMMANDS
    if tool == "qemu-img":
        return len(argv) > 1 and argv[1] == "info" and "-U" in argv
    if tool == "stat":  # roots.check_member: file types, links not followed
        return argv[1:3] == ["-c", "%F"]
    return tool in ("date", "tail")


def _depths(parents: dict[str, str | None]) -> dict[str, int]:
    levels: dict[str, int] = {}
    for name in parents:
        depth, current, seen = 1, parents.get(name), {name}
        while current is not None and current in parents and current not in seen:
            seen.add(current)
            depth += 1
            current = parents[current]
        levels[name] = depth
    return levels


def _stores(disks: Iterable[DiskRecord], pools: list[_Pool]) -> list[str]:
    found: dict[str, None] = {}
    for disk in disks:
        folder = posixpath.dirname(disk.path)
        pool = next((p.name for p in pools if p.path and p.path.rstrip("/") == folder), None)
        if disk.path.startswith("/"):
            found[pool or folder] = None
    return list(found)


def _guest_os(root: ET.Element) -> str | None:
    """The libosinfo id virt-install records (``http://ubuntu.com/ubuntu/22.04``), if any."""
    for element in root.iter(f"{_LIBOSINFO}os"):
        if element.get("id"):
            return element.get("id")
    return None


def _agent(root: ET.Element) -> str | None:
    for channel in root.iterfind("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == "org.qemu.guest_agent.0":
            return f"qemu-guest-agent channel {target.get('state') or 'configured'}"
    return None


def _line_time(line: str) -> dt.datetime | None:
    match = _LOG_TIME.match(line)
    if not match:
        return None
    zone = match.group(3) or "+00:00"
    if zone != "Z" and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    return parse_time(f"{match.group(1)}T{match.group(2)}{zone}")


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def _file(entry: RemoteStat, store: str, reason: str) -> FileRecord:
    return FileRecord(
        path=entry.path,
        datastore=store,
        size=entry.size,
        modified=iso(_utc(entry.mtime)) if entry.mtime is not None else None,
        reason=reason,
    )


def _reason(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(_IMAGE_SUFFIXES):
        return "a disk image no domain's disks, backing chains or snapshots use"
    if lowered.endswith(_STATE_SUFFIXES):
        return "a saved memory state no domain or snapshot names"
    return "a file in a storage pool that no domain uses"


def _chain_error(chain: Chain) -> str | None:
    """Why a disk's chain ends early (a refused name keeps the header's exact text)."""
    if chain.refused is not None:
        named = f"; named {chain.refused_name!r} in {chain.refused_by.path}" if chain.refused_by else ""
        return f"not read: {chain.refused}{named}"
    return f"backing file {chain.broken} cannot be opened: {chain.error}" if chain.broken else None
