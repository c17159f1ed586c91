"""From ``survey … --json`` to ``acquire-batch`` for remote hypervisors, end to end with real parts:
the libvirt lab (a real libvirtd with QEMU guests, reached over a real OpenSSH sshd) and govmomi's
vcsim (a real vSphere API over TLS). The survey records how to reconnect, never a secret; the plan
says where the workers find the secret; every member is sealed and ``verify`` of the batch holds.
Acquired bytes are compared with the source files read directly (qemu-img for the libvirt disks)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acquire import libvirt_lab
from tests.acquire.libvirt_lab import LibvirtLab
from tests.memory_keyring import memory_keyring
from tests.transport.sshd import SSHServer
from vmforensics.cli import main

KEY_PASSPHRASE = "planted-identity-passphrase-4d1e"
VC_PASSWORD = "planted-vc-password-93b7"


def no_secret_in(folder: Path, secret: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- libvirt -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtLab]:
    if reason := libvirt_lab.available():
        pytest.skip(reason)
    with LibvirtLab(tmp_path_factory.mktemp("libvirt-batch")) as running:
        yield running


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    with SSHServer(tmp_path_factory.mktemp("sshd-batch")) as server:
        yield server


def test_libvirt_survey_json_to_acquire_batch_on_two_local_workers_then_verify(
    lab: LibvirtLab,
    sshd: SSHServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SSH identity is encrypted: its passphrase is the secret (paramiko decrypts the key with
    the password it is given), set for the survey command and named by ``--password-env``."""
    tag = uuid.uuid4().hex[:6]
    names = [f"vmf-batch{i}-{tag}" for i in range(2)]
    tops = {}
    for index, name in enumerate(names):
        _, tops[name] = lab.make_chain(tmp_path / name)
        lab.define(name, lab.domain_xml(name, tops[name], f"52:54:00:5b:00:{index + 1:02x}"), start=False)
    identity = tmp_path / "ir_ed25519"
    shutil.copy(sshd.client_key, identity)
    identity.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-f", str(identity), "-P", "", "-N", KEY_PASSPHRASE], check=True
    )
    try:
        monkeypatch.setenv("VMFORENSICS_PASSWORD", KEY_PASSPHRASE)  # what the survey command reads
        assert main(["survey", "libvirt", "--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user,
                     "--identity", str(identity), "--known-hosts", str(sshd.known_hosts), "--password-auth",
                     "--json"]) == 0  # fmt: skip
        survey = tmp_path / "kvm01.json"
        survey.write_bytes(capsys.readouterr().out.encode())
        monkeypatch.delenv("VMFORENSICS_PASSWORD")
        recorded = json.loads(survey.read_bytes())["acquirer"]
        assert recorded == {
            "kind": "libvirt",
            "secrets": ["password"],
            "settings": {
                "host": sshd.host,
                "port": sshd.port,
                "user": sshd.user,
                "identity": str(identity),
                "known_hosts": str(sshd.known_hosts),
                "uri": "qemu:///system",
                "virsh": "virsh",
                "qemu_img": "qemu-img",
            },
        }
        # the lab's libvirtd is shared with other tests: the plan selects this test's domains
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"surveys": [{"path": survey.name, "select": {"names": names}}]}))
        out = tmp_path / "batch"
        monkeypatch.setenv("VMF_TEST_KVM_PASS", KEY_PASSPHRASE)
        code = main(["acquire-batch", str(plan), "--out", str(out), "--local", "2", "--password-env",
                     "VMF_TEST_KVM_PASS", "--case", "2026-120", "--examiner", "A. Analyst", "--no-progress"])  # fmt: skip
        assert code == 0, capsys.readouterr()
        missing = tmp_path / "no-secret"
        assert main(["acquire-batch", str(plan), "--out", str(missing), "--local", "2", "--password-env",
                     "VMF_TEST_UNSET_PASS", "--case", "2026-120", "--no-progress"]) == 1  # fmt: skip
    finally:
        for name in names:
            lab.remove_domain(name)

    assert main(["verify", str(out)]) == 0
    record = json.loads((out / "batch.json").read_bytes())
    assert {m["name"]: m["outcome"] for m in record["members"]} == dict.fromkeys(names, "sealed")
    assert all(m["plan"]["secrets"] == {"password": {"env": "VMF_TEST_KVM_PASS"}} for m in record["members"])
    for member in record["members"]:
        manifest = json.loads((out / member["directory"] / "manifest.json").read_bytes())
        assert manifest["source"]["kind"] == "libvirt" and manifest["source"]["vm"]["name"] == member["name"]
        top = next(f for f in manifest["files"] if f["local_path"].endswith("top.qcow2"))
        assert top["hashes"]["sha256"] == sha256(tops[member["name"]])  # the source file, read here
    failed = json.loads((missing / "batch.json").read_bytes())["members"]
    assert all("VMF_TEST_UNSET_PASS is not set" in m["reason"] for m in failed)
    assert "Accepted publickey for root" in sshd.log.read_text()
    no_secret_in(out, KEY_PASSPHRASE)
    assert KEY_PASSPHRASE.encode() not in survey.read_bytes() + plan.read_bytes()


