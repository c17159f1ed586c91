"""QemuAcquirer against a real QEMU (TCG) guest with a QMP unix socket, reached through a real sshd.

The library reaches QMP through ``socat`` on an SSH exec channel; the tests look at the guest
through their own QMP connection and use ``qemu-img convert`` as the oracle for disk contents and
Volatility 3 for the ELF memory image. Writes made by the test after the snapshot point (through
QMP ``human-monitor-command`` qemu-io, the guest runs no OS) must land in the overlay, stay out of
the evidence, and be in the original image after cleanup's block-commit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.acquire import qemu_lab
from tests.acquire.qemu_lab import BANNER_ADDRESS, Guest, convert_to_raw, qemu_img, short_root
from tests.interop.vmware_state import BANNER
from tests.test_docs import RECIPE
from tests.transport.sshd import SSHServer
from vmforensics import CaseInfo, verify
from vmforensics.cli import main
from vmforensics.errors import SourceError, UsageError
from vmforensics.hypervisors.qemu.acquirer import QemuAcquirer
from vmforensics.hypervisors.qemu.identify import MAX_DEPTH, layers_from_image, run_state
from vmforensics.hypervisors.qemu.qmp import MESSAGE_LIMIT, QMPClient
from vmforensics.memory.open import open_memory

pytestmark = pytest.mark.skipif(qemu_lab.available() is not None, reason=str(qemu_lab.available()))

CASE = CaseInfo(case_id="2026-17", examiner="A. Analyst")
VOL = "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; main()"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with SSHServer(tmp_path_factory.mktemp("sshd-qemu")) as server:
        yield server


def acquirer(sshd: SSHServer, cls=QemuAcquirer, **options) -> QemuAcquirer:
    return cls(
        sshd.host,
        user=sshd.user,
        port=sshd.port,
        identity=sshd.client_key,
        known_hosts=sshd.known_hosts,
        **options,
    )


class FrozenProbe(QemuAcquirer):
    """Between preserve and stream: convert the frozen originals (the oracle), then write more."""

    def enumerate(self, session):
        guest: Guest = self.guest
        self.frozen = {
            "drive-scsi0": convert_to_raw(guest.disk, guest.root / "frozen0.raw", fmt="qcow2"),
            "drive-scsi1": convert_to_raw(guest.raw, guest.root / "frozen1.raw", fmt="raw"),
        }
        guest.write("drive-scsi0", "write -P 0x42 128k 64k")
        guest.write("drive-scsi1", "write -P 0x43 0 4k")
        return super().enumerate(session)


@pytest.fixture(scope="module")
def paused(sshd):
    root = short_root("qp")
    with Guest(root) as guest:
        acq = acquirer(sshd, FrozenProbe)
        acq.guest = guest
        result = acq.acquire(str(guest.qmp_path), root / "out", case=CASE, preserve="pause", progress=False)
        yield guest, acq, result


def evidence(result, suffix: str) -> Path:
    return next(result.path / f.local_path for f in result.files if f.local_path.endswith(suffix))


def test_pause_acquires_the_chain_as_frozen_at_the_snapshot(paused):
    guest, acq, result = paused
    qcow2, raw = evidence(result, "disk0.qcow2"), evidence(result, "disk1.raw")

    assert convert_to_raw(qcow2, guest.root / "got0.raw", fmt="qcow2") == acq.frozen["drive-scsi0"]
    assert raw.read_bytes() == acq.frozen["drive-scsi1"]
    assert acq.frozen["drive-scsi0"][:65536] == b"A" * 65536  # written while running, before the snapshot
    assert b"B" * 65536 not in acq.frozen["drive-scsi0"]
    assert verify(result.path).ok


def test_cleanup_commits_the_later_writes_back_and_leaves_no_overlay(paused):
    guest, _acq, result = paused
    now = convert_to_raw(guest.disk, guest.root / "now0.raw", fmt="qcow2")

    assert now[128 << 10 : 192 << 10] == b"B" * 65536
    assert guest.raw.read_bytes()[:4096] == b"C" * 4096
    assert guest.tops() == {"drive-scsi0": str(guest.disk), "drive-scsi1": str(guest.raw)}
    assert set(guest.node_files()) == {str(guest.disk), str(guest.raw)}
    assert not list(guest.root.glob("*.vmf*.qcow2"))
    assert not list(guest.root.glob("vmforensics-*"))  # the memory image was removed from the host
    assert guest.status() == "running"
    actions = [a.action for a in result.manifest.actions]
    assert actions == [
        "stop",
        "memory-dump",
        "snapshot",
        "cont",
        "block-commit",
        "delete-overlay",
        "block-commit",
        "delete-overlay",
        "delete-memory-dump",
    ]
    assert all(a.outcome == "ok" for a in result.manifest.actions)


def test_identity_comes_from_qmp_and_the_clock_is_measured(paused, sshd):
    guest, _acq, result = paused
    vm = result.manifest.source.vm

    assert (vm.name, vm.uuid, vm.mac_addresses) == (guest.name, guest.uuid, (guest.mac,))
    assert vm.power_state_before == "running" and vm.power_state_after == "running"
    assert result.manifest.source.product["version"].startswith("7.")
    assert result.manifest.clock.skew_seconds is not None and abs(result.manifest.clock.skew_seconds) < 5
    assert result.manifest.source.connection["host_key_fingerprint"] == sshd.host_key_fingerprint
    omitted = {o.source_path for o in result.omissions}
    assert any(".vmf" in path and path.endswith(".qcow2") for path in omitted)


def test_elf_memory_image_opens_in_volatility_with_the_planted_banner(paused):
    _guest, _acq, result = paused
    elf = evidence(result, ".elf")
    assert {f.role for f in result.files if f.local_path.endswith(".elf")} == {"memory"}
    done = subprocess.run(
        [sys.executable, "-c", VOL, "-q", "-r", "json", "-f", str(elf), "banners.Banners"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout[done.stdout.index("[") :])
    assert any(r["Banner"].startswith(BANNER.decode()) and r["Offset"] == BANNER_ADDRESS for r in rows), rows


def test_save_writes_a_migration_stream_and_the_vm_runs_on(sshd):
    root = short_root("qs")
    with Guest(root, name="db01") as guest:
        result = acquirer(sshd).acquire(
            str(guest.qmp_path), root / "out", case=CASE, preserve="save", progress=False
        )
        state = evidence(result, ".qevm")

        assert state.read_bytes()[:4] == b"QEVM"
        with open_memory(state) as saved:  # the planted banner at its guest-physical address
            assert saved.read(BANNER_ADDRESS, len(BANNER)) == BANNER
        assert {f.role for f in result.files if f.local_path.endswith(".qevm")} == {"memory-state"}
        assert guest.status() == "running"
        assert guest.tops() == {"drive-scsi0": str(guest.disk), "drive-scsi1": str(guest.raw)}
        assert not list(root.glob("*.vmf*.qcow2")) and not list(root.glob("vmforensics-*"))


def test_keep_running_false_leaves_the_vm_paused_on_its_original_images(sshd):
    root = short_root("qk")
    with Guest(root, name="kp01") as guest:
        acq = acquirer(sshd, keep_running=False)
        result = acq.acquire(
            str(guest.qmp_path), root / "out", case=CASE, preserve="pause", memory=False, progress=False
        )

        assert guest.status() == "paused"
        assert result.manifest.source.vm.power_state_after == "paused"
        assert guest.tops() == {"drive-scsi0": str(guest.disk), "drive-scsi1": str(guest.raw)}
        assert "cont" not in [a.action for a in result.manifest.actions]
        assert not any(f.role == "memory" for f in result.files)


def test_save_while_kept_paused_is_refused_before_any_change(sshd):
    root = short_root("qr")
    with Guest(root, name="rf01") as guest:
        with pytest.raises(UsageError, match="drop --keep-paused"):
            acquirer(sshd, keep_running=False).acquire(
                str(guest.qmp_path), root / "out", case=CASE, preserve="save", progress=False
            )
        assert guest.status() == "running"
        assert guest.tops() == {"drive-scsi0": str(guest.disk), "drive-scsi1": str(guest.raw)}


def test_a_path_without_a_qmp_socket_is_a_clear_error(sshd, tmp_path):
    with pytest.raises(SourceError, match="no unix socket"):
        acquirer(sshd).acquire(str(tmp_path / "nothing.qmp"), tmp_path / "out", case=CASE, progress=False)


def test_on_the_host_itself_without_ssh(tmp_path):
    root = short_root("ql")
    out = short_root("qlo") / "out"  # not beneath the drive's folder: that is refused (below)
    with Guest(root, name="lo01") as guest:
        result = QemuAcquirer(None).acquire(
            str(guest.qmp_path), out, case=CASE, preserve="pause", progress=False
        )
        assert verify(result.path).ok
        assert result.manifest.source.connection["transport"] == "file"
        assert guest.tops()["drive-scsi0"] == str(guest.disk)


def test_block_device_disk_is_read_at_its_size(sshd):
    """A loop device stands in for an LVM-thin volume: planned with blockdev --getsize64, read by dd."""
    root = short_root("qb")
    backing = root / "lv.img"
    backing.write_bytes(bytes(range(256)) * (3 << 12))  # 3 MiB, not a power of two of blocks
    attach = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        with Guest(root, name="lv01", extra_drives=(("drive-scsi2", device, "raw"),)) as guest:
            result = acquirer(sshd, host_workdir=str(root)).acquire(
                str(guest.qmp_path), root / "out", case=CASE, preserve="pause", memory=False, progress=False
            )
            got = evidence(result, Path(device).name)
            assert got.read_bytes() == backing.read_bytes()
            assert guest.tops()["drive-scsi2"] == device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


# -- a hostile QMP peer ---------------------------------------------------------------------------


def hostile_peer(*chunks: bytes) -> QMPClient:
    """A socketpair whose far end sends ``chunks`` (a fake QMP server written for these tests:
    no real QEMU misbehaves on purpose), then the client built on the near end."""
    near, far = socket.socketpair()

    def serve() -> None:
        try:
            for chunk in chunks:
                far.sendall(chunk)
            while far.recv(65536):  # stay connected (and read the client's commands) until it closes
                pass
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return QMPClient(near, where="hostile peer", timeout=5)


def test_qmp_peer_sending_an_endless_line_is_cut_off():
    with pytest.raises(SourceError, match="longer than"):
        hostile_peer(b"{" + b" " * (MESSAGE_LIMIT + 65536))


def test_qmp_peer_that_does_not_greet_as_qmp_is_refused():
    with pytest.raises(SourceError, match="did not greet"):
        hostile_peer(b'{"hello": 1}\n')


def test_qmp_peer_sending_garbage_is_refused():
    with pytest.raises(SourceError, match="not JSON"):
        hostile_peer(b"\xff\xfe not json\n")


def test_docs_python_example_runs(sshd, tmp_path):
    text = (Path(__file__).resolve().parents[2] / "docs" / "qemu.md").read_text()
    recipe = dict((name, body) for name, _lang, body in RECIPE.findall(text))["qemu-python"]
    root = short_root("qd")
    with Guest(root, name="doc01") as guest:
        namespace = {
            "HOST": sshd.host,
            "PORT": sshd.port,
            "KEY": str(sshd.client_key),
            "KNOWN_HOSTS": str(sshd.known_hosts),
            "QMP_SOCKET": str(guest.qmp_path),
            "OUT": str(root / "out"),
        }
        exec(compile(recipe, "docs/qemu.md", "exec"), namespace)
        assert namespace["result"].manifest.source.vm.name == "doc01"
        assert guest.tops()["drive-scsi0"] == str(guest.disk)


class FailsWhileCopying(QemuAcquirer):
    """The acquisition breaks after the snapshot (as a lost evidence disk would)."""

    def enumerate(self, session):
        super().enumerate(session)
        raise SourceError("evidence disk went away")


def test_cleanup_after_a_failure_commits_back_and_removes_what_was_created(sshd):
    root = short_root("qf")
    with Guest(root, name="fl01") as guest:
        with pytest.raises(SourceError, match="evidence disk went away"):
            acquirer(sshd, FailsWhileCopying).acquire(
                str(guest.qmp_path), root / "out", case=CASE, preserve="pause", progress=False
            )
        assert guest.tops() == {"drive-scsi0": str(guest.disk), "drive-scsi1": str(guest.raw)}
        assert set(guest.node_files()) == {str(guest.disk), str(guest.raw)}
        assert not list(root.glob("*.vmf*.qcow2")) and not list(root.glob("vmforensics-*"))
        assert guest.status() == "running"
        log = (root / "out" / "custody.log.jsonl").read_text()
        assert '"block-commit"' in log and '"failed"' in log


def test_qmp_reply_of_the_wrong_type_is_refused():
    greeting = b'{"QMP": {"version": {}, "capabilities": []}}\n{"return": {}, "id": "vmf-1"}\n'
    qmp = hostile_peer(greeting + b'{"return": [1, 2], "id": "vmf-2"}\n')
    with pytest.raises(SourceError, match="did not return a run state"):
        run_state(qmp)


def test_backing_chain_deeper_than_the_limit_is_cut_and_says_so():
    image: dict | None = None
    for number in range(MAX_DEPTH + 50):
        image = {"filename": f"/d/{number}.qcow2", "format": "qcow2", "backing-image": image}
    layers, cut = layers_from_image(image)
    assert cut and len(layers) == MAX_DEPTH


def test_blockdev_drives_without_a_drive_id_are_snapshotted_and_committed_back(sshd):
    """-blockdev node graphs (libvirt, Proxmox VE 9) have no drive id: nodes are addressed by name."""
    root = short_root("qn")
    with Guest(root, name="bd01", blockdev=True) as guest:
        before = guest.tops()
        result = acquirer(sshd).acquire(
            str(guest.qmp_path), root / "out", case=CASE, preserve="pause", memory=False, progress=False
        )
        qcow2 = evidence(result, "disk0.qcow2")
        assert convert_to_raw(qcow2, root / "got.raw", fmt="qcow2")[:65536] == b"A" * 65536
        assert guest.tops() == before and str(guest.disk) in before.values()
        assert set(guest.node_files()) == {str(guest.disk), str(guest.raw)}
        assert not list(root.glob("*.vmf*.qcow2"))


def test_backing_files_outside_the_drive_folders_need_an_allowed_root(sshd):
    """A backing file name is written in the image header (source content): confined like any other."""
    root = short_root("qc")
    elsewhere = short_root("qe")  # not beneath the drive's folder
    qemu_img("create", "-q", "-f", "qcow2", str(elsewhere / "base.qcow2"), "16M")
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(elsewhere / "base.qcow2"),
        "-F",
        "qcow2",
        str(root / "disk0.qcow2"),
    )
    with Guest(root, name="cf01") as guest:
        refused = acquirer(sshd).acquire(str(guest.qmp_path), root / "out1", case=CASE, progress=False)
        allowed = acquirer(sshd).acquire(
            str(guest.qmp_path), root / "out2", case=CASE, progress=False, allowed_roots=[str(elsewhere)]
        )
    reasons = {o.source_path: o.reason for o in refused.omissions}
    assert "outside the acquisition roots" in reasons[str(elsewhere / "base.qcow2")]
    assert not any(f.local_path.endswith("base.qcow2") for f in refused.files)
    assert any(f.local_path.endswith("disks/drive-scsi0/base.qcow2") for f in allowed.files)


def test_backing_file_that_is_a_symbolic_link_is_omitted(sshd):
    root = short_root("qy")
    qemu_img("create", "-q", "-f", "qcow2", str(root / "real-base.qcow2"), "16M")
    (root / "base.qcow2").symlink_to(root / "real-base.qcow2")
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(root / "base.qcow2"),
        "-F",
        "qcow2",
        str(root / "disk0.qcow2"),
    )
    with Guest(root, name="sy01") as guest:
        result = acquirer(sshd).acquire(str(guest.qmp_path), root / "out", case=CASE, progress=False)
    reasons = {o.source_path: o.reason for o in result.omissions}
    assert "symbolic link" in reasons[str(root / "base.qcow2")]


def test_backing_file_through_a_symlinked_directory_is_omitted_locally_and_over_ssh(sshd):
    """The backing name is lexically beneath the drive's folder, but a folder on the way is a link
    to a place outside it; locally the confinement resolves by descriptor, over SSH every component
    is stat-ed. On this machine ``--out`` inside the drive's folder is refused before anything is
    written (the folders come from a read-only QMP query-block)."""
    root = short_root("qd")
    elsewhere = short_root("qx")
    qemu_img("create", "-q", "-f", "qcow2", str(elsewhere / "base.qcow2"), "16M")
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    backing = str(root / "link" / "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", str(root / "disk0.qcow2"))
    outs = short_root("qdo")
    with Guest(root, name="sd01") as guest:
        with pytest.raises(UsageError, match="inside the source"):
            QemuAcquirer(None).acquire(str(guest.qmp_path), root / "ev", case=CASE, progress=False)
        assert not (root / "ev").exists()
        local = QemuAcquirer(None).acquire(str(guest.qmp_path), outs / "local", case=CASE, progress=False)
        remote = acquirer(sshd).acquire(str(guest.qmp_path), outs / "ssh", case=CASE, progress=False)
    for result in (local, remote):
        reasons = {o.source_path: o.reason for o in result.omissions}
        assert "symbolic link" in reasons[backing], reasons
        assert not any(f.local_path.endswith("base.qcow2") for f in result.files)
        assert any(f.local_path.endswith("disk0.qcow2") for f in result.files)
        assert verify(result.path).ok


def test_cli_acquire_qemu_pauses_acquires_and_resumes(sshd, capsys):
    root = short_root("qi")
    with Guest(root, name="cli01") as guest:
        ssh = ["--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user]
        ssh += ["--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts)]
        common = ["acquire", "qemu", *ssh, "--qmp", str(guest.qmp_path), "--case", "C-17", "--no-progress"]
        status = main([*common, "--out", str(root / "out"), "--preserve", "pause", "--json"])
        manifest = json.loads(capsys.readouterr().out)
        assert status == 0
        assert manifest["source"]["kind"] == "qemu" and manifest["source"]["vm"]["name"] == "cli01"
        assert [a["action"] for a in manifest["actions"]][:4] == ["stop", "memory-dump", "snapshot", "cont"]
        assert guest.tops()["drive-scsi0"] == str(guest.disk) and guest.status() == "running"
        refused = main([*common, "--out", str(root / "out2"), "--isolate"])
        assert refused == 2
        assert guest.status() == "running"


def test_stale_qmp_socket_of_a_crashed_vm_reports_what_socat_said(sshd, tmp_path):
    stale = short_root("qz") / "dead.qmp"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # the socket file stays, nobody listens: as after QEMU was killed
    with pytest.raises(SourceError, match="Connection refused"):
        acquirer(sshd).acquire(str(stale), tmp_path / "out", case=CASE, progress=False)
