"""Acquired VMware sets open with dissect.target: the acquired .vmx leads it to every disk of the chain.

The local case is the demo VM (FAT16 in a monolithicSparse VMDK, no operating system to detect):
dissect must find the disk, the partition and the file system and read the planted files. The
vCenter case is a snapshot acquisition through vcsim of a Linux guest whose .vmx points at the
snapshot's delta: dissect must recognise the OS and see a file that exists only in the delta.
The source is gone (local) or unused (vcsim) when dissect runs: it reads the evidence only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.guest import AFTER_SNAPSHOT_TEXT, EVIDENCE_TEXT, HOSTNAME, USER
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.demo.vm import GUEST_FILES, VM_NAME, build_demo_vm

Target = pytest.importorskip("dissect.target").Target
pytest.importorskip("dissect.fat", reason="dissect.target reads FAT only with dissect.fat")
pytest.importorskip("dissect.extfs", reason="dissect.target reads ext4 only with dissect.extfs")


def target_query(vmx: Path, functions: str) -> list[dict]:
    """``target-query -j`` through the test interpreter: its JSON records (no cache written)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dissect.target.tools.query",
            "--no-cache",
            "-q",
            "-j",
            "-f",
            functions,
            str(vmx),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_demo_vm_acquired_locally_opens_and_lists_its_fat_file_system(tmp_path: Path) -> None:
    source = build_demo_vm(tmp_path / "datastore").parent
    result = LocalAcquirer().acquire(
        str(source),
        tmp_path / "evidence",
        case=CaseInfo(case_id="2026-117", examiner="A. Analyst"),
        progress=False,
    )
    shutil.rmtree(source)
    vmx = result.path / "files" / VM_NAME / f"{VM_NAME}.vmx"

    target = Target.open(vmx)

    assert [disk.size for disk in target.disks] == [32 << 20]
    assert [volume.fs.__type__ for volume in target.volumes] == ["fat"]
    fs = target.filesystems[0]
    for name, content in GUEST_FILES.items():
        assert fs.path(name).read_bytes() == content, name
    assert sorted(fs.listdir("/LOGS")) == ["ACCESS.LOG", "DROPPER.PS1"]
    assert verify(result.path).ok


def test_vcsim_snapshot_opens_as_linux_through_the_delta_disk(vmware_snapshot) -> None:
    vmx = vmware_snapshot.evidence(f"{vmware_snapshot.source.name}.vmx")
    assert {vmx.with_name(n).is_file() for n in ("disk1.vmdk", "disk1-flat.vmdk", "disk1-000001.vmdk")} == {
        True
    }

    target = Target.open(vmx)

    assert target.os == "linux" and target.hostname == HOSTNAME
    assert target.fs.path(f"/home/{USER}/evidence.txt").read_bytes() == EVIDENCE_TEXT
    # written after the snapshot, so only in disk1-000001.vmdk: dissect followed the whole chain
    assert target.fs.path(f"/home/{USER}/after-snapshot.txt").read_bytes() == AFTER_SNAPSHOT_TEXT


def test_target_query_on_the_acquired_vmx(vmware_snapshot) -> None:
    vmx = vmware_snapshot.evidence(f"{vmware_snapshot.source.name}.vmx")

    users = [r for r in target_query(vmx, "users") if "name" in r]

    assert {(r["hostname"], r["name"], r["uid"]) for r in users} == {
        (HOSTNAME, "root", 0),
        (HOSTNAME, USER, 1000),
    }
    assert verify(vmware_snapshot.result.path).ok  # dissect wrote nothing into the evidence
