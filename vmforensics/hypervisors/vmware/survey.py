"""Survey of vCenter or ESXi through the vSphere API: one PropertyCollector round trip for the
whole inventory, one event collector for moves and power history, one datastore search per
datastore for files no VM uses. Read-only: nothing is created on the server but the temporary
view and collector objects of this session.

The connection (TLS policy, login) is the VMware acquirer's; properties are read only through
the PropertyCollector, never through pyVmomi's accessors (which make some servers fail on unset
properties and cost one round trip each).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import attrs
from pyVmomi import vim, vmodl

from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import role_for
from vmforensics.custody.models import ClockReading, SourceInfo
from vmforensics.errors import ConnectionError_
from vmforensics.hypervisors.vmware.acquirer import VMwareAcquirer
from vmforensics.hypervisors.vmware.api import (
    PC,
    api_errors,
    fault_text,
    is_gone,
    login,
    logout,
    moref,
    vanished,
    wait_for_task,
)
from vmforensics.hypervisors.vmware.tls import certificate_facts, peer_certificate
from vmforensics.survey.findings import with_findings
from vmforensics.survey.models import (
    AcquirerSettings,
    DiskRecord,
    FileRecord,
    HostRecord,
    MoveRecord,
    NICRecord,
    SnapshotRecord,
    SurveyReport,
    Thresholds,
    VMRecord,
    iso,
    parse_time,
)

log = logging.getLogger(__name__)

VM_PATHS = (
    "name",
    "parent",
    "config.uuid",
    "config.instanceUuid",
    "config.guestFullName",
    "config.template",
    "config.files",
    "config.hardware.device",
    "runtime.powerState",
    "runtime.host",
    "summary.runtime.bootTime",
    "datastore",
    "snapshot",
    "layoutEx.file",
    "layoutEx.snapshot",
    "guest.toolsRunningStatus",
    "guest.toolsVersionStatus2",
)
HOST_PATHS = (
    "name",
    "parent",
    "summary.config.product.fullName",
    "runtime.connectionState",
    "configManager.dateTimeSystem",
)
#: Other inventory objects: only their names and parents, to place VMs and hosts.
PLACE_KINDS = (
    vim.Folder,
    vim.Datacenter,
    vim.ComputeResource,
    vim.Datastore,
    vim.Network,
)
MOVE_EVENTS = (
    "VmMigratedEvent",
    "DrsVmMigratedEvent",
    "VmRelocatedEvent",
    "VmEmigratingEvent",
)
POWER_EVENTS = ("VmPoweredOnEvent", "VmPoweredOffEvent")
_EVENT_PAGE = 1000
_EVENT_LIMIT = 100_000
_DISK_ROLES = {"disk-descriptor", "disk-extent", "change-tracking"}
_STATE_ROLES = {"snapshot-state", "suspend-state", "memory"}


def survey_vmware(
    host: str,
    *,
    user: str,
    password: str,
    port: int = 443,
    tls_ca: str | None = None,
    tls_thumbprint: str | None = None,
    insecure: bool = False,
    thresholds: Thresholds | None = None,
    events: bool = True,
    datastore_files: bool = True,
    timeout: float = 60.0,
) -> SurveyReport:
    """Survey every VM, host and datastore the account can see on vCenter or ESXi.

    TLS is verified as for :class:`VMwareAcquirer` (``tls_ca``, ``tls_thumbprint`` or the system
    store; ``insecure`` is recorded). ``events`` reads moves and power history; ``datastore_files``
    searches each datastore for files no VM uses (one task per datastore).
    """
    began = time.monotonic()
    settings = VMwareAcquirer(
        host,
        user=user,
        password=password,
        port=port,
        tls_ca=tls_ca,
        tls_thumbprint=tls_thumbprint,
        insecure=insecure,
    )
    # --insecure is a per-run decision: a plan made from this survey verifies TLS again
    reconnect = AcquirerSettings.of(
        "vmware", ["password"], host=host, port=port, user=user, tls_ca=tls_ca, tls_thumbprint=tls_thumbprint
    )
    context, pinned = settings.tls.context(host, port, timeout)
    si = login(host, port, user, password, context, timeout)
    try:
        with api_errors("read the server's product information"):
            about = si.content.about
            product = {
                k: getattr(about, k, None) for k in ("name", "fullName", "version", "build", "apiType")
            }
        try:
            seen = certificate_facts(pinned or peer_certificate(host, port, timeout))
        except ConnectionError_ as exc:
            seen = {"tls_certificate": f"not recorded: {exc}"}
        source = SourceInfo(
            kind="vmware",
            host=f"{host}:{port}",
            product=product,
            connection={
                "api": f"https://{host}:{port}/sdk",
                "server_role": "standalone ESXi host (no vCenter)"
                if product.get("apiType") == "HostAgent"
                else "vCenter Server",
                "user": user,
                "tls_verification": settings.tls.mode,
                **seen,
            },
        )
        report = survey_service_instance(
            si, source, thresholds=thresholds, events=events, datastore_files=datastore_files
        )
    finally:
        logout(si)
    return attrs.evolve(report, duration=round(time.monotonic() - began, 6), acquirer=reconnect)


def survey_service_instance(
    si: Any,
    source: SourceInfo,
    *,
    thresholds: Thresholds | None = None,
    events: bool = True,
    datastore_files: bool = True,
) -> SurveyReport:
    """The survey over an already logged-in ServiceInstance (``source`` describes the connection)."""
    limits = thresholds or Thresholds()
    notes: list[str] = []
    with api_errors("read the server's clock"):
        clock = measure_clock(
            si.CurrentTime, method="vSphere ServiceInstance.CurrentTime (the API server's clock)"
        )
    now = parse_time(clock.examiner_utc)
    with api_errors("read the inventory"):
        inventory = Inventory(retrieve_inventory(si))
    history: dict[str, list[Any]] = defaultdict(list)
    if events:
        since = now - dt.timedelta(days=max(limits.moved_within_days, limits.dormant_days))
        if limits.active_since:
            since = min(since, parse_time(limits.active_since))
        with api_errors("read the events"):
            found, note = read_events(si, since)
        if note:
            notes.append(note)
        for event in found:
            vm = getattr(getattr(event, "vm", None), "vm", None)
            if vm is not None:
                history[moref(vm)].append(event)
    listing: dict[str, list[FileRecord]] = {}
    if datastore_files:
        listing = browse_datastores(si, inventory, notes)
    hosts = [inventory.host_record(ref, si, notes) for ref in inventory.hosts]
    vms = [
        inventory.vm_record(ref, history.get(ref, []), listing, clock.examiner_utc) for ref in inventory.vms
    ]
    vms = _mark_vanished(si, inventory, vms, notes)
    unclaimed = inventory.unclaimed(listing) if datastore_files else []
    report = SurveyReport(
        source=source,
        vms=tuple(sorted(vms, key=lambda v: (v.name, v.reference or ""))),
        hosts=tuple(hosts),
        unclaimed_files=tuple(unclaimed),
        thresholds=limits,
        clock=clock,
        taken=clock.examiner_utc,
        notes=tuple(dict.fromkeys(notes)),
    )
    return with_findings(report)


def _mark_vanished(si: Any, inventory: Inventory, vms: list[VMRecord], notes: list[str]) -> list[VMRecord]:
    """VMs removed from the inventory while the survey ran: kept, marked (a finding), noted."""
    objects = [inventory.objects[ref][0] for ref in inventory.vms]
    with api_errors("check that the VMs still exist"):
        gone = set(vanished(objects, _retrieve(si, objects, vim.VirtualMachine, ["name"])))
    if not gone:
        return vms
    marked = []
    for vm in vms:
        if vm.reference in gone:
            notes.append(f"VM {vm.name} ({vm.reference}) was removed from the inventory during the survey")
            details = {**vm.details, "vanished_during_survey": True}
            vm = attrs.evolve(vm, details=details)
        marked.append(vm)
    return marked


def retrieve_inventory(si: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every VM, host and placing object with its properties: one RetrievePropertiesEx (paged)."""
    content = si.content
    kinds = [vim.VirtualMachine, vim.HostSystem, *PLACE_KINDS]
    view = content.viewManager.CreateContainerView(content.rootFolder, kinds, True)
    try:
        traverse = PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
        props = [
            PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PATHS)),
            PC.PropertySpec(type=vim.HostSystem, pathSet=list(HOST_PATHS)),
            *(PC.PropertySpec(type=kind, pathSet=["name", "parent"]) for kind in PLACE_KINDS),
        ]
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
            propSet=props,
            reportMissingObjectsInResults=True,  # one object deleted meanwhile must not fail the read
        )
        collector = content.propertyCollector
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
        while result is not None:
            for item in result.objects:
                if not item.propSet and is_gone(item.missingSet):
                    continue
                found[moref(item.obj)] = (item.obj, {p.name: p.val for p in item.propSet or ()})
            result = collector.ContinueRetrievePropertiesEx(result.token) if result.token else None
    finally:
        with contextlib.suppress(Exception):
            view.DestroyView()
    found[moref(content.rootFolder)] = (content.rootFolder, {"name": "root"})
    return found


