"""LocalAcquirer on a VM folder: every file with its role, the .vmx facts, the disk chain; bad
input fails early and clearly; a dropped read resumes from the bytes on disk."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from vmforensics import CaseInfo, LocalAcquirer, open_image, verify
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.custody.ledger import Ledger
from vmforensics.demo.vm import GUEST_FILES, MAC
from vmforensics.errors import ConnectionError_, EvidenceError, UsageError, VMNotFoundError
from vmforensics.transport.local import LocalTransport

CASE = CaseInfo(case_id="T-3", examiner="Test Examiner")


def test_every_file_is_acquired_with_its_role_and_source_hash(sealed, vm_folder):
    roles = {f.local_path.rsplit("/", 1)[-1]: f.role for f in sealed.files}
    assert roles == {
        "web01.vmx": "config",
        "web01.vmxf": "extended-config",
        "web01.vmsd": "snapshot-list",
        "web01.nvram": "nvram",
        "web01.vmdk": "disk",
        "vmware.log": "log",
    }
    for entry in sealed.files:
        source = vm_folder / entry.local_path.rsplit("/", 1)[-1]
        assert entry.hashes["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert entry.size == source.stat().st_size and not entry.changed_during_acquisition
    vm = sealed.manifest.source.vm
    assert vm.name == "web01" and vm.mac_addresses == (MAC,) and vm.uuid.startswith("56 4d")


def test_acquired_disk_opens_and_holds_the_guest_files(sealed):
    import pytsk3

    with open_image(sealed.path / "files/web01/web01.vmdk") as disk:
        fs = pytsk3.FS_Info(disk.as_tsk(), offset=2048 * 512)
        data = fs.open("/LOGS/DROPPER.PS1").read_random(0, 4096)
    assert data == GUEST_FILES["LOGS/DROPPER.PS1"]


def test_disk_outside_the_vm_folder_and_its_extent_are_found_through_the_vmx(tmp_path):
    folder = tmp_path / "ds1" / "vm"
    other = tmp_path / "ds2" / "disks"
    folder.mkdir(parents=True)
    other.mkdir(parents=True)
    (other / "data-flat.vmdk").write_bytes(os.urandom(1024 * 1024))
    (other / "data.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 2048 FLAT "data-flat.vmdk" 0\n'
    )
    (folder / "vm.vmx").write_text(
        f'displayName = "vm"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "{other}/data.vmdk"\n'
    )
    result = LocalAcquirer().acquire(
        str(folder / "vm.vmx"), tmp_path / "ev", case=CASE, progress=False, allowed_roots=[tmp_path / "ds2"]
    )  # another datastore is read only when the examiner allows it (tests/acquire/test_hostile_sources.py)
    names = sorted(f.local_path for f in result.files)
    assert any(n.endswith("ds2/disks/data.vmdk") for n in names)
    assert any(n.endswith("ds2/disks/data-flat.vmdk") for n in names)
    assert verify(result.path).ok


def test_missing_extent_is_recorded_as_an_omission_not_silently_skipped(tmp_path):
    folder = tmp_path / "vm"
    folder.mkdir()
    (folder / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 2048 FLAT "d-flat.vmdk" 0\n'
    )
    (folder / "vm.vmx").write_text('displayName = "vm"\nscsi0:0.fileName = "d.vmdk"\n')
    result = LocalAcquirer().acquire(str(folder), tmp_path / "ev", case=CASE, progress=False)
    assert any("d-flat.vmdk" in o.reason for o in result.omissions)


def test_symlink_in_the_source_folder_is_recorded_not_followed(tmp_path, vm_folder):
    (tmp_path / "secret").write_text("outside the VM")
    (vm_folder / "link.log").symlink_to(tmp_path / "secret")
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    assert not any(f.local_path.endswith("link.log") for f in result.files)
    assert any(o.source_path.endswith("link.log") and "symbolic link" in o.reason for o in result.omissions)


def test_bad_input_fails_early_and_clearly(tmp_path, vm_folder):
    with pytest.raises(VMNotFoundError):
        LocalAcquirer().acquire(str(tmp_path / "nope"), tmp_path / "ev1", case=CASE, progress=False)
    (tmp_path / "ev2").mkdir()
    (tmp_path / "ev2" / "x").write_text("x")
    with pytest.raises(EvidenceError, match="not empty"):
        LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev2", case=CASE, progress=False)
    with pytest.raises(UsageError):
        LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev3", case=CASE, preserve="snapshot")
    with pytest.raises(UsageError):
        LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev4", case="T-1")  # type: ignore[arg-type]


class DroppingTransport(LocalTransport):
    """The real local transport with faults injected: the stream fails after ``every`` bytes."""

    def __init__(self, every: int, drops: int):
        self.every, self.drops, self.reconnects = every, drops, 0

    def open_read(self, path, offset=0):
        stream = super().open_read(path, offset)
        if self.drops <= 0:
            return stream
        self.drops -= 1
        budget = [self.every]

        class Flaky:
            def readinto(self, buffer):
                if budget[0] <= 0:
                    raise ConnectionError_("injected drop")
                got = stream.readinto(buffer[: budget[0]])
                budget[0] -= got
                return got

            def close(self):
                stream.close()

        return Flaky()

    def reconnect(self):
        self.reconnects += 1


def test_dropped_reads_resume_from_the_durable_offset_and_are_logged(tmp_path):
    source = tmp_path / "big.bin"
    payload = os.urandom(9 * 1024 * 1024 + 5)
    source.write_bytes(payload)
    evidence = EvidenceDirectory(tmp_path / "ev")
    ledger = Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    transport = DroppingTransport(every=3_000_001, drops=3)
    record = copy_file(transport, str(source), evidence, "big.bin", ledger=ledger, backoff=0)
    assert (
        record.hashes["sha256"] == hashlib.sha256(payload).hexdigest()
        and record.reconnections == 3
        and record.resumed == 0
    )
    assert transport.reconnects == 3
    assert [e.action for e in ledger.events()].count("transfer-interrupted") == 3


def test_too_many_drops_fail_with_the_partial_copy_kept_for_resume(tmp_path):
    source = tmp_path / "big.bin"
    payload = os.urandom(4 * 1024 * 1024)
    source.write_bytes(payload)
    evidence = EvidenceDirectory(tmp_path / "ev")
    ledger = Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    with pytest.raises(ConnectionError_, match="resume"):
        copy_file(
            DroppingTransport(every=1_000_000, drops=99),
            str(source),
            evidence,
            "f",
            retries=2,
            backoff=0,
            ledger=ledger,
        )
    partial = evidence.local_path("f")
    assert partial.read_bytes() == payload[: partial.stat().st_size] and partial.stat().st_size == 3_000_000
    again = EvidenceDirectory(tmp_path / "ev", resume=True)
    record = copy_file(LocalTransport(), str(source), again, "f", resume=True, ledger=ledger)
    assert record.hashes["sha256"] == hashlib.sha256(payload).hexdigest()


class DroppingLocalAcquirer(LocalAcquirer):
    """LocalAcquirer whose reads of one file keep failing (fault injection on the real transport)."""

    def __init__(self, victim: str):
        super().__init__()
        self._dropping = DroppingTransport(every=100_000, drops=10**6)
        self._victim = victim

    def transport(self, session):
        outer = self

        class Selective(LocalTransport):
            def open_read(self, path, offset=0):
                if path.endswith(outer._victim):
                    return outer._dropping.open_read(path, offset)
                return super().open_read(path, offset)

        return Selective()


def test_interrupted_acquisition_is_recorded_and_resumes_to_a_verified_set(tmp_path, vm_folder, monkeypatch):
    import vmforensics.acquire.copier as copier

    monkeypatch.setattr(copier.time, "sleep", lambda s: None)
    (vm_folder / "web01-flat.bin").write_bytes(os.urandom(2_000_000))
    out = tmp_path / "ev"
    with pytest.raises(ConnectionError_):
        DroppingLocalAcquirer("web01-flat.bin").acquire(str(vm_folder), out, case=CASE, progress=False)
    assert not (out / "manifest.json").exists()
    assert verify(out).manifest_status == "MISSING"
    ledger = (out / "custody.log.jsonl").read_text()
    assert '"action":"failed"' in ledger and "resume" in ledger
    sealed_before = [p for p in (out / "files").rglob("*") if p.is_file() and not p.stat().st_mode & 0o200]
    assert sealed_before, "files acquired before the failure stay, sealed"
    result = LocalAcquirer().acquire(str(vm_folder), out, case=CASE, progress=False, resume=True)
    report = verify(out)
    assert report.ok, str(report)
    flat = next(f for f in result.files if f.local_path.endswith("web01-flat.bin"))
    assert flat.hashes["sha256"] == hashlib.sha256((vm_folder / "web01-flat.bin").read_bytes()).hexdigest()
    assert flat.resumed >= 1
    events = [json.loads(line)["action"] for line in (out / "custody.log.jsonl").read_text().splitlines()]
    assert "resume" in events and "resume-proof" in events and events[-1] == "seal"
    assert {r.outcome for r in result.manifest.resumed} == {"continued", "reused"}
