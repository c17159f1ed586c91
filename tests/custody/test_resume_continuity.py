"""--resume continues only what it can prove: the same acquisition, source and VM, and for a
partial copy a source of the same size and mtime whose first bytes, re-read, hash as the copy's.
Anything else is refused (recorded in the ledger) and nothing is spliced. Interruptions are real
connection drops injected into the real local transport; the sources are real folders on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.cli import main
from vmforensics.errors import ConnectionError_, ResumeRefusedError
from vmforensics.transport.local import LocalTransport

CASE = CaseInfo(case_id="R-1", examiner="Resume Tester")
VICTIM = "web01-flat.bin"


class _Dropping:
    """A stream of the real file that drops the connection after ``every`` bytes."""

    def __init__(self, stream, every):
        self._stream, self._budget = stream, every

    def readinto(self, buffer):
        if self._budget <= 0:
            raise ConnectionError_("injected drop")
        got = self._stream.readinto(buffer[: self._budget])
        self._budget -= got
        return got

    def close(self):
        self._stream.close()


class InterruptedAcquirer(LocalAcquirer):
    """LocalAcquirer whose reads of the victim file keep dropping, so the run fails mid-file."""

    def transport(self, session):
        class Flaky(LocalTransport):
            def open_read(self, path, offset=0):
                stream = super().open_read(path, offset)
                return _Dropping(stream, 100_000) if path.endswith(VICTIM) else stream

        return Flaky()


@pytest.fixture
def interrupted(tmp_path, vm_folder, monkeypatch):
    """An evidence directory whose first run died in the middle of the victim file."""
    import vmforensics.acquire.copier as copier

    monkeypatch.setattr(copier.time, "sleep", lambda s: None)
    (vm_folder / VICTIM).write_bytes(os.urandom(3_000_000))
    out = tmp_path / "ev"
    with pytest.raises(ConnectionError_):
        InterruptedAcquirer().acquire(str(vm_folder), out, case=CASE, progress=False)
    partial = out / "files" / "web01" / VICTIM
    assert 0 < partial.stat().st_size < 3_000_000
    return out, vm_folder, partial


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "custody.log.jsonl").read_bytes().splitlines()]


def _assert_refused(out: Path, partial: Path, before: bytes, reason: str) -> None:
    assert not (out / "manifest.json").exists()
    assert partial.read_bytes() == before  # nothing spliced onto the earlier bytes
    refused = [e for e in _events(out) if e["action"] == "resume-refused"]
    assert refused and reason in refused[-1]["details"]["reason"], refused


def test_resume_of_an_unchanged_source_equals_the_source_and_records_the_proof(interrupted):
    out, vm, partial = interrupted
    offset = partial.stat().st_size
    result = LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    assert verify(out).ok
    victim = next(f for f in result.files if f.local_path.endswith(VICTIM))
    assert victim.hashes["sha256"] == hashlib.sha256((vm / VICTIM).read_bytes()).hexdigest()
    assert victim.resumed == offset and not victim.changed_during_acquisition
    continued = [r for r in result.manifest.resumed if r.outcome == "continued"]
    assert [(r.local_path, r.offset) for r in continued] == [(victim.local_path, offset)]
    prefix = hashlib.sha256((vm / VICTIM).read_bytes()[:offset]).hexdigest()
    assert prefix in continued[0].proof and "re-read from the source" in continued[0].proof
    assert all(r.outcome == "reused" for r in result.manifest.resumed if r is not continued[0])
    assert result.manifest.acquisition_id == _events(out)[0]["details"]["acquisition_id"]


def test_resume_after_the_prefix_changed_with_size_and_mtime_kept_is_refused(interrupted):
    out, vm, partial = interrupted
    before = partial.read_bytes()
    source = vm / VICTIM
    info = source.stat()
    data = bytearray(source.read_bytes())
    data[10] ^= 0xFF  # inside the bytes already copied
    source.write_bytes(bytes(data))
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))  # the attacker restores the mtime
    with pytest.raises(ResumeRefusedError, match="differ from the partial copy"):
        LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    _assert_refused(out, partial, before, "differ from the partial copy")


def test_resume_after_the_source_grew_is_refused(interrupted):
    out, vm, partial = interrupted
    before = partial.read_bytes()
    with (vm / VICTIM).open("ab") as f:
        f.write(b"appended between the runs")
    with pytest.raises(ResumeRefusedError, match="changed since the interrupted run"):
        LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    _assert_refused(out, partial, before, "changed since the interrupted run")


def test_resume_with_another_vm_is_refused(interrupted, tmp_path):
    out, _, partial = interrupted
    before = partial.read_bytes()
    from vmforensics.demo.vm import build_demo_vm

    other = build_demo_vm(tmp_path / "other-ds").parent
    with pytest.raises(ResumeRefusedError, match="interrupted run acquired local"):
        LocalAcquirer().acquire(str(other), out, case=CASE, progress=False, resume=True)
    _assert_refused(out, partial, before, "interrupted run acquired local")


def test_resume_after_the_vm_at_the_same_path_was_replaced_is_refused(interrupted):
    out, vm, partial = interrupted
    before = partial.read_bytes()
    vmx = vm / "web01.vmx"
    vmx.write_text(vmx.read_text().replace("uuid.bios", "uuid.bios.old") + 'uuid.bios = "00 11 22"\n')
    with pytest.raises(ResumeRefusedError, match="VM's uuid"):
        LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    _assert_refused(out, partial, before, "VM's uuid")


def test_file_sealed_by_the_first_run_whose_source_changed_since_is_reused_and_flagged(interrupted):
    out, vm, _ = interrupted
    first = {e["details"]["local"]: e["details"] for e in _events(out) if e["action"] == "acquire-file"}
    log_local = "files/web01/vmware.log"  # sorted before the victim: sealed by the first run
    assert log_local in first
    with (vm / "vmware.log").open("a") as f:
        f.write("written between the runs\n")
    result = LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    log = next(f for f in result.files if f.local_path == log_local)
    assert log.hashes["sha256"] == first[log_local]["hashes"]["sha256"]  # the earlier state, as sealed
    assert log.changed_during_acquisition and any("source changed since then" in n for n in log.notes)
    reused = next(r for r in result.manifest.resumed if r.local_path == log_local)
    assert reused.outcome == "reused" and "source changed" in reused.proof
    assert verify(out).ok


def test_cut_last_ledger_line_is_reported_recoverable_then_truncated_recorded_and_resumed(
    interrupted, capsys
):
    out, vm, _ = interrupted
    ledger = out / "custody.log.jsonl"
    raw = ledger.read_bytes()
    torn = raw[raw.rstrip(b"\n").rfind(b"\n") + 1 :][:-7]  # the last line, cut 7 bytes short
    ledger.write_bytes(raw[: raw.rstrip(b"\n").rfind(b"\n") + 1] + torn)
    assert main(["verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert report.startswith("FAILED") and "it can be continued with --resume" in report
    result = LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    repaired = [e for e in _events(out) if e["action"] == "ledger-repaired"]
    assert len(repaired) == 1 and repaired[0]["details"]["truncated_bytes"] == len(torn)
    assert repaired[0]["details"]["truncated_sha256"] == hashlib.sha256(torn).hexdigest()
    assert verify(out).ok and result.manifest.resumed


def test_resume_into_a_folder_without_a_ledger_is_a_usage_error_and_writes_nothing(
    tmp_path, vm_folder, capsys
):
    """The swapped-arguments case: --out names the VM folder and the error's old hint said resume."""
    before = sorted(p.name for p in vm_folder.iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = ["acquire", "local", str(elsewhere), "--out", str(vm_folder), "--case", "R-2", "--no-progress"]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "resume=True" not in err
    assert sorted(p.name for p in vm_folder.iterdir()) == before


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH sshd on loopback (tests/transport/sshd.py)."""
    import shutil

    from tests.transport.sshd import SSHD, SSHServer

    if not shutil.which(SSHD) and not Path(SSHD).exists():
        pytest.skip("needs OpenSSH sshd (tests/apt-packages.txt)")
    with SSHServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _ssh(server, drop_after=None):
    from vmforensics.transport.ssh import SSHTransport

    class Dropping(SSHTransport):
        def open_read(self, path, offset=0):
            stream = super().open_read(path, offset)
            return _Dropping(stream, drop_after) if drop_after is not None else stream

    return Dropping(
        server.host,
        port=server.port,
        user=server.user,
        identity=server.client_key,
        known_hosts=server.known_hosts,
    )


@pytest.mark.parametrize("tamper", [False, True], ids=["unchanged", "prefix-changed-size-and-mtime-kept"])
def test_resume_over_ssh_rereads_the_prefix_from_the_server(sshd, tmp_path, tamper):
    from vmforensics.acquire.copier import copy_file
    from vmforensics.custody.evidence import EvidenceDirectory
    from vmforensics.custody.ledger import Ledger

    source = tmp_path / "disk.bin"
    source.write_bytes(os.urandom(3_000_000))
    evidence = EvidenceDirectory(tmp_path / "ev")
    ledger = Ledger.create(tmp_path / "ev" / "custody.log.jsonl", {})
    dropping = _ssh(sshd, drop_after=1_000_000)
    with pytest.raises(ConnectionError_):
        copy_file(dropping, str(source), evidence, "disk.bin", ledger=ledger, retries=0, backoff=0)
    dropping.close()
    partial = evidence.local_path("disk.bin")
    kept = partial.read_bytes()
    assert 0 < len(kept) < 3_000_000
    if tamper:
        info = source.stat()
        data = bytearray(source.read_bytes())
        data[len(kept) // 2] ^= 0x01
        source.write_bytes(bytes(data))
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))
    transport = _ssh(sshd)
    again = EvidenceDirectory(tmp_path / "ev", resume=True)
    try:
        if tamper:
            with pytest.raises(ResumeRefusedError, match="differ from the partial copy"):
                copy_file(transport, str(source), again, "disk.bin", ledger=ledger, resume=True)
            assert partial.read_bytes() == kept
            return
        record = copy_file(transport, str(source), again, "disk.bin", ledger=ledger, resume=True)
    finally:
        transport.close()
    assert record.hashes["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record.resumed == len(kept) and record.transport == "ssh"
    proofs = [e for e in ledger.events() if e.action == "resume-proof"]
    assert proofs[0].details["prefix_sha256"] == hashlib.sha256(kept).hexdigest()


def _crash_after_sealing_before_recording(out: Path) -> str:
    """Cut the ledger back to the state a crash leaves between a copy's seal and its ``acquire-file``
    event (files begun after that point did not exist yet); returns the unrecorded file."""
    ledger = out / "custody.log.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    events = [json.loads(line) for line in lines]
    cut = max(i for i, e in enumerate(events) if e["action"] == "acquire-file")
    unrecorded = events[cut]["details"]["local"]
    for later in events[cut:]:
        if later["action"] == "acquire-file-start" and later["details"]["local"] != unrecorded:
            (out / later["details"]["local"]).unlink(missing_ok=True)
    ledger.write_bytes(b"".join(lines[:cut]))
    return unrecorded


def test_a_file_sealed_but_not_yet_recorded_when_the_run_died_is_proved_against_the_source(interrupted):
    out, vm, _ = interrupted
    unrecorded = _crash_after_sealing_before_recording(out)
    result = LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    reused = [r for r in result.manifest.resumed if r.local_path == unrecorded]
    assert reused and reused[0].outcome == "reused", result.manifest.resumed
    proofs = [
        e for e in _events(out) if e["action"] == "resume-proof" and e["details"]["local"] == unrecorded
    ]
    assert proofs and proofs[0]["details"]["offset"] == (out / unrecorded).stat().st_size
    entry = next(f for f in result.files if f.local_path == unrecorded)
    source = vm / unrecorded.rsplit("/", 1)[-1]
    assert entry.hashes["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert verify(out).ok


def test_a_sealed_unrecorded_file_whose_source_changed_since_is_refused(interrupted):
    out, vm, _ = interrupted
    unrecorded = _crash_after_sealing_before_recording(out)
    source = vm / unrecorded.rsplit("/", 1)[-1]
    stat = source.stat()
    content = bytearray(source.read_bytes())
    content[0] ^= 0xFF
    source.write_bytes(bytes(content))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the attacker restores size and mtime
    before = (out / unrecorded).read_bytes()
    with pytest.raises(ResumeRefusedError):
        LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False, resume=True)
    _assert_refused(out, out / unrecorded, before, "differ from the partial copy")
