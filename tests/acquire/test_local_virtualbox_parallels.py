"""LocalAcquirer on a VirtualBox VM folder and a Parallels .pvm bundle: every file with the role it
plays (config, its backups, logs, saved states, disks and their parts), and the disks' chains."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.images.parallels_builders import NULL, descriptor
from tests.images.vdi_builders import build_vdi, header_of
from vmforensics import CaseInfo, LocalAcquirer
from vmforensics.images import parallels_layout as p
from vmforensics.images import vdi_layout as v

CASE = CaseInfo(case_id="T-19", examiner="Test Examiner")
MACHINE = uuid.UUID("8a6f1c1e-0000-4000-8000-000000000001")
SNAPSHOT = uuid.UUID("8a6f1c1e-0000-4000-8000-000000000002")
MiB = 1 << 20


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def virtualbox_vm(tmp_path: Path) -> tuple[Path, uuid.UUID, uuid.UUID]:
    return make_virtualbox_vm(tmp_path)


def make_virtualbox_vm(tmp_path: Path) -> tuple[Path, uuid.UUID, uuid.UUID]:
    """A VirtualBox 7 VM folder: .vbox and .vbox-prev, Logs/, a base disk, a snapshot's
    differencing disk and saved state in Snapshots/, a NIC, the snapshot's disk attached."""
    vm = tmp_path / "VirtualBox VMs" / "win10"
    (vm / "Logs").mkdir(parents=True)
    (vm / "Snapshots").mkdir()
    qemu_img("create", "-f", "vdi", vm / "win10.vdi", "8M")
    base = header_of(vm / "win10.vdi")
    child, state = uuid.uuid4(), uuid.uuid4()
    build_vdi(vm / "Snapshots" / f"{{{child}}}.vdi", base.disk_size, {0: b"changed" * 512},
              image_type=v.ImageType.DIFF, uuid_create=child, uuid_linkage=base.uuid_create,
              uuid_parent_modify=base.uuid_modify)  # fmt: skip
    registry = (
        '<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
        f'<Machine uuid="{{{MACHINE}}}" name="win10" OSType="Windows10_64" snapshotFolder="Snapshots" '
        f'currentSnapshot="{{{SNAPSHOT}}}"><MediaRegistry><HardDisks>'
        f'<HardDisk uuid="{{{base.uuid_create}}}" location="win10.vdi" format="VDI">'
        f'<HardDisk uuid="{{{child}}}" location="Snapshots/{{{child}}}.vdi" format="VDI"/></HardDisk>'
        "</HardDisks></MediaRegistry>"
        f'<Snapshot uuid="{{{SNAPSHOT}}}" name="before malware" timeStamp="2026-11-30T10:00:00Z" '
        f'stateFile="Snapshots/{{{state}}}.sav"><Description>clean</Description></Snapshot>'
        '<Hardware><Network><Adapter slot="0" enabled="true" MACAddress="080027D1E2F3" type="82540EM"><NAT/>'
        '</Adapter><Adapter slot="1" enabled="false" MACAddress="080027000001"/></Network></Hardware>'
        '<StorageControllers><StorageController name="SATA" type="AHCI"><AttachedDevice type="HardDisk" '
        f'port="0" device="0"><Image uuid="{{{child}}}"/></AttachedDevice></StorageController>'
        "</StorageControllers></Machine></VirtualBox>\n"
    )
    (vm / "win10.vbox").write_text(registry)
    (vm / "win10.vbox-prev").write_text(registry)
    (vm / "win10.nvram").write_bytes(bytes(4096))
    (vm / "Logs" / "VBox.log").write_text("00:00:00.000000 VirtualBox VM 7.0.14 r161095 linux.amd64\n")
    (vm / "Logs" / "VBox.log.1").write_text("00:00:00.000000 VirtualBox VM 7.0.14 r161095 linux.amd64\n")
    (vm / "Snapshots" / f"{{{state}}}.sav").write_bytes(b"\x7fVirtualBox SavedState V2.0\n" + bytes(4096))
    return vm, child, state