def read_events(si: Any, since: dt.datetime) -> tuple[list[Any], str | None]:
    """Move and power events of every VM since ``since`` (one collector, read in pages)."""
    manager = si.content.eventManager
    if manager is None:
        return [], "this server keeps no events: no moves or power history"
    spec = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=si.content.rootFolder, recursion="all"),
        eventTypeId=[*MOVE_EVENTS, *POWER_EVENTS],
        time=vim.event.EventFilterSpec.ByTime(beginTime=since),
    )
    try:
        collector = manager.CreateCollectorForEvents(spec)
    except vmodl.fault.NotSupported:
        return [], "the server keeps no events (a standalone host keeps only recent ones)"
    found: list[Any] = []
    note = None
    try:
        collector.RewindCollector()
        while page := collector.ReadNextEvents(_EVENT_PAGE):
            found.extend(e for e in page if e.createdTime is None or e.createdTime >= since)
            if len(found) >= _EVENT_LIMIT:
                note = f"only the first {_EVENT_LIMIT} events were read"
                break
    finally:
        with contextlib.suppress(Exception):
            collector.DestroyCollector()
    found.sort(key=lambda e: (e.createdTime or since, e.key))
    return found, note


def browse_datastores(si: Any, inventory: Inventory, notes: list[str]) -> dict[str, list[FileRecord]]:
    """Every file on every datastore (``[ds] folder`` -> files), one search task per datastore."""
    listing: dict[str, list[FileRecord]] = {}
    refs = list(inventory.of(vim.Datastore))
    with api_errors("find the datastore browsers"):
        browsers = {
            moref(ds): props.get("browser") for ds, props in _retrieve(si, refs, vim.Datastore, ["browser"])
        }
    flags = vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True, modification=True, fileType=True)
    search = vim.host.DatastoreBrowser.SearchSpec(details=flags, matchPattern=["*"])
    for ds in refs:
        name = inventory.name(ds)
        browser = browsers.get(moref(ds))
        if browser is None:
            notes.append(f"datastore {name}: no browser; its files were not listed")
            continue
        try:
            with api_errors(f"list the files on datastore {name}"):
                task = browser.SearchDatastoreSubFolders_Task(f"[{name}]", search)
            results = wait_for_task(si, task, f"list the files on datastore {name}", timeout=600) or []
        except Exception as exc:  # one unreadable datastore must not hide the others
            notes.append(f"datastore {name}: files not listed ({exc})")
            continue
        for folder in results:
            path = _folder(folder.folderPath)
            for info in folder.file or ():
                if isinstance(info, vim.host.DatastoreBrowser.FolderInfo):
                    continue
                listing.setdefault(path, []).append(
                    FileRecord(
                        path=_join(path, info.path),
                        datastore=name,
                        size=info.fileSize,
                        modified=iso(info.modification),
                    )
                )
    return listing


