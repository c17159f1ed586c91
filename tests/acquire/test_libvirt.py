"""LibvirtAcquirer against a real libvirtd running QEMU (TCG) guests, reached through a real sshd.

Each guest is 64 MiB without an OS; its disk is a qcow2 overlay (vm/top.qcow2) on a backing file
in another folder (base/base.qcow2, a real ext4 holding hello.txt). Guest writes are made through
the guest's own virtio disk device (HMP ``qemu-io``), so they take the path guest I/O takes.
Oracles: qemu-img's reading of the source chain, frozen at the snapshot point, and the host's
own view of the domain after cleanup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytsk3

from tests.acquire import libvirt_lab
from tests.acquire.libvirt_lab import (
    FILE_CONTENT,
    VNC_PASSWORD,
    LibvirtLab,
    guest_write,
    qemu_img_raw,
    run,
    virsh,
)
from tests.deadline import within
from tests.transport.sshd import SSHServer
from vmforensics import CaseInfo, open_image, verify
from vmforensics.acquire.base import Session
from vmforensics.custody.models import Manifest
from vmforensics.errors import SourceError, VMNotFoundError
from vmforensics.hypervisors.libvirt.acquirer import LibvirtAcquirer
from vmforensics.hypervisors.libvirt.domain_xml import REDACTED, parse_domain, redact_secrets

CASE = CaseInfo(case_id="KVM-1", examiner="lab")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtLab]:
    if reason := libvirt_lab.available():
        pytest.skip(reason)
    with LibvirtLab(tmp_path_factory.mktemp("libvirt")) as running:
        yield running


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    with SSHServer(tmp_path_factory.mktemp("sshd-libvirt")) as server:
        yield server


@pytest.fixture
def guest(lab: LibvirtLab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Path | str]]:
    """A running persistent guest on the two-folder qcow2 chain."""
    name = f"vmf-{request.node.name[5:30].replace('_', '-')}"
    base, top = lab.make_chain(tmp_path / "host")
    mac = "52:54:00:5a:00:%02x" % (len(lab.domains) + 1)
    lab.define(name, lab.domain_xml(name, top, mac))
    yield {"name": name, "base": base, "top": top, "mac": mac}
    lab.remove_domain(name)


def acquirer(sshd: SSHServer, **options: object) -> LibvirtAcquirer:
    return LibvirtAcquirer(
        sshd.host,
        user=sshd.user,
        port=sshd.port,
        identity=sshd.client_key,
        known_hosts=sshd.known_hosts,
        **options,
    )


def evidence(result_path: Path, name: str) -> Path:
    return result_path / "files" / name


def chain_of(manifest: Manifest, target: str = "vda") -> dict:
    return next(c for c in manifest.source.vm.details["disk_chains"] if c["target"] == target)


class WritesAfterPreserve(LibvirtAcquirer):
    """The guest keeps writing once preserved; the oracle is the source chain as frozen then."""

    def __init__(self, *args: object, guest: dict, oracle_dir: Path, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.guest = guest
        self.oracle_dir = oracle_dir
        self.frozen: bytes | None = None

    def enumerate(self, session: Session) -> list:
        name = str(self.guest["name"])
        if virsh("domstate", name).strip() == "running":
            guest_write(name, 0x5A, "1M", "64k")
        self.frozen = qemu_img_raw(Path(self.guest["top"]), self.oracle_dir / "frozen.raw")
        return super().enumerate(session)


def test_snapshot_with_memory_acquires_the_frozen_chain_and_commits_back(lab, sshd, guest, tmp_path):
    guest_write(guest["name"], 0x33, "2M", "64k")  # before the snapshot: must be in the evidence
    acq = WritesAfterPreserve(
        sshd.host,
        user=sshd.user,
        port=sshd.port,
        identity=sshd.client_key,
        known_hosts=sshd.known_hosts,
        guest=guest,
        oracle_dir=tmp_path,
    )
    result = acq.acquire(guest["name"], tmp_path / "ev", case=CASE, preserve="snapshot", progress=False)
    manifest = result.manifest
    assert verify(result.path).ok

    # The acquired chain is the source chain at the snapshot point, read by qemu-img and by us.
    top, base = evidence(result.path, "disks/vda/top.qcow2"), evidence(result.path, "disks/vda/base.qcow2")
    oracle = qemu_img_raw(top, tmp_path / "ev.raw", backing=base)
    assert acq.frozen is not None and oracle == acq.frozen
    assert oracle[2 << 20 : (2 << 20) + 65536] == b"\x33" * 65536
    assert oracle[1 << 20 : (1 << 20) + 65536] != b"\x5a" * 65536  # written after the snapshot
    with open_image(top) as image:
        assert image.read() == oracle
        hello = pytsk3.FS_Info(image.as_tsk()).open("/hello.txt")
        assert hello.read_random(0, hello.info.meta.size) == FILE_CONTENT
    chain = chain_of(manifest)
    assert chain["opens_in_evidence"] and chain["evidence_top"] == "files/disks/vda/top.qcow2"
    assert [layer["source"] for layer in chain["layers"]] == [str(guest["top"]), str(guest["base"])]
    # base/ is reached because it is a storage pool (the lab's layout), not by an allowed root.
    roots = next(e["details"] for e in _ledger(result.path) if e.get("action") == "backing-file-roots")
    assert str(Path(guest["base"]).parent) in roots["pools"] and roots["allowed_roots"] == []

    # Memory state, domain XML without the VNC password, identity facts, clock.
    roles = {f.local_path: f.role for f in manifest.files}
    memory = [p for p, r in roles.items() if r == "memory"]
    assert len(memory) == 1 and evidence(result.path, memory[0][6:]).read_bytes()[:16] == b"LibvirtQemudSave"
    for xml in (f"domain/{guest['name']}.xml", f"domain/{guest['name']}.inactive.xml"):
        text = evidence(result.path, xml).read_text()
        assert VNC_PASSWORD not in text and "passwd='[removed by vmforensics]'" in text
    assert VNC_PASSWORD.encode() not in (result.path / "manifest.json").read_bytes()
    assert VNC_PASSWORD.encode() not in (result.path / "custody.log.jsonl").read_bytes()
    removed = manifest.source.vm.details["xml_secrets_removed"]
    assert {(r["element"], r["attribute"]) for r in removed} == {("graphics", "passwd")}
    vm = manifest.source.vm
    assert vm.name == guest["name"] and vm.uuid == virsh("domuuid", guest["name"]).strip()
    assert vm.mac_addresses == (guest["mac"],)
    assert vm.power_state_before.startswith("running")
    assert manifest.source.product["hypervisor"].startswith("QEMU")
    assert manifest.source.connection["host_key_fingerprint"] == sshd.host_key_fingerprint
    assert manifest.clock is not None and abs(manifest.clock.skew_seconds) < 5
    assert any(f.local_path == f"files/logs/{guest['name']}.log" for f in manifest.files)

    # Cleanup: the guest is back on its own top.qcow2, which now holds the later write.
    actions = [a.action for a in manifest.actions]
    assert actions == [
        "snapshot",
        "blockcommit",
        "delete-overlay",
        "delete-snapshot-metadata",
        "delete-snapshot-memory",
    ]
    assert all(a.outcome == "ok" for a in manifest.actions)
    assert lab.disk_source(guest["name"]) == str(guest["top"])
    assert virsh("snapshot-list", guest["name"], "--name").strip() == ""
    assert sorted(p.name for p in Path(guest["top"]).parent.iterdir()) == ["top.qcow2"]
    after = qemu_img_raw(Path(guest["top"]), tmp_path / "after.raw")
    assert after[1 << 20 : (1 << 20) + 65536] == b"\x5a" * 65536
    assert lab.state(guest["name"]) == "running"


def test_snapshot_with_elf_dump_takes_both_at_one_pause(lab, sshd, guest, tmp_path):
    result = acquirer(sshd, memory_dump=True).acquire(
        guest["name"], tmp_path / "ev", case=CASE, preserve="snapshot", progress=False
    )
    assert verify(result.path).ok
    actions = [a.action for a in result.manifest.actions]
    assert actions[:4] == ["suspend", "memory-dump", "snapshot", "resume"]
    elf = [f for f in result.manifest.files if f.local_path.endswith(".elf")]
    assert len(elf) == 1 and evidence(result.path, elf[0].local_path[6:]).read_bytes()[:4] == b"\x7fELF"
    assert lab.state(guest["name"]) == "running"
    assert sorted(p.name for p in Path(guest["top"]).parent.iterdir()) == ["top.qcow2"]


def test_suspend_takes_an_elf_memory_image_and_resumes(lab, sshd, guest, tmp_path):
    result = acquirer(sshd).acquire(
        guest["name"], tmp_path / "ev", case=CASE, preserve="suspend", progress=False
    )
    manifest = result.manifest
    assert verify(result.path).ok
    assert [a.action for a in manifest.actions] == ["suspend", "memory-dump", "delete-memory-dump", "resume"]
    elf = next(f for f in manifest.files if f.role == "memory")
    data = evidence(result.path, elf.local_path[6:]).read_bytes()
    assert data[:4] == b"\x7fELF" and data[16:18] == b"\x04\x00"  # ET_CORE
    assert len(data) >= 64 << 20
    assert manifest.source.vm.power_state_after.startswith("running")
    assert lab.state(guest["name"]) == "running"
    top = evidence(result.path, "disks/vda/top.qcow2")
    with open_image(top) as image:
        assert image.read() == qemu_img_raw(Path(guest["top"]), tmp_path / "src.raw")


def test_save_acquires_the_state_file_and_restores(lab, sshd, guest, tmp_path):
    result = acquirer(sshd).acquire(
        guest["name"], tmp_path / "ev", case=CASE, preserve="save", progress=False
    )
    manifest = result.manifest
    assert verify(result.path).ok
    assert [a.action for a in manifest.actions] == ["save", "restore", "delete-saved-state"]
    assert manifest.actions[0].details["state_now"].startswith("shut off")
    saved = next(f for f in manifest.files if f.role == "saved-state")
    assert evidence(result.path, saved.local_path[6:]).read_bytes()[:16] == b"LibvirtQemudSave"
    assert lab.state(guest["name"]) == "running"
    assert not any(p.suffix == ".save" for p in Path(guest["top"]).parent.iterdir())


def test_isolation_takes_every_link_down_and_leaves_it_down(lab, sshd, guest, tmp_path):
    result = acquirer(sshd).acquire(
        guest["name"],
        tmp_path / "ev",
        case=CASE,
        preserve="snapshot",
        memory=False,
        isolate=True,
        progress=False,
    )
    actions = result.manifest.actions
    assert actions[0].action == "isolate" and actions[0].parameters["interface"] == guest["mac"]
    assert "down" in actions[0].details["link_now"]
    assert "down" in virsh("domif-getlink", guest["name"], guest["mac"])
    assert actions[1].action == "snapshot" and actions[1].parameters["memory"] is False
    assert not [f for f in result.manifest.files if f.role == "memory"]
    assert lab.disk_source(guest["name"]) == str(guest["top"])


def test_unknown_domain_is_refused_and_nothing_is_changed(lab, sshd, tmp_path):
    with pytest.raises(VMNotFoundError, match="no-such-domain"):
        acquirer(sshd).acquire(
            "no-such-domain", tmp_path / "ev", case=CASE, preserve="snapshot", progress=False
        )
    ledger = (tmp_path / "ev" / "custody.log.jsonl").read_text()
    assert "source-action-start" not in ledger and '"failed"' in ledger


def test_virsh_absent_is_a_clear_error(lab, sshd, tmp_path):
    with pytest.raises(SourceError, match="not installed"):
        acquirer(sshd, virsh="/nonexistent/virsh").acquire(
            "anything", tmp_path / "ev", case=CASE, preserve="none", progress=False
        )


def test_transient_domain_is_flagged_and_save_is_refused(lab, sshd, tmp_path):
    _, top = lab.make_chain(tmp_path / "host")
    name = "vmf-transient"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:01:01"), transient=True)
    try:
        with pytest.raises(SourceError, match="transient"):
            acquirer(sshd).acquire(name, tmp_path / "ev-save", case=CASE, preserve="save", progress=False)
        assert lab.state(name) == "running"
        result = acquirer(sshd).acquire(name, tmp_path / "ev", case=CASE, preserve="snapshot", progress=False)
        vm = result.manifest.source.vm
        assert vm.details["persistent"] is False and "transient" in vm.details["transient"]
        assert any("transient domain" in o.reason for o in result.manifest.omissions)
        assert lab.disk_source(name) == str(top)
        with open_image(evidence(result.path, "disks/vda/top.qcow2")) as image:
            assert image.read() == qemu_img_raw(top, tmp_path / "src.raw")
    finally:
        lab.remove_domain(name)


def test_network_disk_and_missing_backing_file_are_recorded(lab, sshd, tmp_path):
    _, top = lab.make_chain(tmp_path / "host")
    orphan = tmp_path / "host" / "vm" / "orphan.qcow2"
    gone = tmp_path / "host" / "vm" / "gone.qcow2"  # beneath the disk folder: missing, not refused
    run("qemu-img", "create", "-q", "-f", "qcow2", str(gone), "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(gone), "-F", "qcow2", str(orphan))
    gone.unlink()
    extra = (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='rbd' name='pool/evidence-disk'><host name='ceph.lab' port='6789'/></source>"
        "<target dev='vdb' bus='virtio'/></disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{orphan}'/>"
        "<target dev='vdc' bus='virtio'/></disk>"
    )
    name = "vmf-offline"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:02:01", extra), start=False)
    try:
        with pytest.raises(SourceError, match="shut off"):
            acquirer(sshd).acquire(name, tmp_path / "ev-snap", case=CASE, preserve="snapshot", progress=False)
        result = acquirer(sshd).acquire(name, tmp_path / "ev", case=CASE, preserve="none", progress=False)
        manifest = result.manifest
        assert verify(result.path).ok
        reasons = {o.source_path: o.reason for o in manifest.omissions}
        assert "rbd://ceph.lab:6789/pool/evidence-disk" in reasons
        assert "storage system" in reasons["rbd://ceph.lab:6789/pool/evidence-disk"]
        assert str(gone) in reasons and "backing file of disk vdc" in reasons[str(gone)]
        assert chain_of(manifest, "vdc")["broken_at"] == str(gone)
        assert not chain_of(manifest, "vdc")["opens_in_evidence"]
        assert evidence(result.path, "disks/vdc/orphan.qcow2").read_bytes() == orphan.read_bytes()
        assert chain_of(manifest, "vdb")["acquired"] is False
        assert manifest.actions == ()
        ledger = [json.loads(line) for line in (result.path / "custody.log.jsonl").read_text().splitlines()]
        assert any(e.get("action") == "disk-chain-incomplete" for e in ledger)
        with open_image(evidence(result.path, "disks/vda/top.qcow2")) as image:
            assert image.read() == qemu_img_raw(top, tmp_path / "src.raw")
    finally:
        lab.remove_domain(name)


def test_cli_acquires_a_shut_off_domain(lab, sshd, tmp_path, capsys):
    from vmforensics.cli import main

    _, top = lab.make_chain(tmp_path / "host")
    name = "vmf-cli"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:03:01"), start=False)
    try:
        argv = [
            "acquire",
            "libvirt",
            "--host",
            sshd.host,
            "--port",
            str(sshd.port),
            "--user",
            sshd.user,
            "--identity",
            str(sshd.client_key),
            "--known-hosts",
            str(sshd.known_hosts),
            "--domain",
            name,
            "--preserve",
            "none",
            "--out",
            str(tmp_path / "ev"),
            "--case",
            "KVM-2",
            "--examiner",
            "lab",
            "--no-progress",
            "--json",
        ]
        assert main(argv) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["source"]["vm"]["name"] == name
        assert verify(tmp_path / "ev").ok
    finally:
        lab.remove_domain(name)


def test_cleanup_after_a_failure_commits_back_and_removes_what_was_created(lab, sshd, guest, tmp_path):
    class FailsAfterSnapshot(LibvirtAcquirer):
        def enumerate(self, session: Session) -> list:
            raise SourceError("the examiner's disk filled up")

    acq = FailsAfterSnapshot(
        sshd.host, user=sshd.user, port=sshd.port, identity=sshd.client_key, known_hosts=sshd.known_hosts
    )
    with pytest.raises(SourceError, match="filled up"):
        acq.acquire(guest["name"], tmp_path / "ev", case=CASE, preserve="snapshot", progress=False)
    assert lab.disk_source(guest["name"]) == str(guest["top"])
    assert virsh("snapshot-list", guest["name"], "--name").strip() == ""
    assert sorted(p.name for p in Path(guest["top"]).parent.iterdir()) == ["top.qcow2"]
    ledger = [json.loads(line) for line in (tmp_path / "ev" / "custody.log.jsonl").read_text().splitlines()]
    ended = [e["details"]["action"] for e in ledger if e["action"] == "source-action-end"]
    assert ended == [
        "snapshot",
        "blockcommit",
        "delete-overlay",
        "delete-snapshot-metadata",
        "delete-snapshot-memory",
    ]


def test_on_the_host_itself_without_ssh(lab, tmp_path):
    _, top = lab.make_chain(tmp_path / "host")
    name = "vmf-local"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:04:01"), start=False)
    try:
        result = LibvirtAcquirer().acquire(name, tmp_path / "ev", case=CASE, preserve="none", progress=False)
        assert verify(result.path).ok and result.manifest.source.connection["transport"] == "file"
        assert evidence(result.path, "disks/vda/top.qcow2").read_bytes() == top.read_bytes()
    finally:
        lab.remove_domain(name)


def _bait_layout(folder: Path) -> tuple[Path, Path]:
    """vm/top.qcow2 whose header names ``../../elsewhere/bait.qcow2`` (relative text, as an attacker
    writes it): a qcow2 full of 0x77 in a folder that is no disk folder, pool or allowed root."""
    (folder / "vm").mkdir(parents=True)
    (folder / "elsewhere").mkdir()
    bait = folder / "elsewhere" / "bait.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(bait), "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 1M", str(bait))
    top = folder / "vm" / "top.qcow2"
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "../elsewhere/bait.qcow2",
        "-F",
        "qcow2",
        str(top),
        "1M",
    )
    return bait, top


def _ledger(result_path: Path) -> list[dict]:
    return [json.loads(line) for line in (result_path / "custody.log.jsonl").read_text().splitlines()]


def _evidence_files(result_path: Path) -> set[str]:
    root = result_path / "files" / "disks"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_backing_file_outside_the_roots_is_an_omission_and_never_read(lab, sshd, tmp_path):
    bait, top = _bait_layout(tmp_path / "host")
    name = "vmf-bait"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:01"), start=False)
    try:
        result = acquirer(sshd).acquire(name, tmp_path / "ev", case=CASE, preserve="none", progress=False)
        assert verify(result.path).ok
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        named = str(top.parent / "../elsewhere/bait.qcow2")  # as qemu-img reports it, unfolded
        assert named in reasons, reasons
        assert f"{bait} lies outside the acquisition roots" in reasons[named]
        assert "'../elsewhere/bait.qcow2'" in reasons[named]  # the header's exact text
        assert _evidence_files(result.path) == {"vda/top.qcow2"}
        chain = chain_of(result.manifest)
        assert [layer["evidence"] for layer in chain["layers"]] == ["files/disks/vda/top.qcow2"]
        assert chain["refused"]["kind"] == "outside-roots" and not chain["opens_in_evidence"]
        roots = next(e["details"] for e in _ledger(result.path) if e.get("action") == "backing-file-roots")
        assert roots["disk_folders"] == [str(top.parent)] and str(bait.parent) not in roots["pools"]
    finally:
        lab.remove_domain(name)


def test_allowed_root_opt_in_acquires_the_backing_file_and_records_it(lab, sshd, tmp_path):
    bait, top = _bait_layout(tmp_path / "host")
    name = "vmf-allowed"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:02"), start=False)
    try:
        result = acquirer(sshd).acquire(
            name,
            tmp_path / "ev",
            case=CASE,
            preserve="none",
            progress=False,
            allowed_roots=[str(bait.parent)],
        )
        assert verify(result.path).ok
        assert not [o for o in result.manifest.omissions if o.role == "disk"]
        assert evidence(result.path, "disks/vda/bait.qcow2").read_bytes() == bait.read_bytes()
        # read at the folded path, not at the header's vm/../elsewhere text
        sources = {f.local_path: f.source_path for f in result.manifest.files}
        assert sources["files/disks/vda/bait.qcow2"] == str(bait)
        assert chain_of(result.manifest)["opens_in_evidence"]
        with open_image(evidence(result.path, "disks/vda/top.qcow2")) as image:
            assert image.read() == qemu_img_raw(top, tmp_path / "src.raw")
        roots = next(e["details"] for e in _ledger(result.path) if e.get("action") == "backing-file-roots")
        assert roots["allowed_roots"] == [str(bait.parent)]
        assert str(bait.parent) in json.dumps(result.manifest.options)
    finally:
        lab.remove_domain(name)


def test_backing_file_through_a_symlinked_directory_is_an_omission(lab, sshd, tmp_path):
    host = tmp_path / "host"
    (host / "vm").mkdir(parents=True)
    (host / "real").mkdir()
    (host / "vm" / "link").symlink_to(host / "real")
    hidden = host / "real" / "base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(hidden), "1M")
    top = host / "vm" / "top.qcow2"
    backing = str(host / "vm" / "link" / "base.qcow2")  # lexically beneath vm/, the disk's folder
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", str(top))
    name = "vmf-symlink"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:03"), start=False)
    try:
        result = acquirer(sshd).acquire(name, tmp_path / "ev", case=CASE, preserve="none", progress=False)
        assert verify(result.path).ok
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert backing in reasons, reasons
        assert f"reached through the symbolic link {host / 'vm' / 'link'}" in reasons[backing]
        assert _evidence_files(result.path) == {"vda/top.qcow2"}
    finally:
        lab.remove_domain(name)


def _acquire_in_time(sshd: SSHServer, name: str, out: Path, seconds: float = 60.0):
    """The acquisition in a thread: a FIFO that is opened blocks it, which fails the test."""
    return within(
        seconds,
        lambda: acquirer(sshd, command_timeout=seconds).acquire(
            name, out, case=CASE, preserve="none", progress=False
        ),
        "the acquisition blocked on a file the chain names",
    )


def _commands(result_path: Path) -> list[str]:
    """Every command the acquisition ran on the host (its ledger's record)."""
    entry = next(e for e in _ledger(result_path) if e.get("action") == "host-commands")
    return [c["command"] for c in entry["details"]["commands"]]


def _top_with_backing(folder: Path, backing: str, fmt: str = "qcow2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, str(top), "1M")
    return top


def test_fifo_named_as_backing_file_is_an_omission_without_waiting(lab, sshd, tmp_path):
    vm = tmp_path / "host" / "vm"
    vm.mkdir(parents=True)
    os.mkfifo(vm / "pipe.qcow2")  # beneath the disk's own folder: only its type refuses it
    top = _top_with_backing(vm, str(vm / "pipe.qcow2"))
    name = "vmf-fifo"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:04"), start=False)
    try:
        result = _acquire_in_time(sshd, name, tmp_path / "ev")
        assert verify(result.path).ok
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert f"{vm / 'pipe.qcow2'} is a fifo, not a regular file" in reasons[str(vm / "pipe.qcow2")]
        assert f"named {str(vm / 'pipe.qcow2')!r} in {top}" in reasons[str(vm / "pipe.qcow2")]
        assert _evidence_files(result.path) == {"vda/top.qcow2"}
        assert not [c for c in _commands(result.path) if "pipe.qcow2" in c and c.startswith("qemu-img")]
    finally:
        lab.remove_domain(name)


def test_backing_file_outside_the_roots_is_never_opened_by_qemu_img(lab, sshd, tmp_path):
    host = tmp_path / "host"
    (host / "elsewhere").mkdir(parents=True)
    fifo = host / "elsewhere" / "trap.qcow2"
    os.mkfifo(fifo)  # qemu-img opening it would block until the command timeout
    top = _top_with_backing(host / "vm", "../elsewhere/trap.qcow2")
    name = "vmf-trap"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:05"), start=False)
    try:
        result = _acquire_in_time(sshd, name, tmp_path / "ev")
        assert verify(result.path).ok
        named = str(top.parent / "../elsewhere/trap.qcow2")
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert f"{fifo} lies outside the acquisition roots" in reasons[named]
        assert "'../elsewhere/trap.qcow2'" in reasons[named]
        sent = _commands(result.path)
        assert [c for c in sent if c.startswith("qemu-img")] == [
            f"qemu-img info -U --output=json -f qcow2 -- {top}"
        ]
        assert not [c for c in sent if "elsewhere" in c]  # not even stat: refused on the name alone
    finally:
        lab.remove_domain(name)


def test_data_file_outside_the_roots_is_refused_before_qemu_img_opens_the_image(lab, sshd, tmp_path):
    host = tmp_path / "host"
    (host / "vm").mkdir(parents=True)
    (host / "elsewhere").mkdir()
    top = host / "vm" / "top.qcow2"
    data = host / "elsewhere" / "data.raw"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={data}", str(top), "1M")
    name = "vmf-datafile"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:06"), start=False)
    try:
        result = _acquire_in_time(sshd, name, tmp_path / "ev")
        assert verify(result.path).ok
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert f"{data} lies outside the acquisition roots" in reasons[str(data)]
        assert f"named {str(data)!r} in {top}" in reasons[str(data)]
        assert _evidence_files(result.path) == {"vda/top.qcow2"}  # the image itself is safe to copy
        assert not [c for c in _commands(result.path) if c.startswith("qemu-img")]
    finally:
        lab.remove_domain(name)


def test_vmdk_layer_whose_extents_qemu_img_would_open_is_refused(lab, sshd, tmp_path):
    vm = tmp_path / "host" / "vm"
    vm.mkdir(parents=True)
    os.mkfifo(vm / "extent.raw")
    (vm / "base.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 2048 FLAT "extent.raw" 0\n'
    )
    top = _top_with_backing(vm, "base.vmdk", fmt="vmdk")
    name = "vmf-vmdk"
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:07"), start=False)
    try:
        result = _acquire_in_time(sshd, name, tmp_path / "ev")
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert "is a 'vmdk' image: qemu-img would open the files it names" in reasons[str(vm / "base.vmdk")]
        assert not [c for c in _commands(result.path) if "base.vmdk" in c and c.startswith("qemu-img")]
        assert verify(result.path).ok
    finally:
        lab.remove_domain(name)


def test_a_fifo_where_the_domain_log_should_be_is_an_omission_without_waiting(lab, sshd, tmp_path):
    """Files beside the chain (log, nvram, memory and state files) are typed on the host before the
    SFTP open, which a FIFO would block."""
    _, top = lab.make_chain(tmp_path / "host")
    name = "vmf-logfifo"
    log = Path(f"/var/log/libvirt/qemu/{name}.log")
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:05:08"), start=False)
    log.unlink(missing_ok=True)
    os.mkfifo(log)
    try:
        result = _acquire_in_time(sshd, name, tmp_path / "ev")
        reasons = {o.source_path: o.reason for o in result.manifest.omissions}
        assert f"{log} is a fifo, not a regular file" in reasons[str(log)]
        assert verify(result.path).ok
    finally:
        log.unlink(missing_ok=True)
        lab.remove_domain(name)


# -- domain XML, no daemon needed ------------------------------------------------------------------


def test_every_secret_form_is_removed_and_listed_without_its_value():
    xml = (
        "<domain type='kvm'><name>w</name><devices>\n"
        "<graphics type='vnc' port='-1' passwd='s3cr&apos;t' passwdValidTo='2030-01-01T00:00:00'/>\n"
        '<graphics type="spice" autoport="yes" passwd="sp1ce"><listen type=\'none\'/></graphics>\n'
        "<disk type='network' device='disk'><source protocol='https' name='/img'>"
        "<host name='web'/><cookies><cookie name='session'>c00kie</cookie></cookies></source>"
        "<auth username='u'><secret type='iscsi' usage='target1'/></auth><target dev='vdb'/></disk>\n"
        "</devices></domain>"
    )
    clean, removed = redact_secrets(xml)
    for secret in ("s3cr", "sp1ce", "c00kie"):
        assert secret not in clean
    assert [(r.element, r.attribute, r.line) for r in removed] == [
        ("graphics", "passwd", 2),
        ("graphics", "passwd", 3),
        ("cookie", None, 4),
    ]
    assert clean.count(REDACTED) == 3 and "passwdValidTo='2030-01-01T00:00:00'" in clean
    disk = parse_domain(clean).disks[0]
    assert (disk.type, disk.protocol, disk.hosts, disk.secret_references) == (
        "network",
        "https",
        ("web",),
        ("iscsi:target1",),
    )


def test_xml_with_a_document_type_is_refused():
    with pytest.raises(SourceError, match="document type"):
        parse_domain('<!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>')
    with pytest.raises(SourceError, match="not well-formed"):
        parse_domain("<domain><name>x</domain>")
