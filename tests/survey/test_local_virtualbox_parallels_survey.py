"""The local survey recognises VirtualBox VM folders (.vbox registry: name, UUID, OS, NICs,
snapshots, the attached disk's chain) and Parallels .pvm bundles (config.pvs, .hdd disk bundles),
and claims their files; hostile registries are reported, not fatal."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.acquire.test_local_virtualbox_parallels import (
    MACHINE,
    SNAPSHOT,
    make_parallels_vm,
    make_virtualbox_vm,
)
from vmforensics.errors import ImageFormatError
from vmforensics.hypervisors.local.survey import survey_local
from vmforensics.hypervisors.local.virtualbox import parse_vbox


def test_survey_describes_a_virtualbox_vm_and_a_parallels_bundle(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    vm, child, _ = make_virtualbox_vm(root)
    pvm = make_parallels_vm(root)
    (root / "orphans").mkdir()
    (root / "orphans" / "old.vdi").write_bytes(b"not claimed by any VM")
    report = survey_local(root)
    by_vendor = {record.details["vendor"]: record for record in report.vms}
    vbox = by_vendor["virtualbox"]
    assert (vbox.name, vbox.uuid, vbox.guest_os) == ("win10", str(MACHINE), "Windows10_64")
    assert vbox.macs == ("08:00:27:d1:e2:f3",)  # the disabled adapter is left out
    assert [(s.name, s.reference, s.memory, s.description) for s in vbox.snapshots] == [
        ("before malware", str(SNAPSHOT), True, "clean")
    ]
    (disk,) = vbox.disks
    assert disk.error is None and (disk.format, disk.chain_depth) == ("vdi/differencing", 2)
    assert disk.path == str(vm / "Snapshots" / f"{{{child}}}.vdi")
    assert str(vm / "win10.vdi") in disk.files
    parallels = by_vendor["parallels"]
    assert (parallels.name, parallels.uuid) == ("Windows 11", "4b1f7d2c-0000-4000-8000-00000000000a")
    assert parallels.macs == ("00:1c:42:aa:bb:cc",)
    (hdd,) = parallels.disks
    assert (hdd.format, hdd.chain_depth, hdd.error) == ("parallels/bundle", 2, None)
    unclaimed = {Path(f.path).name for f in report.unclaimed_files}
    assert unclaimed == {"old.vdi"}  # every file of both VMs is claimed
    assert pvm.exists()


def test_survey_reports_a_hostile_vbox_registry_instead_of_failing(tmp_path: Path) -> None:
    vm = tmp_path / "store" / "evil"
    vm.mkdir(parents=True)
    (vm / "evil.vbox").write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><VirtualBox>&a;</VirtualBox>')
    (record,) = survey_local(tmp_path / "store").vms
    assert record.details["vendor"] == "virtualbox"
    assert "document type" in record.details["error"]


@settings(max_examples=200, deadline=2000)
@given(
    body=st.text(
        alphabet="<>/=\"' {}-0123456789abcdefMachineHardDiskSnapshotAdapteruidlocationMACAddress",
        max_size=300,
    )
)
def test_arbitrary_registry_content_raises_only_image_format_errors(body: str) -> None:
    raw = f'<?xml version="1.0"?><VirtualBox><Machine name="m">{body}</Machine></VirtualBox>'.encode()
    try:
        machine = parse_vbox(raw, path="fuzz.vbox")
    except ImageFormatError as exc:
        assert exc.reason
    else:
        assert all(n.mac is None or len(n.mac) == 17 for n in machine.nics)
