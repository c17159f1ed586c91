"""Finding a VM and describing it: identity, location, NICs, guest facts, clock and event history."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import attrs
from pyVmomi import vim, vmodl

from vmforensics.custody.models import VMIdentity
from vmforensics.errors import ObjectVanishedError, VMNotFoundError, VMVanishedError
from vmforensics.hypervisors.vmware.api import api_errors, moref, properties, retrieve, vanished

log = logging.getLogger(__name__)

_VM_PATHS = (
    "name",
    "config.uuid",
    "config.instanceUuid",
    "config.guestId",
    "config.guestFullName",
    "config.version",
    "config.template",
    "config.files",
    "config.hardware.device",
    "config.changeTrackingEnabled",
    "runtime.powerState",
    "runtime.host",
    "datastore",
    "snapshot",
    "guest.toolsRunningStatus",
    "guest.toolsVersionStatus2",
    "guest.guestFullName",
    "guest.hostName",
    "guest.ipAddress",
    "guest.net",
)

#: Event types kept as the VM's history (location, MAC addresses, snapshots, power).
_HISTORY_EVENTS = (
    "VmMigratedEvent",
    "DrsVmMigratedEvent",
    "VmRelocatedEvent",
    "VmBeingMigratedEvent",
    "VmBeingHotMigratedEvent",
    "VmEmigratingEvent",
    "VmRegisteredEvent",
    "VmCreatedEvent",
    "VmClonedEvent",
    "VmDeployedEvent",
    "VmRenamedEvent",
    "VmMacAssignedEvent",
    "VmMacChangedEvent",
    "VmMacConflictEvent",
    "VmStaticMacConflictEvent",
    "VmPoweredOnEvent",
    "VmPoweredOffEvent",
    "VmSuspendedEvent",
    "VmResumingEvent",
    "VmReconfiguredEvent",
    "TaskEvent",
)
_EVENT_PAGE = 500
_EVENT_LIMIT = 10_000


@attrs.frozen
class FoundVM:
    """The VM's managed object and the properties read in the same round trip."""

    vm: Any
    props: dict[str, Any]


def find_vm(si: Any, target: str) -> FoundVM:
    """The VM named ``target`` or with that config.uuid, instanceUuid or moref (``vm-42``)."""
    wanted = target.strip().lower()
    with api_errors(f"find VM {target!r}"):
        candidates = retrieve(
            si,
            [],
            vim.VirtualMachine,
            ["name", "config.uuid", "config.instanceUuid"],
            container=si.content.rootFolder,
        )
    by_id = [
        vm
        for vm, props in candidates
        if wanted
        in (
            moref(vm).lower(),
            str(props.get("config.uuid", "")).lower(),
            str(props.get("config.instanceUuid", "")).lower(),
        )
    ]
    by_name = [vm for vm, props in candidates if props.get("name") == target]
    matches = by_id or by_name
    if not matches:
        raise VMNotFoundError(
            f"no VM named {target!r} or with that UUID or moref (searched {len(candidates)} VMs)"
        )
    if len(matches) > 1:
        refs = ", ".join(moref(vm) for vm in matches)
        raise VMNotFoundError(f"{target!r} names {len(matches)} VMs ({refs}); give the instanceUuid or moref")
    vm = matches[0]
    return FoundVM(vm, vm_properties(si, vm, _VM_PATHS, "read the VM's properties"))


@contextlib.contextmanager
def vm_errors(vm: Any, action: str) -> Iterator[None]:
    """:func:`api_errors` for a call about the VM being acquired: its vanishing is the one fatal
    disappearance (VMVanishedError); any other object's is left to the caller."""
    try:
        with api_errors(action):
            yield
    except ObjectVanishedError as exc:
        if exc.reference != moref(vm):
            raise
        raise VMVanishedError(
            f"{action}: the VM {moref(vm)} was removed from the server's inventory (unregistered "
            "or deleted) during the acquisition; everything acquired so far is kept and recorded"
        ) from exc


def vm_properties(si: Any, vm: Any, paths: tuple[str, ...] | list[str], action: str) -> dict[str, Any]:
    """Properties of the VM being acquired (VMVanishedError if it is gone)."""
    with vm_errors(vm, action):
        return properties(si, vm, paths)


