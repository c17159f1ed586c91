"""HyperVAcquirer against a real Samba and a WS-Management endpoint written for the tests.

What is real: SMB (Samba smbd on 127.0.0.1 serving a Hyper-V host's C: drive as ``C$``), the disk
images (a dynamic VHDX made by qemu-img holding ext4, a differencing .avhdx whose sectors are the
later ext4 state), pywinrm and its NTLM authentication with WinRM message encryption (pyspnego's
acceptor on the server side), TLS with a test CA, and the evidence checks (verify, open_image,
libvhdi as the independent reader).

What cannot be real: no Windows host and no PowerShell can run here, so tests/acquire/wsman_server.py
is a WS-Management endpoint speaking the Windows Remote Shell protocol (Create, Command, Receive,
Signal, Delete), and tests/acquire/hyperv_lab.py answers the library's reviewed scripts — known by
their SHA-256 — with the objects those scripts build from Hyper-V's documented cmdlet output,
performing the side effects on the Samba-served tree (a checkpoint writes .avhdx and .vmrs files).
These tests are therefore fakes of the Hyper-V side and say so.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pyvhdi

from tests.acquire.hyperv_lab import BASE, CHILD, MAC, SNAP_ID, VM_DIR, VM_ID, FakeHyperV, PSError, build_lab
from tests.acquire.wsman_server import WSManServer
from tests.transport.httpsd import TestPKI
from tests.transport.smbd import SmbServer
from vmforensics import CaseInfo, open_image, verify
from vmforensics.custody.ledger import Ledger
from vmforensics.errors import HostVerificationError, UsageError, VMNotFoundError
from vmforensics.hypervisors.hyperv import scripts as scripts
from vmforensics.hypervisors.hyperv.acquirer import HyperVAcquirer, _dest_name
from vmforensics.hypervisors.hyperv.winrm import HyperVAccessDeniedError, HyperVCommandError

CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst")


def _session_action_records() -> bool:
    """Whether Session.action can write its ledger events (it passes ``action=`` to Ledger.append)."""
    with tempfile.TemporaryDirectory() as scratch:
        ledger = Ledger.create(Path(scratch) / "ledger.jsonl", {"examiner": "probe"})
        try:
            ledger.append("source-action-start", action="probe")
        except TypeError:
            return False
    return True


# Tests that change the source record SourceActions; they wait for the template's fix.
records_actions = pytest.mark.skipif(
    not _session_action_records(),
    reason="Session.action calls Ledger.append(..., action=name), which collides with its first parameter",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hyperv-host")
    facts = build_lab(root)
    with SmbServer({"C$": facts["drive"], "HyperV": facts["drive"] / "Hyper-V"}, force_user="root") as smb:
        facts["smb"] = smb
        facts["pki"] = TestPKI(root / "pki")
        yield facts


@pytest.fixture
def host(lab: dict[str, Any], tmp_path: Path) -> FakeHyperV:
    return FakeHyperV(lab["drive"], admins={lab["smb"].user}, clock_skew=-42.5)


@pytest.fixture
def winrm(lab: dict[str, Any], host: FakeHyperV, tmp_path: Path) -> Iterator[WSManServer]:
    smb = lab["smb"]
    users = {smb.user: smb.password, "reader": "reader-pass"}
    with WSManServer(host, users, user_file=str(tmp_path / "ntlm-users")) as server:
        yield server


def acquirer(lab: dict[str, Any], winrm: WSManServer, **options: Any) -> HyperVAcquirer:
    smb = lab["smb"]
    settings: dict[str, Any] = {
        "user": smb.user,
        "password": smb.password,
        "winrm_https": winrm.https,
        "winrm_port": winrm.port,
        "smb_port": smb.port,
    }
    settings.update(options)
    return HyperVAcquirer("127.0.0.1", **settings)


def evidence(out: Path, windows_path: str) -> Path:
    return out / "files" / _dest_name(windows_path)


def ledger(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "custody.log.jsonl").read_text().splitlines()]


@records_actions
def test_checkpoint_over_encrypted_http_acquires_the_vm_and_removes_only_its_checkpoint(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    out = tmp_path / "web01"
    result = acquirer(lab, winrm).acquire("web01", out, case=CASE, preserve="checkpoint", progress=False)

    report = verify(out)
    assert report.ok, report
    names = {f.source_path for f in result.files}
    ours = next(a for a in result.manifest.actions if a.action == "checkpoint").details["checkpoint_id"]
    new_disk = rf"C:\Hyper-V\web01\Virtual Hard Disks\web01_{ours}.avhdx"
    expected = {
        rf"C:\Hyper-V\web01\Virtual Machines\{VM_ID}.vmcx",
        rf"C:\Hyper-V\web01\Virtual Machines\{VM_ID}.vmgs",
        rf"C:\Hyper-V\web01\Virtual Machines\{VM_ID}.VMRS",
        rf"C:\Hyper-V\web01\Snapshots\{SNAP_ID}.vmcx",
        rf"C:\Hyper-V\web01\Snapshots\{SNAP_ID}.VMRS",
        rf"C:\Hyper-V\web01\Snapshots\{ours}.vmcx",
        rf"C:\Hyper-V\web01\Snapshots\{ours}.VMRS",
        BASE,
        CHILD,
        new_disk,
        r"C:\Hyper-V\web01\Virtual Hard Disks\web01.rct",
        r"C:\Hyper-V\web01\Virtual Hard Disks\web01.mrt",
    }
    assert names == expected  # the other VM's files in the same folders are not taken
    roles = {f.source_path: f.role for f in result.files}
    assert roles[new_disk] == "disk" and roles[rf"C:\Hyper-V\web01\Snapshots\{ours}.VMRS"] == "vm-state"
    assert roles[r"C:\Hyper-V\web01\Virtual Hard Disks\web01.rct"] == "change-tracking"
    assert all(f.remote_hash is not None and f.remote_hash.matched for f in result.files)

    # The acquired chain reads as the disk's state: ext4 after the user's checkpoint (qemu-made base).
    want = lab["v2"].read_bytes()
    with open_image(evidence(out, new_disk)) as disk:
        assert disk.size == len(want)
        assert disk.read() == want
    parent = pyvhdi.file()
    parent.open(str(evidence(out, BASE)))
    child = pyvhdi.file()
    child.open(str(evidence(out, CHILD)))
    child.set_parent(parent)
    assert child.read_buffer_at_offset(len(want), 0) == want

    # Memory was included, our checkpoint is gone again, the user's checkpoint stays.
    assert [a.action for a in result.manifest.actions] == ["checkpoint", "remove-checkpoint"]
    assert result.manifest.actions[0].parameters["memory"] is True
    assert [s["id"] for s in host.vms[VM_ID]["snapshots"]] == [SNAP_ID]
    assert not host.local(new_disk).exists() and host.vms[VM_ID]["drives"] == [CHILD]

    vm = result.manifest.source.vm
    assert vm is not None and vm.uuid == VM_ID and vm.power_state_before == "Running"
    assert vm.power_state_after == "Running"
    assert vm.mac_addresses == ("00:15:5d:0a:0b:0c",) and MAC
    assert vm.history and "moved from host HV02" in vm.history[0]["message"]
    clock = result.manifest.clock
    assert clock is not None and clock.skew_seconds is not None
    assert abs(clock.skew_seconds + 42.5) <= clock.round_trip_seconds + 0.01  # the host runs 42.5 s slow

    # Every WinRM message was sealed; only reviewed scripts ran, each recorded with its hash.
    assert winrm.requests and all(r["encrypted"] for r in winrm.requests)
    assert host.unknown_scripts == []
    recorded = [e["details"] for e in ledger(out) if e["action"] == "remote-script"]
    known = {s.name: s.sha256 for s in scripts.ALL.values()}
    assert {"host", "identify", "checkpoint", "enumerate", "file-hash", "remove-checkpoint"} <= {
        r["script"] for r in recorded
    }
    assert all(known[r["script"]] == r["sha256"] for r in recorded)
    raw = (out / "manifest.json").read_text() + (out / "custody.log.jsonl").read_text()
    assert lab["smb"].password not in raw


def test_a_hostile_vm_name_reaches_the_host_as_data(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    name = "x'; Remove-Item C:\\ -Recurse; '"
    with pytest.raises(VMNotFoundError):
        acquirer(lab, winrm).acquire(name, tmp_path / "out", case=CASE, progress=False)
    assert host.unknown_scripts == []  # the script text was the reviewed constant, unchanged
    assert ("identify", {"name": name}, lab["smb"].user) in host.calls


def test_unknown_vm_id_is_vm_not_found(lab: dict[str, Any], winrm: WSManServer, tmp_path: Path) -> None:
    with pytest.raises(VMNotFoundError, match="unable to find a virtual machine"):
        acquirer(lab, winrm).acquire(
            "{11111111-2222-4333-8444-555555555555}", tmp_path / "out", case=CASE, progress=False
        )


@records_actions
def test_production_checkpoint_type_is_switched_for_one_checkpoint_and_restored(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    host.vms[VM_ID]["checkpoint_type"] = "Production"
    result = acquirer(lab, winrm).acquire(
        VM_ID, tmp_path / "out", case=CASE, preserve="checkpoint", progress=False, remote_hash=False
    )
    assert [a.action for a in result.manifest.actions] == [
        "set-checkpoint-type",
        "checkpoint",
        "restore-checkpoint-type",
        "remove-checkpoint",
    ]
    assert result.manifest.actions[2].details == {
        "script_sha256": scripts.SET_CHECKPOINT_TYPE.sha256,
        "before": "Standard",
        "after": "Production",
    }
    assert host.vms[VM_ID]["checkpoint_type"] == "Production"
    ours = result.manifest.actions[1].details["checkpoint_id"]
    memory = next(f for f in result.files if f.source_path.endswith(f"{ours}.VMRS"))
    assert memory.size == 2 << 20  # a Standard checkpoint of a running VM holds its memory
    assert verify(tmp_path / "out").ok


@records_actions
def test_a_checkpoint_failing_midway_still_restores_the_checkpoint_type(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    host.vms[VM_ID]["checkpoint_type"] = "Production"
    host.failures["checkpoint"] = PSError(
        "NotSpecified",
        "OperationFailed,Microsoft.HyperV.PowerShell.Commands.CheckpointVM",
        "Checkpoint operation failed for 'web01'. Could not create auto virtual hard disk: general access denied.",
        "Microsoft.HyperV.PowerShell.VirtualizationOperationFailedException",
    )
    out = tmp_path / "out"
    with pytest.raises(HyperVCommandError, match="Checkpoint operation failed"):
        acquirer(lab, winrm).acquire("web01", out, case=CASE, preserve="checkpoint", progress=False)
    assert host.vms[VM_ID]["checkpoint_type"] == "Production"
    ends = [
        (e["details"]["action"], e["details"]["outcome"])
        for e in ledger(out)
        if e["action"] == "source-action-end"
    ]
    assert ends[0] == ("set-checkpoint-type", "ok")
    assert ends[1][0] == "checkpoint" and ends[1][1].startswith("failed")
    assert ends[2] == ("restore-checkpoint-type", "ok")


def test_an_account_without_hyperv_rights_is_told_what_it_needs(
    lab: dict[str, Any], winrm: WSManServer, tmp_path: Path
) -> None:
    with pytest.raises(HyperVAccessDeniedError, match="Hyper-V Administrators"):
        acquirer(lab, winrm, user="reader", password="reader-pass").acquire(
            "web01", tmp_path / "out", case=CASE, progress=False
        )


def test_basic_authentication_over_plain_http_is_refused_before_connecting(
    lab: dict[str, Any], winrm: WSManServer
) -> None:
    with pytest.raises(UsageError, match="Basic"):
        acquirer(lab, winrm, transport="basic", winrm_https=False)
    assert winrm.requests == []


@records_actions
def test_save_over_https_with_the_host_ca_records_the_certificate_and_restarts(
    lab: dict[str, Any], host: FakeHyperV, tmp_path: Path
) -> None:
    pki = lab["pki"]
    smb = lab["smb"]
    vmgs = rf"C:\Hyper-V\web01\Virtual Machines\{VM_ID}.vmgs"
    host.locked.add(vmgs.lower())
    with WSManServer(
        host,
        {smb.user: smb.password},
        certificate=(str(pki.cert_path), str(pki.key_path)),
        user_file=str(tmp_path / "users"),
    ) as server:
        out = tmp_path / "saved"
        result = acquirer(lab, server, ca_bundle=str(pki.ca_path), restart_saved=True).acquire(
            "web01", out, case=CASE, preserve="save", isolate=True, progress=False
        )
    assert verify(out).ok
    assert [a.action for a in result.manifest.actions] == ["isolate", "save", "start"]
    assert result.manifest.actions[0].details["disconnected"][0]["switch_name"] == "External"
    connection = result.manifest.source.connection
    assert connection["winrm"]["tls_certificate_sha256"] == pki.sha256
    assert connection["winrm"]["tls_verification"] == f"ca-bundle:{pki.ca_path}"
    state = next(f for f in result.files if f.source_path.endswith(f"{VM_ID}.VMRS"))
    assert state.size == 3 << 20 and state.remote_hash is not None and state.remote_hash.matched
    locked = next(f for f in result.files if f.source_path == vmgs)
    assert locked.remote_hash is not None and locked.remote_hash.value is None  # unavailable, said so
    assert result.manifest.source.vm is not None and result.manifest.source.vm.power_state_after == "Running"
    assert host.vms[VM_ID]["adapters"][0]["connected"] is False  # isolation is not undone


def test_https_with_an_unknown_ca_is_refused(lab: dict[str, Any], host: FakeHyperV, tmp_path: Path) -> None:
    pki = lab["pki"]
    smb = lab["smb"]
    with WSManServer(
        host,
        {smb.user: smb.password},
        certificate=(str(pki.cert_path), str(pki.key_path)),
        user_file=str(tmp_path / "users"),
    ) as server:
        with pytest.raises(HostVerificationError):
            acquirer(lab, server).acquire("web01", tmp_path / "out", case=CASE, progress=False)
        assert server.requests == []  # nothing was sent before the certificate was checked


def test_a_configured_share_reads_files_under_its_root(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    host.vms[VM_ID]["state"] = "Off"
    result = acquirer(lab, winrm, smb_share="HyperV", smb_share_root="C:\\Hyper-V").acquire(
        "web01", tmp_path / "out", case=CASE, preserve="none", progress=False
    )
    assert result.manifest.actions == ()
    assert {f.source_path for f in result.files} >= {BASE, CHILD}
    assert result.manifest.source.connection["files"]["share"] == "HyperV"
    assert verify(tmp_path / "out").ok


@records_actions
def test_cli_acquires_with_the_password_from_the_environment(
    lab: dict[str, Any],
    host: FakeHyperV,
    winrm: WSManServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vmforensics.cli import main

    smb = lab["smb"]
    monkeypatch.setenv("VMFORENSICS_PASSWORD", smb.password)
    argv = ["acquire", "hyperv", "--host", "127.0.0.1", "--user", smb.user, "--vm", "web01", "--http"]
    argv += ["--winrm-port", str(winrm.port), "--smb-port", str(smb.port), "--out", str(tmp_path / "cli")]
    argv += ["--case", "2026-117", "--preserve", "checkpoint", "--no-progress", "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert [a["action"] for a in manifest["actions"]] == ["checkpoint", "remove-checkpoint"]
    assert all(f["remote_hash"]["matched"] for f in manifest["files"])
    assert verify(tmp_path / "cli").ok
    assert main([*argv[:-6], "--out", str(tmp_path / "x"), "--auth", "basic", "--case", "c"]) == 2


def test_a_missing_parent_disk_is_an_omission_with_the_hosts_reason(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    gone = r"C:\Hyper-V\web01\Virtual Hard Disks\moved-away.vhdx"
    host.vms[VM_ID]["state"] = "Off"
    host.vhd_parent[BASE.lower()] = gone
    host.vhd_parent[gone.lower()] = None
    result = acquirer(lab, winrm).acquire(
        "web01", tmp_path / "out", case=CASE, preserve="none", progress=False
    )
    assert [(o.source_path, o.role) for o in result.omissions] == [(gone, "disk")]
    assert "does not exist" in result.omissions[0].reason
    drive = result.manifest.source.vm.details["hard_drives"][0]
    assert drive["chain"][-1]["path"] == gone and "cannot find" in drive["chain"][-1]["error"]
    assert verify(tmp_path / "out").ok


BAIT = b"examiner's own disk, never evidence\n" * 64
GRANDPARENT = r"C:\Hyper-V\web01\Virtual Hard Disks\golden.vhdx"


def _hostile_parent(lab: dict[str, Any], host: FakeHyperV) -> tuple[str, str]:
    r"""BASE's ParentPath walks out of the VM's folders (``..\..\..\examiner\secret.vhdx``, a test
    file on the served C: drive), and that file names a grandparent back inside them."""
    reference = VM_DIR + r"\Virtual Hard Disks\..\..\..\examiner\secret.vhdx"
    folded = r"C:\examiner\secret.vhdx"
    bait = host.local(folded)
    bait.parent.mkdir(exist_ok=True)
    bait.write_bytes(BAIT)
    host.local(GRANDPARENT).write_bytes(BAIT)
    host.vms[VM_ID]["state"] = "Off"
    host.vhd_parent[BASE.lower()] = reference
    host.vhd_parent[reference.lower()] = GRANDPARENT
    host.vhd_parent[GRANDPARENT.lower()] = None
    return reference, folded


def test_a_parent_disk_outside_the_vms_folders_is_an_omission_with_its_reference(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    reference, folded = _hostile_parent(lab, host)
    try:
        result = acquirer(lab, winrm).acquire(
            "web01", tmp_path / "out", case=CASE, preserve="none", progress=False
        )
        reasons = {o.source_path: o.reason for o in result.omissions}
        assert "lies outside the acquisition roots" in reasons[folded]
        assert f"named {reference!r} as the parent of {BASE}" in reasons[folded]
        assert f"named only through {reference}" in reasons[GRANDPARENT]
        assert {f.source_path for f in result.files} >= {BASE, CHILD}
        assert not {folded, GRANDPARENT} & {f.source_path for f in result.files}
        stored = [p for p in (tmp_path / "out" / "files").rglob("*") if p.is_file()]
        assert all(p.read_bytes() != BAIT for p in stored)
        roots = next(e["details"] for e in ledger(tmp_path / "out") if e["action"] == "hyperv-roots")
        assert roots["roots"] == [VM_DIR, VM_DIR + r"\Virtual Hard Disks"]
        assert verify(tmp_path / "out").ok
    finally:
        host.local(GRANDPARENT).unlink()
        host.local(folded).unlink()


def test_an_allowed_root_reaches_a_parent_disk_on_another_folder(
    lab: dict[str, Any], host: FakeHyperV, winrm: WSManServer, tmp_path: Path
) -> None:
    _, folded = _hostile_parent(lab, host)
    try:
        result = acquirer(lab, winrm).acquire(
            "web01",
            tmp_path / "out",
            case=CASE,
            preserve="none",
            progress=False,
            allowed_roots=["C:\\examiner"],
        )
        assert {folded, GRANDPARENT} <= {f.source_path for f in result.files}
        assert result.manifest.options["allowed_roots"] == ["C:\\examiner"]
        assert evidence(tmp_path / "out", folded).read_bytes() == BAIT
        assert verify(tmp_path / "out").ok
    finally:
        host.local(GRANDPARENT).unlink()
        host.local(folded).unlink()
