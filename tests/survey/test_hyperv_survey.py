r"""survey_hyperv against the WS-Management test endpoint and a real Samba serving the host's C$.

What is real: pywinrm with NTLM and WinRM message encryption, SMB (smbd) listing the served tree,
the VHDX files (qemu-img) and differencing children on it, their modification times. What is a
fake: the Hyper-V side of the reviewed scripts (tests/survey/hyperv_survey_lab.py answers them by
their SHA-256, as tests/acquire/hyperv_lab.py does for the acquirer) — no Windows host can run here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acquire.hyperv_lab import BASE, CHILD, DISK_SIZE, MAC, OTHER_VM_ID, SNAP_ID, VM_ID, build_lab
from tests.acquire.hyperv_vhdx import write_differencing
from tests.acquire.wsman_server import WSManServer
from tests.survey.hyperv_survey_lab import HOME, SurveyHyperV
from tests.transport.smbd import SmbServer
from vmforensics import cli
from vmforensics.hypervisors.hyperv.survey import READING_SCRIPTS, survey_hyperv
from vmforensics.survey.models import SurveyReport

#: Cmdlet verbs that change a Hyper-V host or its files; no survey script may contain one.
CHANGING = r"\b(Set|New|Remove|Start|Stop|Save|Suspend|Resume|Restart|Checkpoint|Restore|Export|Import|Move|Rename|Disconnect|Connect|Add|Merge|Resize|Optimize|Mount|Dismount|Copy|Update|Enable|Disable|Clear|Out-File|Write)-\w+"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    facts = build_lab(tmp_path / "host")
    with SmbServer({"C$": facts["drive"]}, force_user="root") as smb:
        facts["smb"] = smb
        yield facts


@pytest.fixture
def host(lab: dict[str, Any]) -> SurveyHyperV:
    return SurveyHyperV(lab["drive"], admins={lab["smb"].user})


@pytest.fixture
def winrm(lab: dict[str, Any], host: SurveyHyperV, tmp_path: Path) -> Iterator[WSManServer]:
    smb = lab["smb"]
    with WSManServer(host, {smb.user: smb.password}, user_file=str(tmp_path / "ntlm-users")) as server:
        yield server


def survey(lab: dict[str, Any], winrm: WSManServer, **options: Any) -> SurveyReport:
    smb = lab["smb"]
    return survey_hyperv(
        "127.0.0.1",
        user=smb.user,
        password=smb.password,
        winrm_https=False,
        winrm_port=winrm.port,
        smb_port=smb.port,
        **options,
    )


def tree(drive: Path) -> dict[str, tuple[int, int, str]]:
    """Every file on the served drive: size, modification time, SHA-256 (the read-only oracle)."""
    return {
        str(p.relative_to(drive)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(drive.rglob("*"))
        if p.is_file()
    }


def age(paths: list[Path], days: float) -> None:
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    for path in paths:
        os.utime(path, (stamp, stamp))


def test_clean_host_inventory_without_findings_and_nothing_changed(lab, host, winrm) -> None:
    app = host.add_vm("app03", mac="00155D0A0B10", chain=2)
    before = tree(lab["drive"])

    report = survey(lab, winrm)

    assert report.findings == (), report.findings
    assert report.unclaimed_files == ()
    assert tree(lab["drive"]) == before
    assert [name for name, _, _ in host.calls] == ["host", "clock", "survey-inventory"]
    assert {r["script"] for r in report.source.connection["scripts_run"]} == set(READING_SCRIPTS)
    for script in READING_SCRIPTS.values():
        assert not re.search(CHANGING, script.body), script.name
    assert host.unknown_scripts == []
    assert all(r["encrypted"] for r in winrm.requests if r["action"] in ("create", "command", "receive"))

    vms = {vm.name: vm for vm in report.vms}
    assert set(vms) == {"web01", "db02", "app03"}
    web = vms["web01"]
    assert web.uuid == VM_ID and web.power_state == "Running" and web.host == "HV01"
    assert web.macs == ("00:15:5d:0a:0b:0c",) and web.nics[0].address_type == "static"
    assert (
        web.nics[0].network == "External"
        and web.tools_status == "integration services: Up to date, 10.0.20348"
    )
    (disk,) = web.disks
    assert disk.path == CHILD and disk.files == (CHILD, BASE) and disk.chain_depth == 2
    assert disk.allocated == sum(host.local(p).stat().st_size for p in (CHILD, BASE))
    (snapshot,) = web.snapshots
    assert snapshot.reference == SNAP_ID and snapshot.memory is True
    assert snapshot.size == sum(p.stat().st_size for p in host.local(HOME + r"\web01\Snapshots").iterdir())
    assert web.last_activity_basis == "Running at the time of the survey"
    assert web.last_power_on is not None
    db = vms["db02"]
    assert db.power_state == "Off" and db.last_activity_basis.startswith(
        rf"the modification time of C:\Hyper-V\web01\Virtual Machines\{OTHER_VM_ID}"
    )
    assert vms["app03"].disks[0].chain_depth == 2 and vms["app03"].nics[0].address_type == "dynamic"
    assert vms["app03"].uuid == app["id"]
    assert report.clock is not None and abs(report.clock.skew_seconds) < 5


def test_duplicate_mac_across_running_vms(lab, host, winrm) -> None:
    host.add_vm("clone01", mac=MAC, state="Running")

    found = survey(lab, winrm).findings_of("duplicate-mac")

    assert sorted(f.subject for f in found) == ["clone01", "web01"]
    assert all(f.severity == "high" and f.facts["mac"] == "00:15:5d:0a:0b:0c" for f in found)


def test_static_mac_outside_the_hyperv_range(lab, host, winrm) -> None:
    host.add_vm("odd01", mac="02AB00000001", dynamic=False)
    host.add_vm("even01", mac="00155D0A0B20", dynamic=False)

    (finding,) = survey(lab, winrm).findings_of("mac-outside-vendor-range")

    assert finding.subject == "odd01" and finding.facts["mac"] == "02:ab:00:00:00:01"
    assert "set by hand (static) outside hyperv's manual range 00:15:5D:00:00:00-00:15:5D:FF:FF:FF" in (
        finding.explanation
    )


def test_dormant_vm_dated_by_its_files_over_smb(lab, host, winrm) -> None:
    old = host.add_vm("old01", mac="00155D0A0B30")
    host.add_vm("new01", mac="00155D0A0B31")
    age(host.files_of(old), 200)

    report = survey(lab, winrm)

    (finding,) = report.findings_of("dormant-vm")
    assert finding.subject == "old01" and "for 200 days" in finding.explanation
    vm = next(v for v in report.vms if v.name == "old01")
    assert vm.last_activity_basis.startswith(f"the modification time of {HOME}\\old01\\")
    assert vm.last_activity_basis.endswith("(over SMB)")


def test_snapshot_sprawl_old_deep_and_long_chains(lab, host, winrm) -> None:
    now = dt.datetime.now(dt.UTC)
    host.add_vm("aged01", mac="00155D0A0B40", checkpoints=[("golden", now - dt.timedelta(days=30))])
    host.add_vm(
        "deep01", mac="00155D0A0B41", checkpoints=[(f"s{n}", now - dt.timedelta(hours=n)) for n in range(4)]
    )
    host.add_vm("chain01", mac="00155D0A0B42", chain=5)
    host.add_vm("fine01", mac="00155D0A0B43", chain=2, checkpoints=[("today", now)])

    report = survey(lab, winrm)

    found = {f.subject: f for f in report.findings_of("snapshot-sprawl")}
    assert set(found) == {"aged01", "deep01", "chain01"}
    assert found["aged01"].facts["old"] == ["golden"] and "30 days" in found["aged01"].explanation
    assert found["deep01"].facts["depth"] == 4 and found["chain01"].facts["depth"] == 4
    deep = next(v for v in report.vms if v.name == "deep01")
    assert [s.depth for s in deep.snapshots] == [1, 2, 3, 4] and all(
        s.memory is False for s in deep.snapshots
    )


def test_orphaned_vm_folders_disks_and_checkpoint_files(lab, host, winrm) -> None:
    ghost = host.add_vm("ghost01", mac="00155D0A0B50")
    del host.vms[ghost["id"]]  # removed from Hyper-V Manager; its folder stays on C:
    stray = HOME + r"\web01\Virtual Hard Disks\web01_5C1D0000-0000-4000-8000-000000000001.avhdx"
    host.local(stray).write_bytes(os.urandom(4096))
    gone = HOME + r"\web01\Snapshots\5C1D0000-0000-4000-8000-0000000000AA.VMRS"
    host.local(gone).write_bytes(os.urandom(8192))

    report = survey(lab, winrm)

    files = {f.path: f for f in report.unclaimed_files}
    ghost_files = {"\\".join([HOME, *p.relative_to(host.local(HOME)).parts]) for p in host.files_of(ghost)}
    assert set(files) == {stray, gone, *ghost_files}
    assert files[stray].reason == "a virtual hard disk in no registered VM's disk chain or checkpoint"
    assert "no registered VM or checkpoint" in files[gone].reason
    subjects = {f.subject for f in report.findings_of("orphaned-files")}
    assert subjects == {
        "C:/Hyper-V/web01/Virtual Hard Disks",
        "C:/Hyper-V/web01/Snapshots",
        "C:/Hyper-V/ghost01/Virtual Hard Disks",
        "C:/Hyper-V/ghost01/Virtual Machines",
    }


def test_clock_skew_of_the_host(lab, host, winrm) -> None:
    host.clock_skew = -400.0

    (finding,) = survey(lab, winrm).findings_of("clock-skew")

    assert finding.subject == "127.0.0.1" and 395 < -finding.facts["skew_seconds"] < 405
    assert "behind the examiner's" in finding.explanation


def test_without_smb_no_orphans_and_a_note(lab, host, winrm) -> None:
    host.local(HOME + r"\web01\Snapshots\5C1D0000-0000-4000-8000-0000000000AB.VMRS").write_bytes(b"x")

    report = survey(lab, winrm, files=False)

    assert report.unclaimed_files == () and "files" not in report.source.connection
    assert any("files=False" in note for note in report.notes)
    assert next(v for v in report.vms if v.name == "db02").last_activity is None


def test_cli_survey_hyperv_json(lab, host, winrm, monkeypatch, capsys) -> None:
    smb = lab["smb"]
    monkeypatch.setenv("VMFORENSICS_PASSWORD", smb.password)
    args = ["survey", "hyperv", "--host", "127.0.0.1", "--user", smb.user, "--http"]
    args += ["--winrm-port", str(winrm.port), "--smb-port", str(smb.port)]

    assert cli.main([*args, "--json"]) == 0

    report = SurveyReport.from_json(capsys.readouterr().out)
    assert report.source.kind == "hyperv" and {vm.name for vm in report.vms} == {"web01", "db02"}
    monkeypatch.setenv("VMFORENSICS_PASSWORD", "wrong")
    assert cli.main(args) == 1


def test_parent_disk_outside_the_vm_roots_is_reported_not_followed(
    lab, host, winrm, monkeypatch, capsys
) -> None:
    """A .avhdx whose ParentPath is in a folder Hyper-V names for no VM: the survey reports the
    refusal with the exact ParentPath and neither counts the parent nor lists its folder over SMB
    (a stray VHD beside it would otherwise be reported unclaimed); --allow-root follows it."""
    vm = host.add_vm("trap01", mac="00155D0A0B60")
    outside = r"C:\Elsewhere\secret.vhdx"
    host.local(r"C:\Elsewhere").mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(host.local(outside)), "1M"], check=True)
    host.local(r"C:\Elsewhere\stray.vhdx").write_bytes(os.urandom(4096))
    host.vhd_parent[outside.lower()] = None
    child = HOME + r"\trap01\Virtual Hard Disks\trap01_1.avhdx"
    write_differencing(
        host.local(child), size=DISK_SIZE, parent=host.local(outside), parent_absolute_path=outside
    )
    host.vhd_parent[child.lower()] = outside
    vm["drives"] = [child]

    report = survey(lab, winrm)

    (disk,) = next(v for v in report.vms if v.name == "trap01").disks
    assert disk.files == (child,) and disk.chain_depth == 1
    assert disk.allocated == host.local(child).stat().st_size
    assert "outside" in disk.error and f"named {outside!r} as the parent of {child}; not read" in disk.error
    assert not [f for f in report.unclaimed_files if "Elsewhere" in f.path]

    allowed = survey(lab, winrm, allowed_roots=[r"C:\Elsewhere"])

    (disk,) = next(v for v in allowed.vms if v.name == "trap01").disks
    assert disk.files == (child, outside) and disk.chain_depth == 2 and disk.error is None
    assert [f.path for f in allowed.unclaimed_files if "Elsewhere" in f.path] == [r"C:\Elsewhere\stray.vhdx"]

    smb = lab["smb"]  # the same from the command line
    monkeypatch.setenv("VMFORENSICS_PASSWORD", smb.password)
    args = ["survey", "hyperv", "--host", "127.0.0.1", "--user", smb.user, "--http", "--json"]
    args += ["--winrm-port", str(winrm.port), "--smb-port", str(smb.port), "--allow-root", r"C:\Elsewhere"]
    assert cli.main(args) == 0
    from_cli = SurveyReport.from_json(capsys.readouterr().out)
    (disk,) = next(v for v in from_cli.vms if v.name == "trap01").disks
    assert disk.files == (child, outside) and disk.error is None