def _retrieve(
    si: Any, objects: Iterable[Any], kind: type, paths: list[str]
) -> list[tuple[Any, dict[str, Any]]]:
    from vmforensics.hypervisors.vmware.api import retrieve

    return retrieve(si, list(objects), kind, paths)


def _folder(path: str) -> str:
    """``[ds] dir`` (some servers answer ``[ds]/dir`` or with a trailing slash)."""
    datastore, _, rest = path.partition("]")
    rest = rest.strip().strip("/")
    return f"{datastore}] {rest}" if rest else f"{datastore}]"


def _join(folder: str, name: str) -> str:
    return f"{folder} {name}" if folder.endswith("]") else f"{folder}/{name}"


def _hidden(folder: str) -> bool:
    """System folders (.sdd.sf, .vSphere-HA, .dvsData, .naa...) hold no VM's files."""
    return any(part.startswith(".") for part in folder.partition("] ")[2].split("/"))


def _split(path: str) -> tuple[str, str]:
    """``[ds] dir/file`` -> (``[ds] dir``, ``file``); a name at the datastore's top -> (``[ds]``, name)."""
    datastore, _, rest = path.partition("] ")
    folder, _, name = rest.rpartition("/")
    return (f"{datastore}] {folder}" if folder else f"{datastore}]"), name


