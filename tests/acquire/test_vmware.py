"""VMwareAcquirer against govmomi's vcsim, a real vSphere API server on loopback, over TLS.

vcsim keeps its datastores as real directories and serves them at /folder, but writes empty
disks and no memory or suspend state. So the fixtures write what ESXi would have written there:
a VMDK made by qemu-img holding ext4 (before the acquisition), and during the preservation step
the snapshot's .vmsn/.vmem and sparse delta disk, or the suspended VM's .vmss/.vmem
(``SimulatedESXi`` below does only that, after the real API call). Every acquired file is
compared with the datastore's bytes, and the disk with qemu-img's reading of the source.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyVmomi")
if shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir():
    pytest.skip("vcsim needs golang-go and golang-github-vmware-govmomi-dev", allow_module_level=True)

from pyVim.connect import Connect, Disconnect
from pyVmomi import vim

from tests.acquire.vcsim.esxi_files import EVIDENCE_TEXT, write_delta, write_disk, write_memory_state
from tests.acquire.vcsim.server import VCSim
from vmforensics import CaseInfo, open_image, verify
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    UsageError,
    VMNotFoundError,
    VMVanishedError,
)
from vmforensics.hypervisors.vmware.acquirer import VMwareAcquirer
from vmforensics.hypervisors.vmware.api import properties, run_task
from vmforensics.hypervisors.vmware.identify import snapshot_tree

VCENTER_VM = "DC0_H0_VM0"  # the tests that need vCenter (host downloads) or serve their own vcsim
CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst")


class SimulatedESXi(VMwareAcquirer):
    """The real acquirer; after its (real) preservation call, the datastore gets what ESXi writes."""

    def __init__(self, *args: Any, vm_dir: Path, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.vm_dir = vm_dir

    def preserve(self, session: Any, mode: str, *, memory: bool, isolate: bool) -> None:
        super().preserve(session, mode, memory=memory, isolate=isolate)
        if mode == "snapshot":
            write_delta(self.vm_dir)
            if memory:
                write_memory_state(
                    self.vm_dir / f"{self.vm_dir.name}-Snapshot1.vmsn",
                    self.vm_dir / f"{self.vm_dir.name}-Snapshot1.vmem",
                )
        elif mode == "suspend":
            write_memory_state(
                self.vm_dir / f"{self.vm_dir.name}-4ad1e7f3.vmss",
                self.vm_dir / f"{self.vm_dir.name}-4ad1e7f3.vmem",
            )


@pytest.fixture(params=["vcenter", "esx"])
def vcsim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VCSim]:
    """vCenter, and a standalone ESXi host (``vcsim -esx``: HostAgent API, ha-datacenter).

    One server per test (each changes its VM: snapshots, power, NICs); vcsim starts in < 0.1 s.
    """
    with VCSim(tmp_path / "vcsim", esx=request.param == "esx") as server:
        yield server


#: For the tests of what only vCenter has (downloads from its ESXi hosts with service tickets).
vcenter_only = pytest.mark.parametrize("vcsim", ["vcenter"], indirect=True)


@pytest.fixture
def vm_dir(vcsim: VCSim, tmp_path: Path) -> Path:
    folder = vcsim.datastore_dir() / vcsim.vm
    (tmp_path / "oracle").mkdir()
    write_disk(folder, tmp_path / "oracle")
    return folder


def acquirer(server: VCSim, vm_dir: Path | None = None, **options: Any) -> VMwareAcquirer:
    options.setdefault("tls_thumbprint", server.thumbprint_sha256)
    if vm_dir is None:
        return VMwareAcquirer(
            server.host, port=server.port, user=server.user, password=server.password, **options
        )
    return SimulatedESXi(
        server.host, port=server.port, user=server.user, password=server.password, vm_dir=vm_dir, **options
    )


def api(server: VCSim) -> Any:
    context = ssl.create_default_context(cafile=str(server.cert))
    return Connect(server.host, server.port, server.user, server.password, sslContext=context)


def the_vm(si: Any, name: str) -> Any:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    for vm in view.view:
        if properties(si, vm, ["name"])["name"] == name:
            return vm
    raise AssertionError("no VM")


def check_files_match_source(result: Any, datastore: Path) -> None:
    """Each acquired file holds exactly the bytes the datastore has (read independently here)."""
    for record in result.files:
        relative = record.local_path.removeprefix("files/LocalDS_0/")
        source = (datastore / relative).read_bytes()
        assert hashlib.sha256(source).hexdigest() == record.hashes["sha256"], record.local_path
        assert (result.path / record.local_path).read_bytes() == source


def qemu_raw(image: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(image), str(out)], check=True)
    return out.read_bytes()


def names(result: Any) -> set[str]:
    return {f.local_path.rsplit("/", 1)[-1] for f in result.files}


def test_snapshot_with_memory_acquires_every_file_and_removes_only_its_snapshot(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    si = api(vcsim)
    vm = the_vm(si, vcsim.vm)
    run_task(
        si, lambda: vm.CreateSnapshot_Task("before-incident", "the admin's", False, False), "prior snapshot"
    )
    Disconnect(si)

    result = acquirer(vcsim, vm_dir).acquire(
        vcsim.vm, tmp_path / "out", case=CASE, preserve="snapshot", progress=False
    )

    assert verify(result.path).ok
    acquired = names(result)
    for expected in (
        f"{vcsim.vm}.vmx",
        f"{vcsim.vm}.nvram",
        "disk1.vmdk",
        "disk1-flat.vmdk",
        "disk1-000001.vmdk",
        f"{vcsim.vm}-Snapshot1.vmsn",
        f"{vcsim.vm}-Snapshot1.vmem",
        "vmware.log",
    ):
        assert expected in acquired
    roles = {f.local_path.rsplit("/", 1)[-1]: f.role for f in result.files}
    assert roles[f"{vcsim.vm}-Snapshot1.vmem"] == "memory" and roles["disk1-flat.vmdk"] == "disk-extent"
    assert all(f.local_path.startswith(f"files/LocalDS_0/{vcsim.vm}/") for f in result.files)
    check_files_match_source(result, vcsim.datastore_dir())
    # vcsim's layoutEx also lists names without the VM folder ("[LocalDS_0] disk1.vmdk"): resolved, not lost
    assert result.omissions == ()

    actions = {a.action: a for a in result.manifest.actions}
    assert {k: v for k, v in actions["snapshot"].parameters.items() if k != "snapshot_name"} == {
        "memory": True,
        "quiesce": False,
    }
    assert "2026-117" in actions["snapshot"].parameters["snapshot_name"]
    ours = actions["snapshot"].details["snapshot"]
    assert (
        actions["remove-snapshot"].parameters["snapshot"] == ours
        and actions["remove-snapshot"].outcome == "ok"
    )

    si = api(vcsim)
    left = snapshot_tree(properties(si, the_vm(si, vcsim.vm), ["snapshot"]).get("snapshot"))
    Disconnect(si)
    assert [s["name"] for s in left] == ["before-incident"]
    assert ours not in {s["reference"] for s in left}

    source = result.manifest.source
    assert source.connection["tls_verification"] == "pinned-thumbprint"
    assert source.connection["tls_certificate_sha256"].replace(":", "").lower() == vcsim.thumbprint_sha256
    downloads = source.connection["files"]["datastores"]["LocalDS_0"]
    assert source.vm.name == vcsim.vm and source.vm.reference.startswith("vm-") and source.vm.uuid
    assert source.vm.datacenter == vcsim.datacenter and source.vm.datastores == ("LocalDS_0",)
    assert source.vm.mac_addresses and source.vm.power_state_before == "poweredOn"
    assert result.manifest.clock.skew_seconds is not None
    ledger = (result.path / "custody.log.jsonl").read_text()
    if vcsim.esx:
        # the host is the file server: its own /folder, dcPath=ha-datacenter, its own certificate
        assert source.product["apiType"] == "HostAgent" and source.product["name"] == "VMware ESXi"
        assert source.product["version"] and source.product["build"]
        assert source.connection["server_role"] == "standalone ESXi host (no vCenter)"
        assert downloads["datacenter"] == "ha-datacenter" and downloads["verification"] == "pinned"
        assert downloads["tls_certificate_sha256"] == source.connection["tls_certificate_sha256"]
        assert "downloads" not in source.connection["files"]
        # the host's datacenter lists a datastore that no longer exists: it drops only itself
        assert ledger.count('"object-vanished"') == 1 and '"kind":"datastore"' in ledger
        assert source.vm.details["host_product"]["fullName"].startswith("VMware ESXi")
    else:
        assert source.product["apiType"] == "VirtualCenter"
        assert source.connection["server_role"] == "vCenter Server"
        assert downloads["vcenter"]["verification"] == "pinned"
        # vcsim records no certificate for its hosts, so the host-first default falls back, and says why
        assert "no usable certificate thumbprint for host DC0_H0" in downloads["host_unavailable"]
        assert all(f"vcenter https://127.0.0.1:{vcsim.port} (pinned)" in f.notes[-1] for f in result.files)
        assert source.vm.host == "DC0_H0"
        assert any(e["type"] == "VmPoweredOnEvent" for e in source.vm.history)
        assert [n["network"] for n in source.vm.details["nics"]] == ["DC0_DVPG0"]
        assert "CurrentTime" in result.manifest.clock.method
        assert '"object-vanished"' not in ledger

    disk = result.path / "files" / "LocalDS_0" / vcsim.vm / "disk1.vmdk"
    expected = qemu_raw(vm_dir / "disk1.vmdk", tmp_path / "base.raw")
    with open_image(disk) as image:
        assert image.size == len(expected)
        assert image.read() == expected
    assert EVIDENCE_TEXT in expected
    expected_delta = qemu_raw(vm_dir / "disk1-000001.vmdk", tmp_path / "delta.raw")
    with open_image(disk.with_name("disk1-000001.vmdk")) as image:
        assert image.read() == expected_delta


def test_suspend_keeps_vmss_beside_vmem_and_leaves_the_vm_suspended(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    result = acquirer(vcsim, vm_dir).acquire(
        vcsim.vm, tmp_path / "out", case=CASE, preserve="suspend", progress=False
    )

    assert verify(result.path).ok
    assert {f"{vcsim.vm}-4ad1e7f3.vmss", f"{vcsim.vm}-4ad1e7f3.vmem"} <= names(result)
    check_files_match_source(result, vcsim.datastore_dir())
    assert [a.action for a in result.manifest.actions] == ["suspend"]
    assert result.manifest.source.vm.power_state_after == "suspended"
    si = api(vcsim)
    assert properties(si, the_vm(si, vcsim.vm), ["runtime.powerState"])["runtime.powerState"] == "suspended"
    Disconnect(si)


def test_none_on_a_powered_off_vm_changes_nothing(vcsim: VCSim, vm_dir: Path, tmp_path: Path) -> None:
    si = api(vcsim)
    vm = the_vm(si, vcsim.vm)
    run_task(si, vm.PowerOffVM_Task, "power off")
    Disconnect(si)

    result = acquirer(vcsim, tls_ca=str(vcsim.cert), tls_thumbprint=None).acquire(
        vcsim.vm, tmp_path / "out", case=CASE, preserve="none", progress=False
    )

    assert verify(result.path).ok
    assert result.manifest.actions == ()
    assert result.manifest.source.connection["tls_verification"] == "ca-file"
    assert {"disk1.vmdk", "disk1-flat.vmdk", f"{vcsim.vm}.vmx"} <= names(result)
    check_files_match_source(result, vcsim.datastore_dir())
    assert result.manifest.source.vm.power_state_before == "poweredOff"


def test_isolate_disconnects_every_nic_first_and_says_how_to_reconnect(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    result = acquirer(vcsim).acquire(
        vcsim.vm, tmp_path / "out", case=CASE, preserve="none", isolate=True, progress=False
    )

    action = result.manifest.actions[0]
    assert action.action == "isolate" and action.outcome == "ok" and action.details["task"]
    assert action.details["nics"] and "Connected" in action.details["reconnect"]
    si = api(vcsim)
    devices = properties(si, the_vm(si, vcsim.vm), ["config.hardware.device"])["config.hardware.device"]
    Disconnect(si)
    nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert nics and all(not n.connectable.connected and not n.connectable.startConnected for n in nics)
    assert verify(result.path).ok


def test_wrong_password_is_an_authentication_error(vcsim: VCSim, tmp_path: Path) -> None:
    bad = VMwareAcquirer(
        vcsim.host, port=vcsim.port, user=vcsim.user, password="wrong", tls_ca=str(vcsim.cert)
    )
    with pytest.raises(AuthenticationError, match="refused the user name or password"):
        bad.acquire(vcsim.vm, tmp_path / "out", case=CASE, progress=False)


def test_wrong_thumbprint_and_unknown_ca_are_refused_even_on_loopback(tmp_path: Path) -> None:
    """Served on 127.0.0.2: pyVim would skip verification for 127.0.0.1 if given no context."""
    with VCSim(tmp_path / "vcsim", host="127.0.0.2") as server:
        options = {"port": server.port, "user": server.user, "password": server.password}
        with pytest.raises(HostVerificationError, match="not the pinned"):
            VMwareAcquirer(server.host, tls_thumbprint="ab" * 32, **options).acquire(
                VCENTER_VM, tmp_path / "a", case=CASE, progress=False
            )
        with pytest.raises(HostVerificationError, match="certificate"):
            VMwareAcquirer(server.host, **options).acquire(
                VCENTER_VM, tmp_path / "b", case=CASE, progress=False
            )
        sha1 = hashlib.sha1(ssl.PEM_cert_to_DER_cert(server.cert.read_text())).hexdigest()
        result = VMwareAcquirer(server.host, tls_thumbprint=sha1, **options).acquire(
            VCENTER_VM, tmp_path / "c", case=CASE, progress=False
        )
        assert verify(result.path).ok


def test_insecure_opt_out_is_recorded(vcsim: VCSim, tmp_path: Path) -> None:
    result = acquirer(vcsim, tls_thumbprint=None, insecure=True).acquire(
        vcsim.vm, tmp_path / "out", case=CASE, progress=False
    )
    assert result.manifest.options["insecure_tls"] is True
    assert result.manifest.source.connection["tls_verification"] == "insecure-opt-out"


def test_vm_found_by_uuid_instance_uuid_or_moref_and_unknown_vm_refused(vcsim: VCSim, tmp_path: Path) -> None:
    si = api(vcsim)
    vm = the_vm(si, vcsim.vm)
    props = properties(si, vm, ["config.uuid", "config.instanceUuid"])
    Disconnect(si)
    for number, target in enumerate((props["config.uuid"].upper(), props["config.instanceUuid"], vm._moId)):
        result = acquirer(vcsim).acquire(target, tmp_path / f"out{number}", case=CASE, progress=False)
        assert result.manifest.source.vm.name == vcsim.vm
    with pytest.raises(VMNotFoundError, match="no VM named 'web01'"):
        acquirer(vcsim).acquire("web01", tmp_path / "missing", case=CASE, progress=False)


def test_download_cut_midway_is_resumed_from_the_bytes_on_disk(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    faultproxy = pytest.importorskip("tests.transport.faultproxy")
    with faultproxy.FaultProxy((vcsim.host, vcsim.port)) as proxy:
        proxy.cut_after(5_000_000)
        result = acquirer(vcsim, datastore_endpoint=f"127.0.0.1:{proxy.port}").acquire(
            vcsim.vm, tmp_path / "out", case=CASE, preserve="none", progress=False
        )
        assert proxy.cuts == 1
    flat = next(f for f in result.files if f.local_path.endswith("disk1-flat.vmdk"))
    # the copy continued within this run: a reconnection (``resumed`` counts an earlier run's bytes)
    assert flat.reconnections == 1 and flat.resumed == 0 and flat.size == 16 << 20
    check_files_match_source(result, vcsim.datastore_dir())
    ledger = (result.path / "custody.log.jsonl").read_text()
    assert "transfer-interrupted" in ledger
    assert verify(result.path).ok


def test_a_run_cut_for_good_is_resumed_by_the_next_with_the_prefix_proved(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link dies in the flat extent and stays dead (every later connection is cut at its first
    byte): the run fails after its reconnections (the copier's backoff waits are
    skipped here, for speed). ``resume=True`` then continues the partial copy, straight from the
    server, after re-reading its prefix, and reuses the sealed files."""
    from types import SimpleNamespace

    from vmforensics.acquire import copier

    faultproxy = pytest.importorskip("tests.transport.faultproxy")
    monkeypatch.setattr(copier, "time", SimpleNamespace(sleep=lambda seconds: None))
    out = tmp_path / "out"
    with faultproxy.FaultProxy((vcsim.host, vcsim.port)) as proxy:
        counted = proxy._count_cut
        proxy._count_cut = lambda: (counted(), proxy.cut_after(*[0] * 8))  # every later connection dies
        proxy.cut_after(5_000_000)
        with pytest.raises(ConnectionError_, match="gave up after 5 reconnections"):
            acquirer(vcsim, datastore_endpoint=f"127.0.0.1:{proxy.port}").acquire(
                vcsim.vm, out, case=CASE, preserve="none", progress=False
            )
        assert proxy.cuts == 6
    result = acquirer(vcsim).acquire(vcsim.vm, out, case=CASE, preserve="none", progress=False, resume=True)
    flat = next(f for f in result.files if f.local_path.endswith("disk1-flat.vmdk"))
    assert 0 < flat.resumed < flat.size == 16 << 20
    continued = {r.local_path: r for r in result.manifest.resumed}
    assert (
        continued[flat.local_path].outcome == "continued"
        and continued[flat.local_path].offset == flat.resumed
    )
    check_files_match_source(result, vcsim.datastore_dir())
    assert '"resume-proof"' in (result.path / "custody.log.jsonl").read_text()
    assert verify(result.path).ok


