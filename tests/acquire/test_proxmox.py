"""ProxmoxAcquirer on a Proxmox VE node's layout written by the test, with a real QEMU (TCG) guest.

No Proxmox packages exist for Debian here: the node is its files (``etc/pve/qemu-server/100.conf``,
``etc/pve/storage.cfg``, ``var/lib/vz/images/100/…``, ``var/run/qemu-server/100.qmp``) under a
temporary root passed as ``config_root``/``run_root``, and a real QEMU process started the way
Proxmox names its drives (``drive-scsi0``). Reached through a real sshd.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acquire import qemu_lab
from tests.acquire.qemu_lab import ProxmoxNode, convert_to_raw, qemu_img, short_root
from tests.test_docs import RECIPE
from tests.transport.sshd import SSHServer
from vmforensics import CaseInfo, verify
from vmforensics.cli import main
from vmforensics.errors import SourceError, UsageError, VMNotFoundError
from vmforensics.hypervisors.qemu.acquirer import ProxmoxAcquirer
from vmforensics.hypervisors.qemu.proxmox import parse_storage_config, parse_vm_config, resolve_volume

pytestmark = pytest.mark.skipif(qemu_lab.available() is not None, reason=str(qemu_lab.available()))

CASE = CaseInfo(case_id="2026-17", examiner="A. Analyst")
UUID = "0b5e7c9a-3f41-4d2b-8e6a-9c0d1e2f3a4b"
MAC = "bc:24:11:5e:a0:01"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with SSHServer(tmp_path_factory.mktemp("sshd-pve")) as server:
        yield server


@pytest.fixture
def node():
    node = ProxmoxNode(short_root("pve"))
    yield node
    node.stop()


def acquirer(sshd: SSHServer, node: ProxmoxNode, **options) -> ProxmoxAcquirer:
    return ProxmoxAcquirer(
        sshd.host,
        user=sshd.user,
        port=sshd.port,
        identity=sshd.client_key,
        known_hosts=sshd.known_hosts,
        config_root=str(node.config_root),
        run_root=str(node.run_root),
        **options,
    )


def by_name(result) -> dict[str, object]:
    return {f.local_path.removeprefix("files/"): f for f in result.files}


def test_running_vm_is_identified_from_its_conf_and_acquired_with_snapshot_state(sshd, node, tmp_path):
    guest = node.start_vm(100, name="web01", uuid=UUID, mac=MAC)
    result = acquirer(sshd, node).acquire(
        "100", tmp_path / "out", case=CASE, preserve="pause", progress=False
    )
    vm = result.manifest.source.vm
    files = by_name(result)

    assert (vm.name, vm.uuid, vm.reference) == ("web01", UUID, "100")
    assert vm.mac_addresses == (MAC, "bc:24:11:5e:a0:02")
    assert vm.details["snapshots"] == ["before-upgrade"]
    assert vm.details["proxmox_config"]["description"] == "Web server moved from ESXi\nsecond line"
    assert files["config/qemu-server/100.conf"].role == "config"
    assert files["config/storage.cfg"].role == "config"
    assert files["memory/vm-100-state-before-upgrade.raw"].role == "memory-state"
    assert files["disks/drive-scsi0/vm-100-disk-0.qcow2"].role == "disk"
    assert any(f.role == "memory" and f.local_path.endswith(".elf") for f in result.files)
    disk = tmp_path / "out" / "files/disks/drive-scsi0/vm-100-disk-0.qcow2"
    assert convert_to_raw(disk, tmp_path / "a.raw")[:65536] == b"A" * 65536
    assert guest.tops()["drive-scsi0"] == str(guest.disk)
    assert guest.status() == "running"
    assert verify(result.path).ok


def test_stopped_vm_is_acquired_from_its_conf_with_the_backing_chain(sshd, node, tmp_path):
    """No QMP socket: the disks the .conf names are planned, qcow2 chains through qemu-img on the host."""
    folder = node.images / "101"
    folder.mkdir(parents=True)
    base = node.images / "900" / "base-900-disk-0.qcow2"
    base.parent.mkdir(parents=True)
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_img(
        "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(folder / "vm-101-disk-0.qcow2")
    )
    (folder / "vm-101-disk-1.raw").write_bytes(b"\0" * 4096)
    node.write_vm(101, name="clone01", uuid=UUID, mac=MAC)
    (folder / "vm-101-state-before-upgrade.raw").unlink()

    result = acquirer(sshd, node).acquire("101", tmp_path / "out", case=CASE, progress=False)
    files = by_name(result)

    assert result.manifest.source.vm.power_state_before == "stopped"
    assert {
        "disks/scsi0/vm-101-disk-0.qcow2",
        "disks/scsi0/base-900-disk-0.qcow2",
        "disks/scsi1/vm-101-disk-1.raw",
    } <= set(files)
    assert any("vm-101-state-before-upgrade.raw" in o.source_path for o in result.omissions)
    assert result.manifest.actions == ()


def test_stopped_vm_refuses_a_preserving_acquisition(sshd, node, tmp_path):
    node.write_vm(102, name="off01", uuid=UUID, mac=MAC)
    with pytest.raises(SourceError, match="not running"):
        acquirer(sshd, node).acquire("102", tmp_path / "out", case=CASE, preserve="pause", progress=False)


def test_unknown_vmid_and_malformed_vmid(sshd, node, tmp_path):
    with pytest.raises(VMNotFoundError):
        acquirer(sshd, node).acquire("555", tmp_path / "a", case=CASE, progress=False)
    with pytest.raises(UsageError, match="VM id"):
        acquirer(sshd, node).acquire("../100", tmp_path / "b", case=CASE, progress=False)


def test_volume_names_that_leave_their_storage_are_omitted(sshd, node, tmp_path):
    conf = (
        "name: evil\nsmbios1: uuid=" + UUID + "\n"
        "scsi0: local:103/../../../../etc/shadow,size=1M\n"
        "scsi1: local:../103/x.qcow2\n"
        "scsi2: ceph:vm-103-disk-0,size=8G\n"
        "scsi3: nowhere:vm-103-disk-0\n"
    )
    node.write_vm(103, name="evil", uuid=UUID, mac=MAC, conf=conf)
    result = acquirer(sshd, node).acquire("103", tmp_path / "out", case=CASE, progress=False)
    reasons = {o.source_path: o.reason for o in result.omissions}

    assert [f.role for f in result.files] == ["config", "config"]
    assert "does not match" in reasons["local:103/../../../../etc/shadow"]
    assert "does not match" in reasons["local:../103/x.qcow2"]
    assert "librbd" in reasons["ceph:vm-103-disk-0"]
    assert "not in storage.cfg" in reasons["nowhere:vm-103-disk-0"]


def test_stopped_vm_whose_backing_files_are_a_fifo_and_outside_the_storages_does_not_block(
    sshd, node, tmp_path
):
    """qemu-img info --backing-chain would open both (and block on the FIFO until its timeout): each
    file is checked before qemu-img sees it, and the ledger's command list proves it never did."""
    import os
    import threading

    folder = node.images / "104"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe.qcow2")
    outside = short_root("pvx")
    os.mkfifo(outside / "trap.qcow2")
    for disk, backing in (
        ("vm-104-disk-0.qcow2", folder / "pipe.qcow2"),
        ("vm-104-disk-1.qcow2", outside / "trap.qcow2"),
    ):
        qemu_img(
            "create", "-q", "-f", "qcow2", "-u", "-b", str(backing), "-F", "qcow2", str(folder / disk), "1M"
        )
    conf = f"name: fifo01\nsmbios1: uuid={UUID}\nscsi0: local:104/vm-104-disk-0.qcow2\nscsi1: local:104/vm-104-disk-1.qcow2\n"
    node.write_vm(104, name="fifo01", uuid=UUID, mac=MAC, conf=conf)
    outcome: list[object] = []
    acq = acquirer(sshd, node, command_timeout=30)
    worker = threading.Thread(
        target=lambda: outcome.append(acq.acquire("104", tmp_path / "out", case=CASE, progress=False)),
        daemon=True,
    )
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the acquisition blocked on a FIFO the chain names"
    (result,) = outcome
    reasons = {o.source_path: o.reason for o in result.omissions}
    assert "is a fifo, not a regular file" in reasons[str(folder / "pipe.qcow2")]
    assert "outside the acquisition roots" in reasons[str(outside / "trap.qcow2")]
    assert {"disks/scsi0/vm-104-disk-0.qcow2", "disks/scsi1/vm-104-disk-1.qcow2"} <= set(by_name(result))
    ledger = [json.loads(line) for line in (tmp_path / "out" / "custody.log.jsonl").read_text().splitlines()]
    sent = [c["command"] for e in ledger if e["action"] == "host-commands" for c in e["details"]["commands"]]
    assert not [c for c in sent if "qemu-img" in c and ("pipe.qcow2" in c or "trap.qcow2" in c)]
    assert not [c for c in sent if "--backing-chain" in c]
    assert verify(tmp_path / "out").ok