def test_virtualbox_folder_files_are_acquired_with_their_roles(virtualbox_vm, tmp_path: Path) -> None:
    vm, child, state = virtualbox_vm
    result = LocalAcquirer().acquire(vm, tmp_path / "out", case=CASE, progress=False)
    roles = {f.local_path.split("/win10/", 1)[1]: f.role for f in result.manifest.files}
    vm_identity = result.manifest.source.vm
    assert (vm_identity.name, vm_identity.uuid, vm_identity.mac_addresses) == (
        "win10",
        str(MACHINE),
        ("08:00:27:d1:e2:f3",),
    )
    assert vm_identity.details["OSType (configured)"] == "Windows10_64"
    assert roles == {
        "win10.vbox": "config",
        "win10.vbox-prev": "config-backup",
        "win10.nvram": "nvram",
        "win10.vdi": "disk",
        f"Snapshots/{{{child}}}.vdi": "disk",
        f"Snapshots/{{{state}}}.sav": "saved-state",
        "Logs/VBox.log": "log",
        "Logs/VBox.log.1": "log",
    }


@pytest.fixture
def parallels_vm(tmp_path: Path) -> Path:
    return make_parallels_vm(tmp_path)


def make_parallels_vm(tmp_path: Path) -> Path:
    """A Parallels Desktop .pvm bundle: config.pvs, a .hdd disk bundle with a snapshot, a log."""
    pvm = tmp_path / "Windows 11.pvm"
    hdd = pvm / "harddisk.hdd"
    hdd.mkdir(parents=True)
    snap = "{11111111-2222-4333-8444-555555555555}"
    parts = {g: f"harddisk.hdd.0.{g}.hds" for g in (p.DEFAULT_TOP_GUID, snap)}
    for part in parts.values():
        qemu_img("create", "-f", "parallels", hdd / part, "8M")
    images = [(g, "Compressed", name) for g, name in parts.items()]
    text = descriptor(
        [(0, 8 * MiB // 512, images)], [(p.DEFAULT_TOP_GUID, NULL), (snap, p.DEFAULT_TOP_GUID)], top=snap
    )
    (hdd / p.DESCRIPTOR_NAME).write_text(text)
    (pvm / "config.pvs").write_text(
        '<?xml version="1.0"?>\n<ParallelsVirtualMachine><Identification><VmUuid>'
        "{4b1f7d2c-0000-4000-8000-00000000000a}</VmUuid><VmName>Windows 11</VmName></Identification>"
        "<Hardware><NetworkAdapter><MAC>001C42AABBCC</MAC></NetworkAdapter></Hardware></ParallelsVirtualMachine>\n"
    )
    (pvm / "config.pvs.backup").write_text('<?xml version="1.0"?><ParallelsVirtualMachine/>\n')
    (pvm / "parallels.log").write_text("started\n")
    (pvm / "NVRAM.dat").write_bytes(bytes(1024))
    return pvm


def test_parallels_bundle_files_are_acquired_with_their_roles(parallels_vm: Path, tmp_path: Path) -> None:
    result = LocalAcquirer().acquire(parallels_vm, tmp_path / "out", case=CASE, progress=False)
    roles = {f.local_path.split(".pvm/", 1)[1]: f.role for f in result.manifest.files}
    assert roles == {
        "config.pvs": "config",
        "config.pvs.backup": "config-backup",
        "parallels.log": "log",
        "NVRAM.dat": "nvram",
        "harddisk.hdd/DiskDescriptor.xml": "disk-descriptor",
        f"harddisk.hdd/harddisk.hdd.0.{p.DEFAULT_TOP_GUID}.hds": "disk-extent",
        "harddisk.hdd/harddisk.hdd.0.{11111111-2222-4333-8444-555555555555}.hds": "disk-extent",
    }
    assert result.manifest.omissions == ()  # the descriptor's chain opened through the readers


def test_virtualbox_snapshot_disk_chain_reaches_its_base_without_an_omission(
    virtualbox_vm, tmp_path: Path
) -> None:
    vm, _, _ = virtualbox_vm
    result = LocalAcquirer().acquire(vm, tmp_path / "out", case=CASE, progress=False)
    assert result.manifest.omissions == ()