class Inventory:
    """The retrieved objects by moref, with the lookups the records need."""

    def __init__(self, objects: dict[str, tuple[Any, dict[str, Any]]]):
        self.objects = objects
        self.vms = [ref for ref, (obj, _) in objects.items() if isinstance(obj, vim.VirtualMachine)]
        self.hosts = [ref for ref, (obj, _) in objects.items() if isinstance(obj, vim.HostSystem)]

    def of(self, kind: type) -> Iterable[Any]:
        return (obj for obj, _ in self.objects.values() if isinstance(obj, kind))

    def props(self, ref: str) -> dict[str, Any]:
        return self.objects.get(ref, (None, {}))[1]

    def name(self, obj: Any) -> str | None:
        if obj is None:
            return None
        return self.props(moref(obj)).get("name", moref(obj))

    def ancestor(self, obj: Any, kind: type) -> Any:
        """The nearest enclosing object of ``kind`` (a cluster, a datacenter), or None."""
        current, seen = obj, 0
        while current is not None and seen < 64:
            if isinstance(current, kind):
                return current
            current = self.props(moref(current)).get("parent")
            seen += 1
        return None

    def vm_directories(self) -> dict[str, str]:
        """``[ds] folder`` of every VM's configuration, snapshots and logs -> the VM's moref."""
        directories = {}
        for ref in self.vms:
            files = self.props(ref).get("config.files")
            for key in ("vmPathName", "snapshotDirectory", "suspendDirectory", "logDirectory"):
                value = getattr(files, key, None)
                if value:
                    folder = (
                        _split(value)[0] if value.lower().endswith((".vmx", ".vmtx")) else value.rstrip("/")
                    )
                    directories.setdefault(folder, ref)
        return directories

    def claimed_files(self) -> set[str]:
        """Every file a VM's layout or disk chains name (names without a folder put in the VM's)."""
        claimed = set()
        for ref in self.vms:
            props = self.props(ref)
            home = _split(getattr(props.get("config.files"), "vmPathName", "") or "[?] ?/?")[0]
            names = [f.name for f in props.get("layoutEx.file", []) or []]
            for device in props.get("config.hardware.device", []) or []:
                if isinstance(device, vim.vm.device.VirtualDisk):
                    names += _chain(device.backing)
            for name in names:
                folder, base = _split(name)
                if folder.endswith("]"):
                    claimed.add(f"{home}/{base}")
                claimed.add(_join(folder, base))
        return claimed

    def unclaimed(self, listing: dict[str, list[FileRecord]]) -> list[FileRecord]:
        directories = self.vm_directories()
        claimed = self.claimed_files()
        found = []
        for folder, records in sorted(listing.items()):
            if folder.endswith("]") or _hidden(folder):
                continue  # the datastore's top and system folders (.sdd.sf, .vSphere-HA, .dvsData)
            for record in records:
                base = _split(record.path)[1]
                role = role_for("vmware", base)
                if record.path in claimed or base.lower().endswith(".lck"):
                    continue
                if folder not in directories:
                    reason = "in a folder no registered VM uses"
                elif role in _DISK_ROLES:
                    reason = "a disk file in no registered VM's layout or disk chain"
                elif role in _STATE_ROLES:
                    reason = "a saved state no registered VM's layout names"
                else:
                    continue  # logs, nvram, config backups beside a registered VM are its own
                found.append(attrs.evolve(record, reason=reason))
        return found

    def host_record(self, ref: str, si: Any, notes: list[str]) -> HostRecord:
        obj, props = self.objects[ref]
        cluster = self.ancestor(props.get("parent"), vim.ClusterComputeResource)
        clock = _host_clock(props.get("configManager.dateTimeSystem"), self.name(obj), notes)
        return HostRecord(
            name=props.get("name", ref),
            reference=ref,
            cluster=self.name(cluster),
            datacenter=self.name(self.ancestor(obj, vim.Datacenter)),
            product=props.get("summary.config.product.fullName"),
            connection_state=str(props.get("runtime.connectionState") or "") or None,
            clock=clock,
        )

    def vm_record(
        self, ref: str, events: list[Any], listing: dict[str, list[FileRecord]], taken: str
    ) -> VMRecord:
        obj, props = self.objects[ref]
        host = props.get("runtime.host")
        host_props = self.props(moref(host)) if host is not None else {}
        cluster = self.ancestor(host_props.get("parent"), vim.ClusterComputeResource)
        files = props.get("config.files")
        config_path = getattr(files, "vmPathName", None)
        layout = {f.key: f for f in props.get("layoutEx.file", []) or []}
        power = str(props.get("runtime.powerState") or "unknown")
        boot = props.get("summary.runtime.bootTime")
        power_on = [e.createdTime for e in events if type(e).__name__.endswith("VmPoweredOnEvent")]
        power_off = [e.createdTime for e in events if type(e).__name__.endswith("VmPoweredOffEvent")]
        last_on = max([t for t in (boot, *power_on) if t is not None], default=None)
        activity = _activity(power, taken, last_on, power_off, config_path, listing)
        devices = props.get("config.hardware.device", []) or []
        return VMRecord(
            name=props.get("name", ref),
            reference=ref,
            uuid=props.get("config.uuid"),
            instance_uuid=props.get("config.instanceUuid"),
            power_state=power,
            host=self.name(host),
            cluster=self.name(cluster),
            datacenter=self.name(self.ancestor(obj, vim.Datacenter)),
            datastores=tuple(sorted(self.name(ds) or "" for ds in props.get("datastore", []) or [])),
            config_path=config_path,
            guest_os=props.get("config.guestFullName"),
            tools_status=_tools(props),
            nics=tuple(self._nics(devices)),
            disks=tuple(_disks(devices, layout)),
            snapshots=tuple(_snapshots(props.get("snapshot"), props.get("layoutEx.snapshot"), layout)),
            last_power_on=iso(last_on),
            last_activity=activity[0],
            last_activity_basis=activity[1],
            moves=tuple(_move(e) for e in events if type(e).__name__.rsplit(".", 1)[-1] in MOVE_EVENTS),
            template=bool(props.get("config.template")),
            details={"vendor": "vmware"},
        )

    def _nics(self, devices: list[Any]) -> Iterable[NICRecord]:
        for device in devices:
            if not isinstance(device, vim.vm.device.VirtualEthernetCard):
                continue
            backing = device.backing
            network = getattr(backing, "deviceName", None)
            port = getattr(backing, "port", None)
            if network is None and port is not None:
                network = self.props(port.portgroupKey).get("name") or f"portgroup {port.portgroupKey}"
            if network is None and getattr(backing, "network", None) is not None:
                network = self.name(backing.network)
            connectable = device.connectable
            yield NICRecord(
                label=getattr(device.deviceInfo, "label", None),
                mac=(device.macAddress or "").lower() or None,
                address_type=device.addressType,
                network=network,
                connected=getattr(connectable, "connected", None),
            )