# -- the parsers on hostile text ----------------------------------------------------------------


def test_conf_with_a_duplicate_key_or_a_broken_line_is_refused_with_its_line():
    with pytest.raises(SourceError, match="line 2: name appears twice"):
        parse_vm_config("name: a\nname: b\n", "100")
    with pytest.raises(SourceError, match="line 1: not a 'key: value' line"):
        parse_vm_config("this is not a config\n", "100")
    with pytest.raises(SourceError, match="malformed section header"):
        parse_vm_config("name: a\n[../../x]\n", "100")


def test_conf_larger_than_pmxcfs_allows_is_refused():
    with pytest.raises(SourceError, match="larger than"):
        parse_vm_config("name: a\n" + "#" * (1 << 20), "100")


def test_storage_paths_resolve_for_dir_lvmthin_zfs_and_mapped_rbd():
    storages = parse_storage_config(
        "dir: local\n\tpath /var/lib/vz\n\n"
        "lvmthin: local-lvm\n\tvgname pve\n\tthinpool data\n\n"
        "zfspool: local-zfs\n\tpool rpool/data\n\n"
        "rbd: ceph\n\tpool vms\n\tkrbd 1\n"
    )
    assert (
        resolve_volume("local:100/vm-100-disk-0.qcow2", storages).path
        == "/var/lib/vz/images/100/vm-100-disk-0.qcow2"
    )
    assert resolve_volume("local:base-9-disk-0.qcow2/100/vm-100-disk-0.qcow2", storages).path == (
        "/var/lib/vz/images/100/vm-100-disk-0.qcow2"
    )
    assert resolve_volume("local-lvm:vm-100-disk-0", storages).path == "/dev/pve/vm-100-disk-0"
    assert resolve_volume("local-zfs:vm-100-disk-0", storages).path == "/dev/zvol/rpool/data/vm-100-disk-0"
    assert resolve_volume("ceph:vm-100-disk-0", storages).path == "/dev/rbd/vms/vm-100-disk-0"
    assert resolve_volume("local-lvm:../../etc/shadow", storages).path is None