def test_cli_acquires_with_password_from_the_environment(
    vcsim: VCSim,
    vm_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vmforensics.cli import main

    monkeypatch.setenv("VMFORENSICS_PASSWORD", vcsim.password)
    out = tmp_path / "out"
    code = main(
        [
            "acquire",
            "vmware",
            "--host",
            vcsim.host,
            "--port",
            str(vcsim.port),
            "--user",
            vcsim.user,
            "--vm",
            vcsim.vm,
            "--out",
            str(out),
            "--case",
            "2026-117",
            "--tls-thumbprint",
            vcsim.thumbprint_sha256,
            "--preserve",
            "none",
            "--no-progress",
        ]
    )
    assert code == 0
    assert f"acquired {vcsim.vm}" in capsys.readouterr().out
    assert verify(out).ok


def test_via_ssh_reads_vmfs_volumes_with_remote_sha256_cross_check(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    """A real OpenSSH sshd stands in for the ESXi shell; /vmfs/volumes is a folder whose
    LocalDS_0 entry is the vcsim datastore directory (ESXi mounts datastores the same way)."""
    sshd = pytest.importorskip("tests.transport.sshd")
    volumes = tmp_path / "vmfs" / "volumes"
    volumes.mkdir(parents=True)
    (volumes / "LocalDS_0").symlink_to(vcsim.datastore_dir())
    with sshd.SSHServer(tmp_path / "sshd") as server:
        ssh = {
            "host": server.host,
            "port": server.port,
            "user": server.user,
            "identity": server.client_key,
            "known_hosts": server.known_hosts,
            "vmfs_root": str(volumes),
        }
        result = acquirer(vcsim, vm_dir, via="ssh", ssh_options=ssh).acquire(
            vcsim.vm, tmp_path / "out", case=CASE, preserve="snapshot", remote_hash=True, progress=False
        )
    assert verify(result.path).ok
    assert {f.transport for f in result.files} == {"ssh"}
    assert all(f.remote_hash is not None and f.remote_hash.matched for f in result.files)
    check_files_match_source(result, vcsim.datastore_dir())
    assert f"{vcsim.vm}-Snapshot1.vmem" in names(result)


# --- objects vanishing between the acquirer's calls (real API calls of the test, between its steps) ---


class Hooked(SimulatedESXi):
    """The simulated-ESXi acquirer; after its ``identify`` or ``enumerate`` step the test's call runs."""

    def __init__(self, *args: Any, after: dict[str, Callable[[], Any]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.after = after

    def identify(self, session: Any, target: str) -> Any:
        found = super().identify(session, target)
        if "identify" in self.after:
            self.after.pop("identify")()
        return found

    def enumerate(self, session: Any) -> Any:
        planned = super().enumerate(session)
        if "enumerate" in self.after:
            self.after.pop("enumerate")()
        return planned


def hooked(server: VCSim, vm_dir: Path, **after: Callable[[], Any]) -> Hooked:
    return Hooked(
        server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        tls_thumbprint=server.thumbprint_sha256,
        vm_dir=vm_dir,
        after=after,
    )


def vanished_events(result: Any) -> list[dict[str, Any]]:
    lines = (result.path / "custody.log.jsonl").read_text().splitlines()
    return [event["details"] for event in map(json.loads, lines) if event["action"] == "object-vanished"]


def test_a_datastore_destroyed_between_listing_and_reading_drops_only_itself(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second datastore on the VM's host is destroyed (Destroy_Task) after the acquirer listed
    the datacenter's datastores and before it reads their names: the retrieval over all of them
    loses only that one, which the ledger records; every file of the VM is still acquired."""
    from vmforensics.hypervisors.vmware import acquirer as module

    si = api(vcsim)
    host = properties(si, the_vm(si, vcsim.vm), ["runtime.host"])["runtime.host"]
    system = properties(si, host, ["configManager.datastoreSystem"])["configManager.datastoreSystem"]
    (tmp_path / "scratch").mkdir()
    scratch = system.CreateLocalDatastore("Scratch", str(tmp_path / "scratch"))
    destroyed: list[str] = []
    real = module.retrieve

    def destroy_then_retrieve(session_si: Any, objects: Any, kind: type, paths: Any, **options: Any) -> Any:
        if kind is vim.Datastore and not destroyed and scratch._moId in {o._moId for o in objects}:
            run_task(si, scratch.Destroy_Task, "destroy the Scratch datastore")
            destroyed.append(scratch._moId)
        return real(session_si, objects, kind, paths, **options)

    monkeypatch.setattr(module, "retrieve", destroy_then_retrieve)
    try:
        result = acquirer(vcsim, vm_dir).acquire(
            vcsim.vm, tmp_path / "out", case=CASE, preserve="snapshot", progress=False
        )
    finally:
        Disconnect(si)

    assert destroyed == [scratch._moId]
    assert verify(result.path).ok
    assert result.omissions == ()
    assert {"disk1.vmdk", "disk1-flat.vmdk", "disk1-000001.vmdk", f"{vcsim.vm}.vmx"} <= names(result)
    check_files_match_source(result, vcsim.datastore_dir())
    gone = [e for e in vanished_events(result) if e["reference"] == scratch._moId]
    assert gone == [{"kind": "datastore", "reference": scratch._moId, "during": "list the datastores"}]


def test_a_snapshot_removed_between_listing_and_copying_is_an_omission_and_a_ledger_note(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    """After enumeration the admin's snapshot is removed (RemoveSnapshot_Task): the files that
    went with it are omissions naming why, the rest is acquired, and cleanup notes the snapshot.

    vcsim 0.24 deletes the file its layout keys to the snapshot (here ``disk1.vmdk``, the
    descriptor) and leaves the ``.vmsn``, which the test then deletes as ESXi would. Whatever
    disappeared from the datastore is exactly what the manifest omits.
    """
    si = api(vcsim)
    vm = the_vm(si, vcsim.vm)
    _, snapshot = run_task(
        si, lambda: vm.CreateSnapshot_Task("admin-old", "the admin's", False, False), "prior snapshot"
    )
    state = vm_dir / f"{vcsim.vm}-Snapshot1.vmsn"
    assert state.exists()  # vcsim writes the snapshot's state file and lists it in layoutEx
    before = {p.name for p in vm_dir.iterdir()}

    def remove() -> None:
        run_task(
            si, lambda: snapshot.RemoveSnapshot_Task(removeChildren=False), "remove the admin's snapshot"
        )
        state.unlink(missing_ok=True)

    try:
        result = hooked(vcsim, vm_dir, enumerate=remove).acquire(
            vcsim.vm, tmp_path / "out", case=CASE, preserve="none", progress=False
        )
    finally:
        Disconnect(si)

    lost = before - {p.name for p in vm_dir.iterdir()}
    assert state.name in lost
    assert verify(result.path).ok
    assert {o.source_path for o in result.omissions} == {f"[LocalDS_0] {vcsim.vm}/{name}" for name in lost}
    assert all("could not be read" in o.reason and "HTTP 404" in o.reason for o in result.omissions)
    assert names(result) == before - lost - {f"{vcsim.vm}.vmx.lck"}
    check_files_match_source(result, vcsim.datastore_dir())
    assert vanished_events(result)[-1] == {
        "kind": "snapshot",
        "reference": snapshot._moId,
        "during": "the acquisition",
        "name": "admin-old",
    }


def test_the_vm_unregistered_mid_run_is_fatal_with_a_clear_error(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    si = api(vcsim)
    vm = the_vm(si, vcsim.vm)

    def unregister() -> None:
        run_task(si, vm.PowerOffVM_Task, "power off")  # vSphere unregisters powered-off VMs only
        vm.UnregisterVM()

    try:
        with pytest.raises(VMVanishedError, match="removed from the server's inventory"):
            hooked(vcsim, vm_dir, identify=unregister).acquire(
                vcsim.vm, tmp_path / "out", case=CASE, preserve="snapshot", progress=False
            )
    finally:
        Disconnect(si)
    ledger = (tmp_path / "out" / "custody.log.jsonl").read_text()
    assert '"failed"' in ledger and "VMVanishedError" in ledger
    assert '"source-action-start"' not in ledger  # nothing was done to the source


# --- on vCenter: downloads from the ESXi host, with a service ticket and its certificate pinned ---


@vcenter_only
def test_host_download_is_chosen_by_its_pinned_certificate_and_falls_back_per_file(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    """The host path through the acquirer, as far as vcsim allows.

    Real here: vCenter's ``AcquireGenericServiceTicket`` (one call per request), the host found
    from the VM's ``runtime.host`` and its selected management adapter, the TLS probe of each of
    its addresses against the pin, the ticketed requests, and the per-file fallback. The gaps:
    vcsim records no certificate for its hosts (``config.certificate`` is the two bytes "10", no
    ``sslThumbprint``), so the examiner's pin for DC0_H0 stands in for vCenter's record; it serves
    ``/folder`` for every host at its own address (the ticket's ``hostName``; the management
    address 127.0.0.1:443 refuses) and, being a vCenter, does not know ESXi's datacenter path
    ``ha-datacenter``: the host answers 404 and each file falls back to vCenter's ``/folder``.
    Bytes served by the host path with a ticket per request are checked in
    ``test_host_transport_presents_a_fresh_ticket_per_request``.
    """
    result = acquirer(vcsim, host_thumbprints={"DC0_H0": vcsim.thumbprint_sha256}).acquire(
        VCENTER_VM, tmp_path / "out", case=CASE, preserve="none", progress=False
    )

    assert verify(result.path).ok
    check_files_match_source(result, vcsim.datastore_dir())
    downloads = result.manifest.source.connection["files"]["datastores"]["LocalDS_0"]
    assert downloads["host"]["tls_thumbprint_pinned"] == vcsim.thumbprint_sha256
    assert downloads["host"]["host"] == "DC0_H0" and downloads["host"]["host_reference"].startswith("host-")
    assert downloads["host"]["url"] == f"https://127.0.0.1:{vcsim.port}/folder"
    assert "the examiner's pin" in downloads["host_choice"]
    host = f"esxi-host DC0_H0 https://127.0.0.1:{vcsim.port} (pinned SHA-256 thumbprint (the examiner's pin"
    vcenter = f"; then vcenter https://127.0.0.1:{vcsim.port} (pinned): host download failed: "
    for record in result.files:
        note = record.notes[-1]
        assert note.startswith(f"downloaded from {host}") and vcenter in note and "HTTP 404" in note
    routes = result.manifest.source.connection["files"]["downloads"]
    assert set(routes) == {f.source_path for f in result.files}
    assert all(
        [r["endpoint"].split()[0] for r in found] == ["esxi-host", "vcenter"] for found in routes.values()
    )
    ledger = (result.path / "custody.log.jsonl").read_text()
    assert '"download-endpoint"' in ledger and ledger.count('"download-route"') == 2 * len(result.files)


@vcenter_only
def test_host_with_another_certificate_falls_back_to_vcenter_per_file(
    vcsim: VCSim, vm_dir: Path, tmp_path: Path
) -> None:
    """A pin the host's certificate does not match: every address is refused, vCenter serves the files."""
    result = acquirer(vcsim, host_thumbprints={"DC0_H0": "ab" * 32}).acquire(
        VCENTER_VM, tmp_path / "out", case=CASE, preserve="none", progress=False
    )

    assert verify(result.path).ok
    check_files_match_source(result, vcsim.datastore_dir())
    downloads = result.manifest.source.connection["files"]["datastores"]["LocalDS_0"]
    assert "host DC0_H0 not usable at any address" in downloads["host_unavailable"]
    assert (
        f"127.0.0.1:{vcsim.port}: presented sha256 {vcsim.thumbprint_sha256}" in downloads["host_unavailable"]
    )
    for record in result.files:
        assert (
            f"vcenter https://127.0.0.1:{vcsim.port} (pinned): host download unavailable" in record.notes[-1]
        )


@vcenter_only
def test_download_from_vcenter_skips_the_host(vcsim: VCSim, vm_dir: Path, tmp_path: Path) -> None:
    result = acquirer(
        vcsim, download_from="vcenter", host_thumbprints={"DC0_H0": vcsim.thumbprint_sha256}
    ).acquire(VCENTER_VM, tmp_path / "out", case=CASE, preserve="none", progress=False)
    files = result.manifest.source.connection["files"]
    assert files["datastores"]["LocalDS_0"]["verification"] == "pinned" and "downloads" not in files
    assert verify(result.path).ok
    with pytest.raises(UsageError, match="download_from"):
        acquirer(vcsim, download_from="esx")


@vcenter_only
def test_host_transport_presents_a_fresh_ticket_per_request(vcsim: VCSim, tmp_path: Path) -> None:
    """A TLS datastore server (tests/transport/httpsd.py) stands in for the ESXi host's /folder and
    records each request; the tickets come from vcsim's real AcquireGenericServiceTicket. Then
    the host goes away and the file comes from vCenter's /folder, which the record says."""
    from tests.transport.httpsd import DatastoreServer, TestPKI
    from vmforensics.hypervisors.vmware.hostdirect import (
        HostEndpoint,
        HostFirst,
        HostLocator,
        HostTicketTransport,
    )
    from vmforensics.transport.https import HTTPSDatastoreTransport

    root = vcsim.datastore_dir()
    (root / "web01").mkdir()
    payload = bytes(range(256)) * 4096
    (root / "web01" / "web01-flat.vmdk").write_bytes(payload)
    pki = TestPKI(tmp_path / "pki", label="esxi host")
    si = api(vcsim)
    locator = HostLocator(si, None)
    events: list[tuple[str, dict[str, Any]]] = []
    vcenter = HTTPSDatastoreTransport(
        vcsim.host, port=vcsim.port, datacenter="DC0", datastore="LocalDS_0", tls_ca=str(vcsim.cert)
    )
    path = "[LocalDS_0] web01/web01-flat.vmdk"
    try:
        with DatastoreServer(root, pki, datacenter="ha-datacenter", cookie="vmware_cgi_ticket=") as esxi:
            endpoint = HostEndpoint("esx01", "host-9", "esx01.lab", esxi.host, esxi.port, pki.sha256, "test")
            host = HostTicketTransport(endpoint, "LocalDS_0", locator.ticket, timeout=10)
            assert host.stat(path).size == len(payload)
            with host.open_read(path, 1000) as stream:
                buffer = bytearray(len(payload))
                got = 0
                while count := stream.readinto(memoryview(buffer)[got:]):
                    got += count
            assert bytes(buffer[:got]) == payload[1000:]
            cookies = [headers["Cookie"] for _, _, headers in esxi.requests]
            assert [method for method, _, _ in esxi.requests] == ["HEAD", "GET"]
            assert all(c.startswith("vmware_cgi_ticket=") for c in cookies) and len(set(cookies)) == 2
            assert all("dcPath=ha-datacenter" in url for _, url, _ in esxi.requests)

            wrong = HostEndpoint("esx01", "host-9", "esx01.lab", esxi.host, esxi.port, "cd" * 32, "test")
            with pytest.raises(HostVerificationError):
                HostTicketTransport(wrong, "LocalDS_0", locator.ticket, timeout=10).stat(path)

            first = HostFirst(host, vcenter, "chosen", lambda event, **facts: events.append((event, facts)))
            assert first.stat(path).size == len(payload)
        assert first.open_read(path, 0).readinto(memoryview(bytearray(16))) == 16  # the host is gone
    finally:
        vcenter.close()
        Disconnect(si)
    assert [r["endpoint"].split()[0] for r in first.routes[path]] == ["esxi-host", "vcenter"]
    assert "host download failed" in first.routes[path][1]["reason"]
    assert [event for event, _ in events] == ["download-route", "download-route"]
    assert first.describe()["host_unavailable"].startswith("the host failed")


@vcenter_only
def test_host_certificate_as_vcenter_records_it(vcsim: VCSim) -> None:
    from vmforensics.hypervisors.vmware.hostdirect import management_addresses, recorded_thumbprint

    si = api(vcsim)
    try:
        host = properties(si, the_vm(si, VCENTER_VM), ["runtime.host"])["runtime.host"]
        props = properties(
            si,
            host,
            ["config.certificate", "summary.config.sslThumbprint", "config.virtualNicManagerInfo.netConfig"],
        )
    finally:
        Disconnect(si)
    assert recorded_thumbprint(props) is None  # vcsim: config.certificate is b"10", no sslThumbprint
    assert management_addresses(props["config.virtualNicManagerInfo.netConfig"]) == ["127.0.0.1"]
    pem = vcsim.cert.read_bytes()
    signed = [b - 256 if b > 127 else b for b in pem]  # pyVmomi's xsd:byte[] are signed
    assert recorded_thumbprint({"config.certificate": signed})[0] == vcsim.thumbprint_sha256
    sha1 = hashlib.sha1(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()
    colons = ":".join(sha1[i : i + 2] for i in range(0, 40, 2)).upper()
    assert recorded_thumbprint({"summary.config.sslThumbprint": colons}) == (
        sha1,
        "vCenter's summary.config.sslThumbprint of the host",
    )
