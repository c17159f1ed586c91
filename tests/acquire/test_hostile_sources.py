"""Acquisitions of hostile VM folders: nothing outside the acquisition roots lands in files/, every
refused reference is an omission with its reason and exact text, nothing hangs, and nothing empty
is left behind for a file that could not be read (so the sealed set verifies).

The examiner's files used as bait are test files created outside the VM folder, never the host's
own /etc; FIFOs are opened in a thread with a time limit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.deadline import within
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.acquire.files import FilesAcquirer
from vmforensics.demo.vm import VM_NAME, build_demo_vm
from vmforensics.transport.local import LocalTransport

CASE = CaseInfo(case_id="H-13", examiner="Test Examiner")
BAIT = b"root:$6$examiner-own-secret:19000:0:99999:7:::\n"


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """The demo VM folder on a datastore, and an 'examiner /etc' beside it holding bait files."""
    etc = tmp_path / "examiner-etc"
    etc.mkdir()
    for name in ("shadow", "group", "passwd"):
        (etc / name).write_bytes(BAIT)
    vmx = build_demo_vm(tmp_path / "datastore")
    return {"vmx": vmx, "folder": vmx.parent, "etc": etc, "out": tmp_path / "evidence"}


def set_vmx(vmx: Path, **entries: str) -> None:
    """Append (later lines win) ``key = "value"`` lines, as the attacker edits the .vmx."""
    with vmx.open("a") as f:
        for key, value in entries.items():
            f.write(f'{key.replace("__", ".")} = "{value}"\n')


def acquire(folder: Path, out: Path, timeout: float = 60, **options):
    """LocalAcquirer in a thread: a hang fails the test instead of blocking the suite."""
    return within(
        timeout,
        lambda: LocalAcquirer().acquire(str(folder), out, case=CASE, progress=False, **options),
        "the acquisition blocked",
    )


def bait_in(out: Path) -> list[Path]:
    return [p for p in (out / "files").rglob("*") if p.is_file() and p.read_bytes() == BAIT]


def omission(result, needle: str):
    found = [o for o in result.manifest.omissions if needle in o.source_path or needle in o.reason]
    assert found, [(o.source_path, o.reason) for o in result.manifest.omissions]
    return found[0]


@pytest.mark.parametrize("key", ["nvram", "suspend__filename", "checkpoint__vmstate", "extendedConfigFile"])
def test_vmx_key_naming_an_examiner_file_by_absolute_path_is_omitted_not_copied(hostile, key: str) -> None:
    bait = str(hostile["etc"] / "shadow")
    set_vmx(hostile["vmx"], **{key: bait})
    result = acquire(hostile["folder"], hostile["out"])
    assert bait_in(hostile["out"]) == [] and not (hostile["out"] / "files" / "external").exists()
    refused = omission(result, bait)
    assert "outside the acquisition roots" in refused.reason and repr(bait) in refused.reason
    assert verify(hostile["out"]).ok


def test_vmx_key_naming_a_device_is_omitted_and_nothing_is_written_without_end(hostile) -> None:
    os.symlink("/dev/zero", hostile["folder"] / "zero")  # inside the folder, pointing at the device
    set_vmx(hostile["vmx"], nvram="/dev/zero", **{"suspend__filename": "zero"})
    result = acquire(hostile["folder"], hostile["out"])
    assert "outside the acquisition roots" in omission(result, "/dev/zero").reason
    assert "symbolic link" in omission(result, f"{hostile['folder']}/zero").reason
    assert verify(hostile["out"]).ok


def test_directory_symlink_inside_the_vm_folder_is_not_followed(hostile) -> None:
    os.symlink(hostile["etc"], hostile["folder"] / "etcdir")
    set_vmx(hostile["vmx"], nvram="etcdir/shadow")
    result = acquire(hostile["folder"], hostile["out"])
    assert bait_in(hostile["out"]) == []
    refused = omission(result, "'etcdir/shadow'")
    assert "symbolic link" in refused.reason
    assert verify(hostile["out"]).ok


def test_dot_dot_in_a_vmx_key_walking_out_of_the_datastore_is_omitted(hostile) -> None:
    set_vmx(hostile["vmx"], nvram="../../examiner-etc/group")
    result = acquire(hostile["folder"], hostile["out"])
    assert bait_in(hostile["out"]) == []
    assert "outside the acquisition roots" in omission(result, "'../../examiner-etc/group'").reason
    assert verify(hostile["out"]).ok


def test_dot_dot_in_a_disk_extent_walking_out_of_the_datastore_is_omitted(hostile) -> None:
    descriptor = hostile["folder"] / "data.vmdk"
    descriptor.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 1 FLAT "../../examiner-etc/group" 0\n'
    )
    set_vmx(hostile["vmx"], **{"scsi0:1__present": "TRUE", "scsi0:1__fileName": "data.vmdk"})
    result = acquire(hostile["folder"], hostile["out"])
    assert bait_in(hostile["out"]) == []
    assert "outside" in omission(result, "../../examiner-etc/group").reason
    assert verify(hostile["out"]).ok


def test_an_explicitly_allowed_root_is_acquired_and_recorded(hostile, tmp_path: Path) -> None:
    other = tmp_path / "datastore2"
    other.mkdir()
    (other / "web01-extra.nvram").write_bytes(b"NVRAM2")
    set_vmx(hostile["vmx"], nvram=str(other / "web01-extra.nvram"))
    result = acquire(hostile["folder"], hostile["out"], allowed_roots=[other])
    copied = [f for f in result.manifest.files if f.source_path == str(other / "web01-extra.nvram")]
    assert copied and copied[0].local_path.startswith("files/external/")
    assert result.manifest.options["allowed_roots"] == [str(other)]
    ledger = (hostile["out"] / "custody.log.jsonl").read_text()
    assert '"allowed-roots"' in ledger and str(other) in ledger
    assert verify(hostile["out"]).ok


def test_a_fifo_in_the_vm_folder_does_not_block_and_is_omitted_with_its_type(hostile) -> None:
    os.mkfifo(hostile["folder"] / f"{VM_NAME}.vmss")
    os.mkfifo(hostile["folder"] / "pipe-flat.vmdk")  # also where the disk planner looks inside files
    result = acquire(hostile["folder"], hostile["out"])
    assert "FIFO" in omission(result, f"{VM_NAME}.vmss").reason
    assert "FIFO" in omission(result, "pipe-flat.vmdk").reason
    assert not (hostile["out"] / "files" / "datastore" / VM_NAME / f"{VM_NAME}.vmss").exists()
    assert verify(hostile["out"]).ok


def test_a_socket_in_the_vm_folder_is_omitted_without_an_empty_placeholder(hostile) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(hostile["folder"] / "vmware-vmx.sock"))
        result = acquire(hostile["folder"], hostile["out"])
    finally:
        server.close()
    assert "socket" in omission(result, "vmware-vmx.sock").reason
    assert not list((hostile["out"] / "files").rglob("vmware-vmx.sock"))
    assert verify(hostile["out"]).ok


def test_acquire_files_with_a_fifo_and_a_socket_leaves_no_placeholder_and_verifies(tmp_path: Path) -> None:
    source = tmp_path / "logs"
    source.mkdir()
    (source / "host.log").write_bytes(b"log line\n" * 100)
    os.mkfifo(source / "pipe")
    server = socket.socket(socket.AF_UNIX)
    out = tmp_path / "ev"
    try:
        server.bind(str(source / "control.sock"))
        acquirer = FilesAcquirer(LocalTransport(), [str(source)], recursive=True)
        result = within(
            60,
            lambda: acquirer.acquire("logs", out, case=CASE, progress=False),
            "the acquisition blocked on the FIFO",
        )
    finally:
        server.close()
    reasons = {Path(o.source_path).name: o.reason for o in result.manifest.omissions}
    assert "FIFO" in reasons["pipe"] and "socket" in reasons["control.sock"]
    stored = sorted(p.name for p in (out / "files").rglob("*") if p.is_file())
    assert stored == ["host.log"]
    assert verify(out).ok


def survey(root: Path, timeout: float = 60):
    from vmforensics import survey_local

    return within(timeout, lambda: survey_local(root), "the survey blocked")


def test_survey_does_not_open_a_disk_the_vmx_names_outside_the_surveyed_root(hostile) -> None:
    bait_disk = hostile["etc"] / "secret.vmdk"
    bait_disk.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 1 FLAT "passwd" 0\n'
    )
    set_vmx(hostile["vmx"], **{"scsi0:1__present": "TRUE", "scsi0:1__fileName": str(bait_disk)})
    report = survey(hostile["folder"].parent)
    (vm,) = report.vms
    refused = [d for d in vm.disks if d.path == str(bait_disk)]
    assert refused and refused[0].capacity is None and "outside the acquisition roots" in refused[0].error
    assert repr(str(bait_disk)) in refused[0].error


def test_survey_does_not_follow_a_snapshot_list_symlinked_to_an_examiner_file(hostile) -> None:
    bait = hostile["etc"] / "planted.vmsd"
    bait.write_text('snapshot0.uid = "1"\nsnapshot0.displayName = "planted"\n')
    os.symlink(bait, hostile["folder"] / "link.vmsd")
    set_vmx(hostile["vmx"], snapshot__fileName="link.vmsd")
    report = survey(hostile["folder"].parent)
    assert report.vms[0].snapshots == ()


def test_survey_with_a_fifo_as_the_snapshot_list_does_not_block(hostile) -> None:
    os.mkfifo(hostile["folder"] / "pipe.vmsd")
    set_vmx(hostile["vmx"], snapshot__fileName="pipe.vmsd")
    report = survey(hostile["folder"].parent)
    assert report.vms[0].snapshots == ()


def test_a_fifo_met_first_in_a_resumed_run_leaves_no_empty_file_either(tmp_path: Path) -> None:
    from vmforensics.acquire.copier import copy_file
    from vmforensics.custody.evidence import EvidenceDirectory
    from vmforensics.custody.ledger import Ledger
    from vmforensics.errors import SourceError

    os.mkfifo(tmp_path / "pipe")
    EvidenceDirectory(tmp_path / "ev")  # the interrupted run's directory, with its ledger
    Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    again = EvidenceDirectory(tmp_path / "ev", resume=True)
    with pytest.raises(SourceError, match="FIFO"):
        within(
            30,
            lambda: copy_file(LocalTransport(), str(tmp_path / "pipe"), again, "host/pipe", resume=True),
            "opening the FIFO blocked",
        )
    assert not again.local_path("host/pipe").exists()