def _chain(backing: Any) -> list[str]:
    names, seen = [], 0
    while backing is not None and seen < 64:
        if getattr(backing, "fileName", None):
            names.append(backing.fileName)
        backing = getattr(backing, "parent", None)
        seen += 1
    return names


def _disks(devices: list[Any], layout: dict[int, Any]) -> Iterable[DiskRecord]:
    sizes = defaultdict(int)
    by_name = {f.name: f.size or 0 for f in layout.values()}
    for device in devices:
        if not isinstance(device, vim.vm.device.VirtualDisk):
            continue
        chain = _chain(device.backing)
        for name in chain:
            sizes[name] = by_name.get(name, 0)
        capacity = getattr(device, "capacityInBytes", None) or (device.capacityInKB or 0) * 1024 or None
        yield DiskRecord(
            path=chain[0] if chain else getattr(device.deviceInfo, "label", "disk"),
            capacity=capacity,
            allocated=sum(sizes[n] for n in chain) or None,
            chain_depth=len(chain) or None,
            format=type(device.backing).__name__.rsplit(".", 1)[-1],
            files=tuple(chain),
        )


def _snapshots(info: Any, layout_snapshots: Any, layout: dict[int, Any]) -> list[SnapshotRecord]:
    """The snapshot tree, flattened. Memory: a memory file in the layout (ESXi 5+ keeps it in a
    .vmem); without a layout entry, the documented meaning of state poweredOn."""
    sizes: dict[str, int] = {}
    memory: dict[str, bool] = {}
    for entry in layout_snapshots or []:
        memory_key = entry.memoryKey if entry.memoryKey is not None else -1
        keys = [k for k in (entry.dataKey, memory_key) if k is not None and k >= 0]
        sizes[moref(entry.key)] = sum((layout[k].size or 0) for k in keys if k in layout)
        memory[moref(entry.key)] = memory_key >= 0
    records: list[SnapshotRecord] = []

    def walk(nodes: list[Any], parent: str | None, depth: int) -> None:
        for node in nodes or []:
            reference = moref(node.snapshot)
            records.append(
                SnapshotRecord(
                    name=node.name,
                    reference=reference,
                    created=iso(node.createTime),
                    parent=parent,
                    depth=depth,
                    memory=memory.get(reference, str(node.state) == "poweredOn"),
                    size=sizes.get(reference),
                    description=node.description or None,
                    quiesced=node.quiesced,
                )
            )
            walk(node.childSnapshotList, reference, depth + 1)

    walk(getattr(info, "rootSnapshotList", None) or [], None, 1)
    return records


