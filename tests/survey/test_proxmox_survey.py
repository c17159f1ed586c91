"""survey_proxmox on a Proxmox VE node's layout written by the test, with one real QEMU (TCG) guest.

No Proxmox packages exist for Debian here: the node is its files under a temporary root
(``config_root``/``run_root``), one VM runs as a real QEMU process with its QMP socket where
Proxmox keeps it, the others are configs whose disks were last written long ago. Reached through
a real sshd.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.acquire import qemu_lab
from tests.acquire.qemu_lab import ProxmoxNode, short_root
from tests.transport.sshd import SSHServer
from vmforensics.cli import main
from vmforensics.hypervisors.qemu.survey import survey_proxmox

pytestmark = pytest.mark.skipif(qemu_lab.available() is not None, reason=str(qemu_lab.available()))

MAC = "bc:24:11:5e:a0:01"


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory):
    node = ProxmoxNode(short_root("pvs"))
    try:
        with SSHServer(tmp_path_factory.mktemp("sshd-pvs")) as sshd:
            node.start_vm(100, name="web01", uuid="0b5e7c9a-3f41-4d2b-8e6a-9c0d1e2f3a4b", mac=MAC)
            node.write_vm(101, name="web01-copy", uuid="1b5e7c9a-3f41-4d2b-8e6a-9c0d1e2f3a4b", mac=MAC)
            dormant = node.images / "101"
            for name in ("vm-101-disk-0.qcow2", "vm-101-disk-1.raw"):
                (dormant / name).write_bytes(b"\0" * 4096)
                old = time.time() - 400 * 86400
                os.utime(dormant / name, (old, old))
            (node.config_root / "qemu-server" / "102.conf").write_text("this is not a config\n")
            orphan = node.images / "555" / "vm-555-disk-0.qcow2"
            orphan.parent.mkdir(parents=True)
            orphan.write_bytes(b"\0" * 8192)
            report = survey_proxmox(
                sshd.host,
                user=sshd.user,
                port=sshd.port,
                identity=sshd.client_key,
                known_hosts=sshd.known_hosts,
                config_root=str(node.config_root),
                run_root=str(node.run_root),
            )
            yield node, report
    finally:
        node.stop()


def test_vms_configs_snapshots_and_disks_are_listed(surveyed):
    node, report = surveyed
    vms = {vm.reference: vm for vm in report.vms}

    assert set(vms) == {"100", "101"}
    web = vms["100"]
    assert (web.name, web.power_state, web.config_path) == (
        "web01",
        "running",
        str(node.config_root / "qemu-server/100.conf"),
    )
    assert web.macs == (MAC, "bc:24:11:5e:a0:02")
    assert [n.network for n in web.nics] == ["vmbr0", "vmbr1"]
    assert [(s.name, s.memory, s.created) for s in web.snapshots] == [
        ("before-upgrade", True, "2023-11-14T22:15:00.000000Z")
    ]
    assert [d.path for d in web.disks] == [
        str(node.images / "100/vm-100-disk-0.qcow2"),
        str(node.images / "100/vm-100-disk-1.raw"),
    ]
    assert web.disks[0].capacity == 16 << 20
    assert vms["101"].power_state == "stopped"


def test_duplicate_macs_and_dormant_vms_are_found(surveyed):
    _node, report = surveyed
    duplicate = {f.subject for f in report.findings_of("duplicate-mac")}
    dormant = {f.subject for f in report.findings_of("dormant-vm")}

    assert duplicate == {"web01", "web01-copy"}
    assert dormant == {"web01-copy"}


def test_a_broken_config_is_noted_and_files_no_config_names_are_listed(surveyed):
    node, report = surveyed

    assert any("102.conf" in note and "not a 'key: value' line" in note for note in report.notes)
    assert [f.path for f in report.unclaimed_files] == [str(node.images / "555/vm-555-disk-0.qcow2")]
    assert report.findings_of("orphaned-files")


def test_cli_survey_proxmox_prints_the_report_as_json(tmp_path_factory, capsys):
    node = ProxmoxNode(short_root("pvc"))
    try:
        node.write_vm(200, name="files01", uuid="2b5e7c9a-3f41-4d2b-8e6a-9c0d1e2f3a4b", mac=MAC)
        with SSHServer(tmp_path_factory.mktemp("sshd-pvc")) as sshd:
            ssh = ["--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user]
            ssh += ["--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts)]
            roots = ["--config-root", str(node.config_root), "--run-root", str(node.run_root)]
            status = main(["survey", "proxmox", *ssh, *roots, "--json"])
        report = json.loads(capsys.readouterr().out)
        assert status == 0
        assert [(vm["reference"], vm["name"], vm["power_state"]) for vm in report["vms"]] == [
            ("200", "files01", "stopped")
        ]
    finally:
        node.stop()