# --- VMware (vcsim) ------------------------------------------------------------------------------


def vcsim_or_skip() -> None:
    pytest.importorskip("pyVmomi")
    if shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir():
        pytest.skip("vcsim needs golang-go and golang-github-vmware-govmomi-dev")


def test_vcsim_survey_json_to_acquire_batch_with_the_password_named_per_host_in_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    vcsim_or_skip()
    from tests.acquire.vcsim.esxi_files import write_disk
    from tests.acquire.vcsim.server import VCSim

    with VCSim(tmp_path / "vcsim", password=VC_PASSWORD) as server:
        datastore = server.datastore_dir()
        for vm in server.vms:
            (tmp_path / vm).mkdir()
            write_disk(datastore / vm, tmp_path / vm)
        monkeypatch.setenv("VMFORENSICS_PASSWORD", VC_PASSWORD)
        assert main(["survey", "vmware", "--host", server.host, "--port", str(server.port), "--user", server.user,
                     "--tls-thumbprint", server.thumbprint_sha256, "--json"]) == 0  # fmt: skip
        survey = tmp_path / "vc01.json"
        survey.write_bytes(capsys.readouterr().out.encode())
        monkeypatch.delenv("VMFORENSICS_PASSWORD")
        assert json.loads(survey.read_bytes())["acquirer"] == {
            "kind": "vmware",
            "secrets": ["password"],
            "settings": {
                "host": server.host,
                "port": server.port,
                "user": server.user,
                "tls_thumbprint": server.thumbprint_sha256,
            },
        }
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"surveys": [{
            "path": survey.name, "secrets": {"password": {"env": "VMF_TEST_VC01_PW"}},
            "select": {"names": list(server.vms)}}]}))  # fmt: skip
        monkeypatch.setenv("VMF_TEST_VC01_PW", VC_PASSWORD)
        out = tmp_path / "batch"
        code = main(["acquire-batch", str(plan), "--out", str(out), "--local", "2", "--per-datastore", "1",
                     "--preserve", "none", "--case", "2026-121", "--examiner", "A. Analyst", "--no-progress"])  # fmt: skip
        assert code == 0, capsys.readouterr()
        plan.write_text(json.dumps({"surveys": [{"path": survey.name, "select": {"names": [server.vm]}}]}))
        with memory_keyring() as keyring:  # --password-keyring: vmforensics:HOST for the survey's user
            keyring.set_password(f"vmforensics:{server.host}", server.user, VC_PASSWORD)
            code = main(["acquire-batch", str(plan), "--out", str(tmp_path / "by-keyring"), "--local", "1",
                         "--password-keyring", "--preserve", "none", "--case", "2026-121", "--no-progress"])  # fmt: skip
        assert code == 0, capsys.readouterr()
        sources = {  # read before vcsim removes its datastores at exit
            path.relative_to(datastore).as_posix(): sha256(path)
            for path in datastore.rglob("*")
            if path.is_file()
        }

    assert main(["verify", str(out)]) == 0
    record = json.loads((out / "batch.json").read_bytes())
    assert sorted(m["name"] for m in record["members"] if m["outcome"] == "sealed") == sorted(server.vms)
    for member in record["members"]:
        assert member["plan"]["datastores"] == ["LocalDS_0"] and member["plan"]["host"] == "DC0_H0"
        manifest = json.loads((out / member["directory"] / "manifest.json").read_bytes())
        assert manifest["source"]["kind"] == "vmware"
        acquired = {entry["local_path"].rsplit("/", 1)[-1] for entry in manifest["files"]}
        assert {"disk1.vmdk", "disk1-flat.vmdk", f"{member['name']}.vmx"} <= acquired
        for entry in manifest["files"]:
            assert entry["hashes"]["sha256"] == sources[entry["local_path"].removeprefix("files/LocalDS_0/")]
    no_secret_in(out, VC_PASSWORD)
    assert VC_PASSWORD.encode() not in survey.read_bytes()
    assert main(["verify", str(tmp_path / "by-keyring")]) == 0
    by_keyring = json.loads((tmp_path / "by-keyring" / "batch.json").read_bytes())["members"]
    assert by_keyring[0]["plan"]["secrets"] == {
        "password": {"keyring": [f"vmforensics:{server.host}", server.user]}
    }
    no_secret_in(tmp_path / "by-keyring", VC_PASSWORD)