def inventory_path(si: Any, obj: Any) -> list[tuple[Any, str]]:
    """``[(object, name)]`` from the root folder's child down to ``obj``."""
    chain: list[tuple[Any, str]] = []
    root = si.content.rootFolder
    current = obj
    while current is not None and moref(current) != moref(root) and len(chain) < 64:
        try:
            props = properties(si, current, ["name", "parent"])
        except ObjectVanishedError:
            log.info("%s vanished while its inventory path was read", moref(current))
            break
        chain.append((current, props.get("name", moref(current))))
        current = props.get("parent")
    return list(reversed(chain))


def describe_vm(si: Any, found: FoundVM) -> tuple[VMIdentity, dict[str, Any]]:
    """The VMIdentity, and location facts for the acquirer (datacenter path, host object)."""
    props = found.props
    host = props.get("runtime.host")
    location: dict[str, Any] = {"host": host}
    host_name = cluster = datacenter = None
    with api_errors("read the VM's location"):
        path = inventory_path(si, host if host is not None else found.vm)
        refs = props.get("datastore", [])
        listed = retrieve(si, refs, vim.Datastore, ["name"])
        datastores = {moref(ds): p.get("name", moref(ds)) for ds, p in listed}
        nics = _nics(si, props.get("config.hardware.device", []))
    location["vanished"] = [("datastore", ref, "the VM's datastores") for ref in vanished(refs, listed)]
    for index, (obj, name) in enumerate(path):
        if isinstance(obj, vim.Datacenter):
            datacenter = name
            location["datacenter_path"] = "/".join(n for _, n in path[: index + 1])
            location["datacenter"] = obj
        elif isinstance(obj, vim.ClusterComputeResource):
            cluster = name
        elif isinstance(obj, vim.HostSystem):
            host_name = name
    files = props.get("config.files")
    identity = VMIdentity(
        name=props.get("name", moref(found.vm)),
        uuid=props.get("config.uuid"),
        instance_uuid=props.get("config.instanceUuid"),
        reference=moref(found.vm),
        config_path=getattr(files, "vmPathName", None),
        mac_addresses=tuple(nic["mac"] for nic in nics if nic.get("mac")),
        host=host_name,
        cluster=cluster,
        datacenter=datacenter,
        datastores=tuple(sorted(datastores.values())),
        power_state_before=str(props.get("runtime.powerState", "unknown")),
        guest_reported=_guest_facts(props),
        details={
            "guest_os_configured": props.get("config.guestId"),
            "guest_os_configured_name": props.get("config.guestFullName"),
            "hardware_version": props.get("config.version"),
            "template": props.get("config.template"),
            "change_tracking": props.get("config.changeTrackingEnabled"),
            "tools_running_status": props.get("guest.toolsRunningStatus"),
            "tools_version_status": props.get("guest.toolsVersionStatus2"),
            "nics": nics,
            "files": {
                key: getattr(files, key, None)
                for key in ("vmPathName", "snapshotDirectory", "suspendDirectory", "logDirectory")
            },
            "host_reference": moref(host) if host is not None else None,
            "existing_snapshots": snapshot_tree(props.get("snapshot")),
        },
    )
    location["datastore_names"] = datastores
    return identity, location


def _nics(si: Any, devices: list[Any]) -> list[dict[str, Any]]:
    nics = []
    networks: dict[str, str] = {}
    for device in devices:
        if not isinstance(device, vim.vm.device.VirtualEthernetCard):
            continue
        backing = device.backing
        network = getattr(backing, "deviceName", None)
        ref = getattr(backing, "network", None)
        port = getattr(backing, "port", None)
        if network is None and port is not None:
            network = (
                _portgroup_name(si, port.portgroupKey, networks)
                or f"distributed port group {port.portgroupKey}"
            )
        if network is None and ref is not None:
            key = moref(ref)
            if key not in networks:
                try:
                    networks[key] = properties(si, ref, ["name"]).get("name", key)
                except ObjectVanishedError:
                    networks[key] = f"{key} (vanished)"
            network = networks[key]
        connectable = device.connectable
        nics.append(
            {
                "key": device.key,
                "label": getattr(device.deviceInfo, "label", None),
                "type": type(device).__name__.rsplit(".", 1)[-1],
                "mac": (device.macAddress or "").lower() or None,
                "address_type": device.addressType,
                "network": network,
                "connected": getattr(connectable, "connected", None),
                "start_connected": getattr(connectable, "startConnected", None),
            }
        )
    return nics