def _activity(
    power: str,
    taken: str,
    last_on: dt.datetime | None,
    power_off: list[dt.datetime],
    config_path: str | None,
    listing: dict[str, list[FileRecord]],
) -> tuple[str | None, str | None]:
    """The latest moment the VM is known to have run, and what says so."""
    if power in ("poweredOn", "suspended"):
        return taken, f"{power} at the time of the survey"
    candidates: list[tuple[dt.datetime, str]] = []
    if last_on is not None:
        candidates.append((last_on, "its last power-on"))
    if power_off:
        candidates.append((max(power_off), "its last power-off event"))
    if config_path:
        folder = _split(config_path)[0]
        for record in listing.get(folder, []):
            name = _split(record.path)[1].lower()
            if name.startswith("vmware") and name.endswith(".log") and record.modified:
                candidates.append((parse_time(record.modified), f"the modification time of {record.path}"))
    if not candidates:
        return None, None
    moment, basis = max(candidates, key=lambda pair: pair[0])
    return iso(moment), basis


def _tools(props: dict[str, Any]) -> str | None:
    parts = [props.get("guest.toolsRunningStatus"), props.get("guest.toolsVersionStatus2")]
    text = ", ".join(str(p) for p in parts if p)
    return text or None


def _move(event: Any) -> MoveRecord:
    def name(value: Any) -> str | None:
        return getattr(value, "name", None) if value is not None else None

    return MoveRecord(
        time=iso(event.createdTime),
        event=type(event).__name__.rsplit(".", 1)[-1],
        source_host=name(getattr(event, "sourceHost", None)),
        target_host=name(event.host),
        source_datastore=name(getattr(event, "sourceDatastore", None)),
        target_datastore=name(event.ds),
        user=event.userName,
        message=event.fullFormattedMessage,
    )


def _host_clock(system: Any, host: str | None, notes: list[str]) -> ClockReading | None:
    if system is None:
        return None
    try:
        return measure_clock(system.QueryDateTime, method="vSphere HostDateTimeSystem.QueryDateTime")
    except vmodl.MethodFault as exc:
        notes.append(f"host clocks not read: QueryDateTime failed ({fault_text(exc)})")
        log.info("QueryDateTime on %s failed: %s", host, fault_text(exc))
        return None