# --- Proxmox VE (the node's layout written by the test, reached over a real sshd) ----------------


def test_proxmox_survey_json_to_acquire_batch_then_verify(
    sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.acquire import qemu_lab
    from tests.acquire.qemu_lab import ProxmoxNode, qemu_img, short_root

    if reason := qemu_lab.available():
        pytest.skip(reason)
    node = ProxmoxNode(short_root("pvb"))
    try:
        for vmid in (101, 102):  # two stopped VMs: a qcow2 and a raw disk each
            folder = node.images / str(vmid)
            folder.mkdir(parents=True)
            qemu_img("create", "-q", "-f", "qcow2", str(folder / f"vm-{vmid}-disk-0.qcow2"), "4M")
            (folder / f"vm-{vmid}-disk-1.raw").write_bytes(bytes([vmid % 256]) * 4096)
            node.write_vm(
                vmid, name=f"pve{vmid}", uuid=str(uuid.uuid4()), mac=f"bc:24:11:5e:b0:{vmid % 256:02x}"
            )
        assert main(["survey", "proxmox", "--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user,
                     "--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                     "--config-root", str(node.config_root), "--run-root", str(node.run_root), "--json"]) == 0  # fmt: skip
        survey = tmp_path / "pve01.json"
        survey.write_bytes(capsys.readouterr().out.encode())
        recorded = json.loads(survey.read_bytes())["acquirer"]
        assert recorded["kind"] == "proxmox" and recorded["secrets"] == []
        assert recorded["settings"]["config_root"] == str(node.config_root)
        out = tmp_path / "batch"
        code = main(["acquire-batch", str(survey), "--out", str(out), "--local", "2", "--case", "2026-122",
                     "--examiner", "A. Analyst", "--no-progress"])  # fmt: skip
        assert code == 0, capsys.readouterr()
        assert main(["verify", str(out)]) == 0
        record = json.loads((out / "batch.json").read_bytes())
        assert sorted(m["name"] for m in record["members"] if m["outcome"] == "sealed") == [
            "pve101",
            "pve102",
        ]
        for member in record["members"]:
            vmid = member["plan"]["target"]
            manifest = json.loads((out / member["directory"] / "manifest.json").read_bytes())
            raw = next(f for f in manifest["files"] if f["local_path"].endswith(f"vm-{vmid}-disk-1.raw"))
            assert raw["hashes"]["sha256"] == sha256(node.images / vmid / f"vm-{vmid}-disk-1.raw")
    finally:
        node.stop()


# --- Hyper-V (the WinRM host is the acquirer lab's fake, see tests/acquire/hyperv_lab.py) -----------


def test_hyperv_survey_json_to_acquire_batch_then_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Hyper-V runs on Linux: WinRM is the labs' fake speaking the real WS-Management protocol
    (NTLM), the files come from a real Samba serving the host's C: drive, as in test_hyperv.py."""
    from tests.acquire.hyperv_lab import build_lab
    from tests.acquire.wsman_server import WSManServer
    from tests.survey.hyperv_survey_lab import SurveyHyperV
    from tests.transport.smbd import SmbServer

    facts = build_lab(tmp_path / "host")
    with SmbServer({"C$": facts["drive"]}, force_user="root") as smb:
        host = SurveyHyperV(facts["drive"], admins={smb.user})
        with WSManServer(host, {smb.user: smb.password}, user_file=str(tmp_path / "ntlm-users")) as winrm:
            monkeypatch.setenv("VMFORENSICS_PASSWORD", smb.password)
            assert main(["survey", "hyperv", "--host", "127.0.0.1", "--user", smb.user, "--http", "--winrm-port",
                         str(winrm.port), "--smb-port", str(smb.port), "--json"]) == 0  # fmt: skip
            survey = tmp_path / "hv01.json"
            survey.write_bytes(capsys.readouterr().out.encode())
            monkeypatch.delenv("VMFORENSICS_PASSWORD")
            recorded = json.loads(survey.read_bytes())["acquirer"]
            assert recorded["secrets"] == ["password"] and recorded["settings"]["winrm_https"] is False
            monkeypatch.setenv("VMF_TEST_HV01_PW", smb.password)
            out = tmp_path / "batch"
            code = main(["acquire-batch", str(survey), "--out", str(out), "--local", "2", "--password-env",
                         "VMF_TEST_HV01_PW", "--preserve", "none", "--case", "2026-123", "--no-progress"])  # fmt: skip
            assert code == 0, capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    record = json.loads((out / "batch.json").read_bytes())
    assert sorted(m["name"] for m in record["members"] if m["outcome"] == "sealed") == ["db02", "web01"]
    no_secret_in(out, smb.password)