def _portgroup_name(si: Any, key: str | None, cache: dict[str, str]) -> str | None:
    """The name of a distributed port group (its key is its moref on vCenter)."""
    if not key:
        return None
    if key not in cache:
        group = vim.dvs.DistributedVirtualPortgroup(key, si._stub)
        try:
            cache[key] = properties(si, group, ["name"]).get("name") or key
        except (vmodl.MethodFault, ObjectVanishedError):
            cache[key] = key
    return cache[key]


def _guest_facts(props: dict[str, Any]) -> dict[str, Any]:
    """What VMware Tools in the guest reports: unverified, the guest could be lying."""
    facts: dict[str, Any] = {
        "unverified": "reported by VMware Tools inside the guest; a compromised guest can report anything",
        "guest_full_name": props.get("guest.guestFullName"),
        "host_name": props.get("guest.hostName"),
        "ip_address": props.get("guest.ipAddress"),
    }
    nets = []
    for net in props.get("guest.net", []) or []:
        nets.append(
            {
                "mac": net.macAddress,
                "network": net.network,
                "connected": net.connected,
                "ip_addresses": list(net.ipAddress or []),
            }
        )
    if nets:
        facts["nics"] = nets
    return facts


def snapshot_tree(info: Any) -> list[dict[str, Any]]:
    """The VM's snapshots (flattened, with their morefs) from ``snapshot`` (VirtualMachineSnapshotInfo)."""
    flat: list[dict[str, Any]] = []

    def walk(nodes: list[Any], parent: str | None) -> None:
        for node in nodes or []:
            flat.append(
                {
                    "reference": moref(node.snapshot),
                    "name": node.name,
                    "description": node.description,
                    "created": _iso(node.createTime),
                    "state": str(node.state),
                    "quiesced": node.quiesced,
                    "parent": parent,
                }
            )
            walk(node.childSnapshotList, moref(node.snapshot))

    walk(getattr(info, "rootSnapshotList", None) or [], None)
    return flat


def vm_events(si: Any, vm: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The events the server keeps about the VM (oldest first), and a note if they were cut short."""
    manager = si.content.eventManager
    if manager is None:
        return [], "this server keeps no events"
    spec = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
        eventTypeId=list(_HISTORY_EVENTS),
    )
    events: list[dict[str, Any]] = []
    note = None
    collector = manager.CreateCollectorForEvents(spec)
    try:
        collector.RewindCollector()
        while True:
            page = collector.ReadNextEvents(_EVENT_PAGE)
            if not page:
                break
            events.extend(_event_record(event) for event in page)
            if len(events) >= _EVENT_LIMIT:
                note = f"only the first {_EVENT_LIMIT} events were read"
                break
    finally:
        collector.DestroyCollector()
    events.sort(key=lambda e: (e.get("time") or "", e.get("key") or 0))
    return events, note


def _event_record(event: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": event.key,
        "type": type(event).__name__.rsplit(".", 1)[-1],
        "time": _iso(event.createdTime),
        "user": event.userName,
        "message": event.fullFormattedMessage,
        "host": getattr(event.host, "name", None),
        "datacenter": getattr(event.datacenter, "name", None),
        "chain_id": event.chainId,
    }
    for attribute, key in (
        ("sourceHost", "source_host"),
        ("sourceDatacenter", "source_datacenter"),
        ("ds", "datastore"),
    ):
        value = getattr(event, attribute, None)
        if value is not None:
            record[key] = getattr(value, "name", None)
    for attribute in ("mac", "adapter", "newMac", "oldMac", "conflictedVmName"):
        value = getattr(event, attribute, None)
        if value is not None:
            record[attribute] = value
    info = getattr(event, "info", None)
    if info is not None:  # TaskEvent: keep the task's name (snapshot, power, relocate...)
        record["task"] = getattr(info, "descriptionId", None) or getattr(info, "name", None)
    return record


def hosts_in_history(events: list[dict[str, Any]], current: str | None) -> list[str]:
    """Hosts the VM ran on, per its events (each may hold vmware.log files of that time)."""
    names = [e.get(key) for e in events for key in ("source_host", "host")]
    return sorted({n for n in names if n} | ({current} if current else set()))


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
