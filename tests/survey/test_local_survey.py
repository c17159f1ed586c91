"""survey_local on datastores built from the demo VM: the inventory against independent readings
(qemu-img for chains, the files themselves), and each finding built and shown absent when clean."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

from tests.survey.estate import NOW, add_vm, set_vmx, take_snapshots
from vmforensics.hypervisors.local.survey import survey_local
from vmforensics.survey.findings import with_findings
from vmforensics.survey.models import SurveyReport, Thresholds

DAY = dt.timedelta(days=1)


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    """A clean estate: three powered-off VMs, distinct in-range MACs, run yesterday, one fresh snapshot."""
    ds = tmp_path / "datastore1"
    staging = tmp_path / "staging"
    add_vm(ds, "web01", mac="00:50:56:a1:b2:c3", staging=staging)
    add_vm(ds, "db01", mac="00:50:56:3f:00:01", address_type="static", staging=staging)
    app = add_vm(ds, "app01", mac="00:0c:29:11:22:33", address_type="generated", staging=staging)
    take_snapshots(app, [NOW - dt.timedelta(hours=1)], memory=True)
    return ds


def kinds(report: SurveyReport) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in report.findings:
        found.setdefault(f.kind, set()).add(f.subject)
    return found


def qemu_chain_depth(path: str) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return len(json.loads(out))


def test_clean_estate_inventory_and_no_findings(datastore: Path) -> None:
    report = survey_local(datastore)

    assert report.findings == () and report.unclaimed_files == ()
    vms = {vm.name: vm for vm in report.vms}
    assert set(vms) == {"web01", "db01", "app01"}
    web = vms["web01"]
    assert web.macs == ("00:50:56:a1:b2:c3",) and web.nics[0].address_type == "vpx"
    assert web.power_state.startswith("off") and web.guest_os == "windows2019srv-64"
    assert web.uuid and web.config_path.endswith("web01/web01.vmx")
    assert web.last_activity.startswith((NOW - DAY).strftime("%Y-%m-%d"))
    for vm in report.vms:
        for disk in vm.disks:
            assert disk.chain_depth == qemu_chain_depth(disk.path)
            assert (
                disk.capacity
                == json.loads(
                    subprocess.run(
                        ["qemu-img", "info", "-U", "--output=json", disk.path],
                        capture_output=True,
                        check=True,
                    ).stdout
                )["virtual-size"]
            )
    app = vms["app01"]
    assert app.disks[0].chain_depth == 2 and app.disks[0].path.endswith("app01-000001.vmdk")
    (snapshot,) = app.snapshots
    assert snapshot.name == "snap-1" and snapshot.memory is True and snapshot.depth == 1
    created = dt.datetime.fromisoformat(snapshot.created.replace("Z", "+00:00"))
    assert abs(created - (NOW - dt.timedelta(hours=1))) < dt.timedelta(seconds=1)


def test_views_round_trip_and_select(datastore: Path) -> None:
    report = survey_local(datastore)

    assert SurveyReport.from_json(report.to_json()) == report
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert {r["name"] for r in rows} == {"web01", "db01", "app01"}
    assert next(r for r in rows if r["name"] == "app01")["max_chain_depth"] == "2"
    html = report._repr_html_()
    assert "<table" in html and "vmfSort" in html and "app01" in html
    assert [vm.name for vm in report.select(["db01"])] == ["db01"]
    assert {vm.name for vm in report.select(where=lambda vm: bool(vm.snapshots))} == {"app01"}


def test_vm_names_are_data_in_html(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    folder = add_vm(ds, "x", mac="00:50:56:a1:00:01", staging=tmp_path / "s")
    set_vmx(folder, {"displayName": "<script>alert(1)</script>"})

    html = survey_local(ds)._repr_html_()

    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_duplicate_mac_across_vms(datastore: Path) -> None:
    set_vmx(
        datastore / "db01",
        {"ethernet0.addressType": "vpx", "ethernet0.generatedAddress": "00:50:56:A1:B2:C3"},
    )

    found = survey_local(datastore).findings_of("duplicate-mac")

    assert {f.subject for f in found} == {"web01", "db01"}
    assert all(f.severity == "warning" and "00:50:56:a1:b2:c3" in f.explanation for f in found)


def test_duplicate_mac_on_two_running_vms_is_a_live_conflict(datastore: Path) -> None:
    set_vmx(
        datastore / "db01",
        {"ethernet0.addressType": "vpx", "ethernet0.generatedAddress": "00:50:56:a1:b2:c3"},
    )
    for name in ("web01", "db01"):
        (datastore / name / f"{name}.vmx.lck").mkdir()

    found = survey_local(datastore).findings_of("duplicate-mac")

    assert {f.severity for f in found} == {"high"} and "conflict on the network" in found[0].explanation


def test_manual_mac_outside_vmware_static_range(datastore: Path) -> None:
    set_vmx(datastore / "db01", {"ethernet0.address": "00:50:56:40:00:01"})
    set_vmx(
        datastore / "web01",
        {"ethernet0.addressType": "generated", "ethernet0.generatedAddress": "00:1b:21:aa:bb:cc"},
    )

    found = {f.subject: f for f in survey_local(datastore).findings_of("mac-outside-vendor-range")}

    assert set(found) == {"db01", "web01"}
    assert "00:50:56:00:00:00-00:50:56:3F:FF:FF" in found["db01"].explanation
    assert "no hypervisor's range" in found["web01"].explanation


def test_dormant_vm_powered_off_longer_than_threshold(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    add_vm(ds, "zombie", mac="00:50:56:a1:00:01", last_run=NOW - 200 * DAY, staging=tmp_path / "s")
    add_vm(ds, "recent", mac="00:50:56:a1:00:02", last_run=NOW - 10 * DAY, staging=tmp_path / "s")
    running = add_vm(ds, "busy", mac="00:50:56:a1:00:03", last_run=NOW - 300 * DAY, staging=tmp_path / "s")
    (running / "busy.vmx.lck").mkdir()

    report = survey_local(ds, thresholds=Thresholds(dormant_days=90))
    (finding,) = report.findings_of("dormant-vm")
    assert finding.subject == "zombie" and "200 days" in finding.explanation
    assert "vmware.log" in finding.explanation

    since = (NOW - 5 * DAY).date().isoformat()
    stricter = survey_local(ds, thresholds=Thresholds(dormant_days=90, active_since=since))
    assert {f.subject for f in stricter.findings_of("dormant-vm")} == {"zombie", "recent"}


def test_orphaned_files_no_vm_uses(datastore: Path) -> None:
    old = datastore / "old-vm"
    old.mkdir()
    shutil.copy(datastore / "web01" / "web01.vmdk", old / "old-vm.vmdk")
    (old / "vmware.log").write_text("2025-01-01T00:00:00.000Z In(05) vmx - gone\n")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-b", "web01.vmdk", "-F", "vmdk", "web01-000009.vmdk"],
        cwd=datastore / "web01",
        check=True,
    )
    (datastore / "web01" / "web01-Snapshot7.vmsn").write_bytes(b"\xd2\xbe\xd2\xbe")

    report = survey_local(datastore)

    assert {f.path for f in report.unclaimed_files} == {
        "old-vm/old-vm.vmdk",
        "old-vm/vmware.log",
        "web01/web01-000009.vmdk",
        "web01/web01-Snapshot7.vmsn",
    }
    assert {f.subject for f in report.findings_of("orphaned-files")} == {"old-vm", "web01"}
    assert all(vm.name != "old-vm" for vm in report.vms)


def test_snapshot_sprawl_deep_chain_and_old_snapshot(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    deep = add_vm(ds, "deep", mac="00:50:56:a1:00:01", staging=tmp_path / "s")
    take_snapshots(deep, [NOW - dt.timedelta(hours=h) for h in (5, 4, 3, 2)])
    old = add_vm(ds, "old", mac="00:50:56:a1:00:02", staging=tmp_path / "s")
    take_snapshots(old, [NOW - 10 * DAY])

    report = survey_local(ds, thresholds=Thresholds(snapshot_age_days=3, snapshot_depth=3))

    found = {f.subject: f for f in report.findings_of("snapshot-sprawl")}
    assert set(found) == {"deep", "old"}
    assert "4 deep" in found["deep"].explanation and found["deep"].facts["old"] == []
    assert "'snap-1', 10 days" in found["old"].explanation
    vm = next(v for v in report.vms if v.name == "deep")
    assert vm.disks[0].chain_depth == qemu_chain_depth(vm.disks[0].path) == 5
    assert [s.depth for s in vm.snapshots] == [1, 2, 3, 4]


def test_clock_skew_beyond_threshold(datastore: Path) -> None:
    report = survey_local(datastore, thresholds=Thresholds(clock_skew_seconds=30))
    assert report.findings_of("clock-skew") == ()  # the examiner's own clock: no skew

    skewed = attrs.evolve(report.clock, skew_seconds=-412.5, source_utc=report.clock.examiner_utc)
    (finding,) = with_findings(attrs.evolve(report, clock=skewed)).findings_of("clock-skew")
    assert "412.5 s behind" in finding.explanation
