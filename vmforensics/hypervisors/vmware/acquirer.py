"""VMwareAcquirer: a VM on vCenter or a standalone ESXi host, through the vSphere API (pyVmomi).

connect (TLS verified: CA bundle, system store or pinned thumbprint) -> identify (PropertyCollector,
clock, events) -> preserve (isolate, snapshot with memory / suspend / none) -> enumerate
(layoutEx + datastore browse) -> stream (HTTPS ``/folder`` or SSH ``/vmfs/volumes``) -> cleanup
(only the snapshot this run made). Every change on the source is a recorded action.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import attrs
from pyVmomi import vim, vmodl

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.custody.models import EvidenceFile, VMIdentity
from vmforensics.errors import (
    ConnectionError_,
    ObjectVanishedError,
    SourceError,
    UsageError,
    VMVanishedError,
)
from vmforensics.hypervisors.vmware.api import (
    api_errors,
    login,
    logout,
    moref,
    properties,
    retrieve,
    run_task,
    vanished,
)
from vmforensics.hypervisors.vmware.files import DatastorePath, VMFiles
from vmforensics.hypervisors.vmware.hostdirect import HostFirst, HostLocator, HostTicketTransport
from vmforensics.hypervisors.vmware.identify import (
    describe_vm,
    find_vm,
    hosts_in_history,
    snapshot_tree,
    vm_events,
    vm_properties,
)
from vmforensics.hypervisors.vmware.tls import (
    TLSPolicy,
    certificate_facts,
    normalize_thumbprint,
    peer_certificate,
)
from vmforensics.hypervisors.vmware.transport import DatastoreRouter, vmfs_path
from vmforensics.transport.base import Transport

log = logging.getLogger(__name__)

VIAS = ("https", "ssh")
DOWNLOAD_FROM = ("host", "vcenter")


class VMwareAcquirer(Acquirer):
    """Acquire a VM from vCenter or ESXi.

    ``tls_ca`` (a PEM bundle) or ``tls_thumbprint`` (the certificate's SHA-256 or SHA-1) says
    how to trust the server; without either the system's CA store is used. ``insecure=True``
    turns verification off and says so in the manifest. ``via="ssh"`` reads the files from the
    ESXi host's ``/vmfs/volumes`` with ``ssh_options`` for :class:`SSHTransport` (``user``,
    ``identity``, ``known_hosts`` or ``host_key_fingerprint``...; ``host`` defaults to the VM's
    host, ``vmfs_root`` to ``/vmfs/volumes``). ``datastore_endpoint`` ("host:port") downloads
    through another address than the API's (a port forward).

    On vCenter, ``download_from="host"`` (the default) reads each datastore from the ESXi host that
    mounts it, with a service ticket per request and the host's certificate pinned to what vCenter
    records for it (or to ``host_thumbprints={"esx01": SHA-256}`` given by the examiner); where
    that is impossible, the file comes through vCenter's ``/folder`` and its record says why.
    ``download_from="vcenter"`` always uses vCenter's ``/folder``.
    """

    kind = "vmware"
    preserve_modes = ("snapshot", "suspend", "none")

    def __init__(
        self,
        host: str,
        *,
        user: str,
        password: str,
        port: int = 443,
        tls_ca: str | None = None,
        tls_thumbprint: str | None = None,
        insecure: bool = False,
        via: str = "https",
        ssh_options: Mapping[str, Any] | None = None,
        datastore_endpoint: str | None = None,
        download_from: str = "host",
        host_thumbprints: Mapping[str, str] | None = None,
        quiesce: bool = False,
        power_on_after_suspend: bool = False,
        timeout: float = 60.0,
    ) -> None:
        if not host:
            raise UsageError("the vCenter or ESXi host name is required")
        if via not in VIAS:
            raise UsageError(f"via must be one of {VIAS}, not {via!r}")
        if download_from not in DOWNLOAD_FROM:
            raise UsageError(f"download_from must be one of {DOWNLOAD_FROM}, not {download_from!r}")
        if via == "ssh" and not (ssh_options or {}).get("user"):
            raise UsageError("via='ssh' needs ssh_options with at least user= (and a host key to trust)")
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.tls = TLSPolicy(tls_ca=tls_ca, tls_thumbprint=tls_thumbprint, insecure=insecure)
        self.via = via
        self.ssh_options = dict(ssh_options or {})
        self.download_host, self.download_port = _endpoint(datastore_endpoint, host, port)
        self.download_from = download_from
        self.host_thumbprints = {
            name: normalize_thumbprint(v) for name, v in (host_thumbprints or {}).items()
        }
        self.quiesce = quiesce
        self.power_on_after_suspend = power_on_after_suspend
        self.timeout = timeout
        self._si: Any = None
        self._router: DatastoreRouter | None = None
        self._host_first: list[HostFirst] = []

    # --- connect ---------------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        context, pinned = self.tls.context(self.host, self.port, self.timeout)
        self._si = login(self.host, self.port, self.user, self._password, context, self.timeout)
        with api_errors("read the server's product information"):
            about = self._si.content.about
            product = {
                key: getattr(about, key, None)
                for key in (
                    "name",
                    "fullName",
                    "version",
                    "build",
                    "apiType",
                    "apiVersion",
                    "instanceUuid",
                    "osType",
                )
            }
        try:
            seen = certificate_facts(pinned or peer_certificate(self.host, self.port, self.timeout))
        except ConnectionError_ as exc:
            seen = {"tls_certificate": f"not recorded: {exc}"}
        standalone = product.get("apiType") == "HostAgent"
        connection: dict[str, Any] = {
            "api": f"https://{self.host}:{self.port}/sdk",
            "server_role": "standalone ESXi host (no vCenter)" if standalone else "vCenter Server",
            "user": self.user,
            "tls_verification": self.tls.mode,
            **seen,
        }
        if self.tls.tls_thumbprint:
            connection["tls_thumbprint_pinned"] = self.tls.tls_thumbprint
        if self.tls.tls_ca:
            connection["tls_ca"] = self.tls.tls_ca
        if self.tls.insecure:
            connection["warning"] = "TLS verification was turned off by the examiner (insecure=True)"
            session.options["insecure_tls"] = True
            session.ledger.append("tls-insecure", host=self.host, port=self.port)
        session.source = attrs.evolve(
            session.source,
            kind="vmware",
            host=f"{self.host}:{self.port}",
            product=product,
            connection=connection,
        )

    # --- identify --------------------------------------------------------------------------------

    def identify(self, session: Session, target: str) -> VMIdentity:
        si = self._si
        found = find_vm(si, target)
        identity, location = describe_vm(si, found)
        for kind, reference, where in location.pop("vanished"):
            _note_vanished(session, kind, reference, where)
        session.clock = self._clock(session, location.get("host"))
        with api_errors("read the VM's events"):
            try:
                events, note = vm_events(si, found.vm)
            except vmodl.fault.NotSupported:
                events, note = [], "the server keeps no events (a standalone host keeps only recent ones)"
        details = dict(identity.details)
        details["hosts_in_history"] = hosts_in_history(events, identity.host)
        if note:
            details["events_note"] = note
        if location.get("host") is not None:
            with api_errors("read the host's product"):
                try:
                    host_product = properties(si, location["host"], ["summary.config.product"]).get(
                        "summary.config.product"
                    )
                except ObjectVanishedError as exc:
                    _note_vanished(session, "host", exc.reference, "the VM's host product")
                    host_product = None
            if host_product is not None:
                details["host_product"] = {"fullName": host_product.fullName, "build": host_product.build}
        session.state.update(vm=found.vm, props=found.props, location=location)
        return attrs.evolve(identity, history=tuple(events), details=details)

    def _clock(self, session: Session, host: Any) -> Any:
        si = self._si
        if host is not None:
            try:
                system = properties(si, host, ["configManager.dateTimeSystem"]).get(
                    "configManager.dateTimeSystem"
                )
            except ObjectVanishedError as exc:
                _note_vanished(session, "host", exc.reference, "the VM's host clock")
                system = None
            if system is not None:
                try:
                    return measure_clock(
                        system.QueryDateTime,
                        method="vSphere HostDateTimeSystem.QueryDateTime (the VM's host)",
                    )
                except vmodl.MethodFault as exc:
                    log.info(
                        "QueryDateTime failed (%s); using ServiceInstance.CurrentTime", type(exc).__name__
                    )
        with api_errors("read the server's clock"):
            return measure_clock(
                si.CurrentTime, method="vSphere ServiceInstance.CurrentTime (the API server's clock)"
            )

    # --- preserve --------------------------------------------------------------------------------

    def preserve(self, session: Session, mode: str, *, memory: bool, isolate: bool) -> None:
        vm = session.state["vm"]
        power = self._power_state(vm)
        if isolate:
            self._isolate(session, vm)
        if mode == "snapshot":
            self._snapshot(session, vm, memory=memory and power == "poweredOn", asked_memory=memory)
        elif mode == "suspend":
            self._suspend(session, vm, power)
        elif power == "poweredOn":
            session.ledger.append(
                "note", text="preserve=none on a running VM: its disks may change while they are read"
            )
        session.vm = attrs.evolve(session.vm, power_state_after=self._power_state(vm))

    def _isolate(self, session: Session, vm: Any) -> None:
        devices = vm_properties(
            self._si, vm, ["config.hardware.device"], "read the VM's network adapters"
        ).get("config.hardware.device", [])
        nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        with session.action(
            "isolate", method="disconnect every virtual NIC (connected and at power-on)"
        ) as details:
            changes = []
            details["nics"] = []
            for nic in nics:
                connectable = nic.connectable or vim.vm.device.VirtualDevice.ConnectInfo(
                    allowGuestControl=False
                )
                details["nics"].append(
                    {
                        "label": getattr(nic.deviceInfo, "label", None),
                        "mac": nic.macAddress,
                        "was_connected": connectable.connected,
                        "was_start_connected": connectable.startConnected,
                    }
                )
                connectable.connected = False
                connectable.startConnected = False
                nic.connectable = connectable
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic))
            if changes:
                details["task"], _ = run_task(
                    self._si,
                    lambda: vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)),
                    "disconnect the VM's network adapters",
                )
            labels = ", ".join(n["label"] or "?" for n in details["nics"]) or "none"
            details["reconnect"] = (
                f"the adapters stay disconnected after the acquisition; to reconnect ({labels}): vSphere Client -> "
                "Edit Settings -> each network adapter -> tick Connected and Connect At Power On, "
                f"or `govc device.connect -vm {session.vm.name if session.vm else '<vm>'} <label>`"
            )

    def _snapshot(self, session: Session, vm: Any, *, memory: bool, asked_memory: bool) -> None:
        acquisition = session.state["acquisition_id"]
        name = f"vmforensics {session.case.case_id} {acquisition[:8]}"
        description = (
            f"Forensic preservation by vmforensics for case {session.case.case_id} "
            f"(examiner {session.case.examiner}, acquisition {acquisition}). "
            "The tool removes it after copying the VM's files unless told to keep it."
        )
        if asked_memory and not memory:
            session.ledger.append("note", text="the VM is not powered on: the snapshot holds no memory")
        with session.action("snapshot", memory=memory, quiesce=self.quiesce, snapshot_name=name) as details:
            details["task"], snapshot = run_task(
                self._si,
                lambda: vm.CreateSnapshot_Task(
                    name=name, description=description, memory=memory, quiesce=self.quiesce
                ),
                "create the preservation snapshot",
            )
            session.state["snapshot"] = snapshot
            details["snapshot"] = moref(snapshot)
            details["description"] = description

    def _suspend(self, session: Session, vm: Any, power: str) -> None:
        if power == "suspended":
            session.ledger.append("note", text="the VM was already suspended; nothing to do")
            return
        if power != "poweredOn":
            raise UsageError(f"the VM is {power}; it cannot be suspended (use --preserve none)")
        with session.action("suspend") as details:
            details["task"], _ = run_task(self._si, vm.SuspendVM_Task, "suspend the VM")
            session.state["suspended"] = True

    def _power_state(self, vm: Any) -> str:
        props = vm_properties(self._si, vm, ["runtime.powerState"], "read the VM's power state")
        return str(props.get("runtime.powerState", "unknown"))

    # --- enumerate and transport -------------------------------------------------------------------

    def enumerate(self, session: Session) -> list[PlannedFile]:
        vm = session.state["vm"]
        props = session.state["props"]
        files = props.get("config.files")
        own = []
        for key in ("vmPathName", "snapshotDirectory", "suspendDirectory", "logDirectory"):
            value = getattr(files, key, None)
            if value:
                where = DatastorePath.parse(value)
                own.append(DatastorePath(where.datastore, where.directory) if key == "vmPathName" else where)
        datastores = self._datastores(session)
        collector = VMFiles(
            self._si,
            vm,
            datastores,
            session.omit,
            lambda event, **facts: session.ledger.append(event, **facts),
            gone=session.state["vanished_datastores"],
        )
        return collector.plan(own)

    def _datastores(self, session: Session) -> dict[str, Any]:
        """Datastores by name: the VM's, and its datacenter's (a disk may live on any).

        One that vanished since it was listed (unmounted, removed; a standalone ESXi lists stale
        references) drops only itself, with a ledger note; its files become omissions.
        """
        si = self._si
        location = session.state["location"]
        refs = list(session.state["props"].get("datastore", []))
        datacenter = location.get("datacenter")
        with api_errors("list the datastores"):
            if datacenter is not None:
                try:
                    refs += properties(si, datacenter, ["datastore"]).get("datastore", [])
                except ObjectVanishedError as exc:
                    _note_vanished(session, "datacenter", exc.reference, "the datacenter's datastores")
            listed = retrieve(si, refs, vim.Datastore, ["name"])
        found = {props.get("name"): ds for ds, props in listed if props.get("name")}
        names = location.get("datastore_names", {})
        gone = {}
        for reference in vanished(refs, listed):
            known = {"name": names[reference]} if reference in names else {}
            _note_vanished(session, "datastore", reference, "list the datastores", **known)
            if reference in names and names[reference] not in found:
                gone[names[reference]] = reference
        session.state["datastores"] = found
        session.state["vanished_datastores"] = gone
        return found

    def transport(self, session: Session) -> Transport:
        if self.via == "ssh":
            self._router = self._ssh_router(session)
        else:
            self._router = self._https_router(session)
        return self._router

    def _https_router(self, session: Session) -> DatastoreRouter:
        from vmforensics.transport.https import HTTPSDatastoreTransport

        cookie = str(self._si._stub.cookie or "").split(";", 1)[0].strip() or None
        datacenter = session.state["location"].get("datacenter_path") or "ha-datacenter"

        def vcenter(datastore: str) -> HTTPSDatastoreTransport:
            return HTTPSDatastoreTransport(
                self.download_host,
                port=self.download_port,
                cookie=cookie,
                datacenter=datacenter,
                datastore=datastore,
                timeout=self.timeout,
                **self.tls.transport_options(),
            )

        if self.download_from == "vcenter":
            return DatastoreRouter("https", vcenter, str)
        if session.source.product.get("apiType") != "VirtualCenter":
            session.ledger.append("note", text="the server is an ESXi host: its /folder is the host's own")
            return DatastoreRouter("https", vcenter, str)
        locator = HostLocator(self._si, session.state["location"].get("host"), pins=self.host_thumbprints)

        def host_first(datastore: str) -> Transport:
            found = session.state.get("datastores", {}).get(datastore)
            if found is None:
                endpoint, reason = None, "the datastore is not visible to this session"
            else:
                endpoint, reason = locator.locate(found, datastore)
            session.ledger.append(
                "download-endpoint",
                datastore=datastore,
                host=endpoint.describe() if endpoint else None,
                reason=reason,
            )
            host = (
                HostTicketTransport(endpoint, datastore, locator.ticket, self.timeout) if endpoint else None
            )
            transport = HostFirst(host, vcenter(datastore), reason, session.ledger.append)
            self._host_first.append(transport)
            return transport

        return DatastoreRouter("https", host_first, str)

    def _ssh_router(self, session: Session) -> DatastoreRouter:
        from vmforensics.transport.ssh import SSHTransport

        options = dict(self.ssh_options)
        root = options.pop("vmfs_root", "/vmfs/volumes")
        host = options.pop("host", None)
        if host is None:  # a standalone host is the API server (its own name is often localhost.localdomain)
            standalone = session.source.product.get("apiType") == "HostAgent"
            host = self.host if standalone or not (session.vm and session.vm.host) else session.vm.host
        ssh = SSHTransport(host, **options)
        return DatastoreRouter("ssh", lambda datastore: ssh, vmfs_path(root))

    # --- cleanup and disconnect --------------------------------------------------------------------

    def cleanup(self, session: Session) -> None:
        try:
            self._cleanup(session)
        except VMVanishedError as exc:  # nothing of ours can be left on a VM that is gone
            session.ledger.append("note", text=f"cleanup: {exc}")

    def _cleanup(self, session: Session) -> None:
        vm = session.state.get("vm")
        snapshot = session.state.pop("snapshot", None)
        if snapshot is not None:
            self._remove_snapshot(session, vm, snapshot)
        if session.state.pop("suspended", False) and self.power_on_after_suspend:
            with session.action("power-on") as details:
                details["task"], _ = run_task(self._si, vm.PowerOnVM_Task, "power the VM on again")
        if vm is not None and session.vm is not None:
            session.vm = attrs.evolve(session.vm, power_state_after=self._power_state(vm))

    def _remove_snapshot(self, session: Session, vm: Any, snapshot: Any) -> None:
        reference = moref(snapshot)
        with session.action("remove-snapshot", snapshot=reference, consolidate=True) as details:
            before = snapshot_tree(
                vm_properties(self._si, vm, ["snapshot"], "list the VM's snapshots").get("snapshot")
            )
            if reference not in {s["reference"] for s in before}:
                details["result"] = "the snapshot no longer exists; nothing removed"
                return
            details["task"], _ = run_task(
                self._si,
                lambda: snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
                f"remove the preservation snapshot {reference}",
            )
            after = snapshot_tree(
                vm_properties(self._si, vm, ["snapshot"], "list the VM's snapshots").get("snapshot")
            )
            if reference in {s["reference"] for s in after}:
                raise SourceError(f"snapshot {reference} is still there after its removal task succeeded")
            details["snapshots_left"] = [f"{s['reference']} {s['name']!r}" for s in after]

    def _note_vanished_snapshots(self, session: Session, vm: Any) -> None:
        """Snapshots the VM had when identified that are gone now (removed during the run)."""
        earlier = session.vm.details.get("existing_snapshots") if session.vm is not None else None
        if not earlier:
            return
        now = snapshot_tree(
            vm_properties(self._si, vm, ["snapshot"], "list the VM's snapshots").get("snapshot")
        )
        left = {s["reference"] for s in now}
        for snapshot in earlier:
            if snapshot["reference"] not in left:
                _note_vanished(
                    session, "snapshot", snapshot["reference"], "the acquisition", name=snapshot["name"]
                )

    def disconnect(self, session: Session) -> None:
        if self._router is not None:
            connection = dict(session.source.connection)
            connection["files"] = self._router.description
            routes = {path: r for transport in self._host_first for path, r in transport.routes.items()}
            if routes:
                connection["files"]["downloads"] = routes
                session.files[:] = [
                    _with_route(record, routes.get(record.source_path)) for record in session.files
                ]
            session.source = attrs.evolve(session.source, connection=connection)
            self._router = None
            self._host_first = []
        if self._si is not None:
            vm = session.state.get("vm")
            if vm is not None:
                with contextlib.suppress(VMVanishedError):  # the run already failed and says why
                    self._note_vanished_snapshots(session, vm)
            logout(self._si)
            self._si = None


def _note_vanished(session: Session, kind: str, reference: str, during: str, **facts: Any) -> None:
    """A ledger note for an object that no longer exists (it drops only itself)."""
    log.warning("%s %s vanished while reading %s", kind, reference, during)
    session.ledger.append("object-vanished", kind=kind, reference=reference, during=during, **facts)


def _with_route(record: EvidenceFile, routes: list[dict[str, Any]] | None) -> EvidenceFile:
    """The file's record with a note naming the endpoint(s) that served it and their verification."""
    if not routes:
        return record
    served = "; then ".join(f"{r['endpoint']} ({r['verification']}): {r['reason']}" for r in routes)
    return attrs.evolve(record, notes=(*record.notes, f"downloaded from {served}"))


def _endpoint(value: str | None, host: str, port: int) -> tuple[str, int]:
    if not value:
        return host, port
    name, _, number = value.rpartition(":")
    if not name or not number.isdigit() or not 0 < int(number) < 65536:
        raise UsageError(f"datastore_endpoint must be host:port, not {value!r}")
    return name.strip("[]"), int(number)