def test_docs_proxmox_example_runs_and_prints_what_it_says(sshd, node, capsys):
    text = (Path(__file__).resolve().parents[2] / "docs" / "qemu.md").read_text()
    recipe = dict((name, body) for name, _lang, body in RECIPE.findall(text))["proxmox-python"]
    guest = node.start_vm(100, name="web01", uuid=UUID, mac=MAC)
    namespace = {
        "HOST": sshd.host,
        "PORT": sshd.port,
        "KEY": str(sshd.client_key),
        "KNOWN_HOSTS": str(sshd.known_hosts),
        "CONFIG_ROOT": str(node.config_root),
        "RUN_ROOT": str(node.run_root),
        "OUT": str(node.root / "out"),
    }
    exec(compile(recipe, "docs/qemu.md", "exec"), namespace)
    promised = recipe.split("# ", 1)[1].split("\n", 1)[0].strip()
    assert capsys.readouterr().out.strip() == promised
    assert any(f.role == "memory-state" and f.local_path.endswith(".qevm") for f in namespace["result"].files)
    assert guest.status() == "running"


def test_cli_acquire_proxmox_of_a_stopped_vm(sshd, node, tmp_path, capsys):
    node.write_vm(104, name="cold01", uuid=UUID, mac=MAC)
    (node.images / "104").mkdir(parents=True, exist_ok=True)
    qemu_img("create", "-q", "-f", "qcow2", str(node.images / "104" / "vm-104-disk-0.qcow2"), "1M")
    (node.images / "104" / "vm-104-disk-1.raw").write_bytes(b"\1" * 4096)
    ssh = ["--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user]
    ssh += ["--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts)]
    roots = ["--config-root", str(node.config_root), "--run-root", str(node.run_root)]
    options = ["--vmid", "104", "--out", str(tmp_path / "out"), "--case", "C-17", "--preserve", "none"]
    status = main(["acquire", "proxmox", *ssh, *roots, *options, "--no-progress", "--json"])
    manifest = json.loads(capsys.readouterr().out)
    assert status == 0
    assert manifest["source"]["kind"] == "proxmox" and manifest["source"]["vm"]["name"] == "cold01"
    assert {f["local_path"] for f in manifest["files"]} >= {
        "files/config/qemu-server/104.conf",
        "files/disks/scsi0/vm-104-disk-0.qcow2",
        "files/disks/scsi1/vm-104-disk-1.raw",
    }
    assert verify(tmp_path / "out").ok
