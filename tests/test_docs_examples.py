"""The examples of README.md and the pages of docs/ run as written, against real servers.

Each example is a fenced block with ``<!-- test: NAME -->`` in front of it. A test takes the
block's own text and changes only what must differ on a test machine — host names become
127.0.0.1 and a port, paths become temporary folders, credentials become the lab server's — in
one visible mapping per example (every key must occur in the block, so the mapping cannot go
stale silently); then it runs the block and checks the outcome (verify OK, files present, exit 0).

``test_every_example_on_the_pages_is_marked_and_run`` fails when a marked block has no test or a
block on these pages is neither marked nor in the short allow-list of blocks that are not examples.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from vmforensics import verify
from vmforensics.demo.vm import build_demo_vm

ROOT = Path(__file__).resolve().parent.parent
PAGES = (
    "README.md",
    "docs/quickstart.md",
    "docs/vmware.md",
    "docs/hyperv.md",
    "docs/libvirt.md",
    "docs/survey.md",
    "docs/transport-ssh.md",
    "docs/cli.md",
)
FENCE = re.compile(r"^(?:<!-- test: ([\w-]+) -->\n)?```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)

#: Blocks that are not examples: (page, first line) -> what the block is.
NOT_EXAMPLES = {
    ("README.md", "manifest.json        canonical JSON"): "the evidence directory's layout",
    ("docs/hyperv.md", "New-Item -Path WSMan:"): "host setup: the Windows host's WinRM listener (PowerShell)",
}

#: (page, marker) -> the test that runs it: a function of this module, or "module:function".
RUN_BY = {
    ("README.md", "run-demo"): "test_run_demo_builds_acquires_verifies_and_reads_the_demo_vm",
    (
        "README.md",
        "python",
    ): "tests.test_readme:test_the_readme_python_example_acquires_verifies_and_opens_the_disk",
    ("README.md", "hypervisors"): "test_readme_hypervisor_example_acquires_from_vmware_hyperv_and_libvirt",
    ("README.md", "cli"): "tests.test_readme:test_the_readme_command_line_example_runs_in_a_shell",
    ("docs/quickstart.md", "install"): "test_run_demo_builds_acquires_verifies_and_reads_the_demo_vm",
    ("docs/quickstart.md", "python"): "test_quickstart_python_acquires_verifies_and_opens_the_disk",
    ("docs/quickstart.md", "cli"): "test_quickstart_command_line_acquires_verifies_lists_and_exports",
    ("docs/vmware.md", "python"): "test_vmware_python_example_acquires_a_verified_snapshot",
    ("docs/vmware.md", "cli"): "test_vmware_command_line_examples_acquire_from_vcenter_and_a_standalone_host",
    (
        "docs/vmware.md",
        "cli-esxi",
    ): "test_vmware_command_line_examples_acquire_from_vcenter_and_a_standalone_host",
    ("docs/hyperv.md", "python"): "test_hyperv_python_example_acquires_a_verified_checkpoint",
    ("docs/hyperv.md", "cli"): "test_hyperv_command_line_example_acquires_a_verified_checkpoint",
    ("docs/libvirt.md", "python"): "test_libvirt_python_examples_acquire_the_chain_and_open_its_top",
    ("docs/libvirt.md", "open-chain"): "test_libvirt_python_examples_acquire_the_chain_and_open_its_top",
    ("docs/libvirt.md", "cli"): "test_libvirt_command_line_example_acquires_a_verified_domain",
    ("docs/survey.md", "python"): "test_survey_python_examples_find_the_dormant_vm_and_acquire_it",
    ("docs/survey.md", "acquire-many"): "test_survey_python_examples_find_the_dormant_vm_and_acquire_it",
    ("docs/survey.md", "cli"): "test_survey_command_line_examples_write_json_and_seal_a_libvirt_survey",
    (
        "docs/transport-ssh.md",
        "python",
    ): "test_ssh_transport_example_stats_a_file_with_a_key_and_with_a_password",
    ("docs/cli.md", "session"): "test_cli_page_session_runs_from_demo_to_image_ls",
    ("docs/cli.md", "config"): "test_cli_config_file_example_fills_each_hosts_options",
}


def blocks(page: str) -> list[tuple[str | None, str, str]]:
    """Every fenced block of ``page``: (marker or None, language, body)."""
    return FENCE.findall((ROOT / page).read_text())


def example(page: str, name: str) -> tuple[str, str]:
    """The language and body of the block marked ``name`` on ``page``."""
    found = [(lang, body) for marker, lang, body in blocks(page) if marker == name]
    assert len(found) == 1, f"{page}: {len(found)} blocks marked {name!r}"
    return found[0]


def adapt(body: str, mapping: Mapping[str, str]) -> str:
    """``body`` with each key replaced by its value; every key must occur in it."""
    for old, new in mapping.items():
        assert old in body, f"the example no longer contains {old!r}"
        body = body.replace(old, new)
    return body


def shell(script: str, cwd: Path, env: Mapping[str, str], timeout: float = 300) -> str:
    """Run ``script`` in bash with `vmforensics` on PATH (this interpreter's); returns stdout."""
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "vmforensics"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vmforensics "$@"\n')
    launcher.chmod(0o755)
    environment = {
        **os.environ,
        "HOME": str(cwd),
        "TMPDIR": str(cwd),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VMFORENSICS_KEY_PASSPHRASE": "correct horse battery staple",
        "VMFORENSICS_CONFIG": str(cwd / "no-config.toml"),
        **env,
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_python(body: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = dict(namespace or {})
    exec(compile(body, "<docs example>", "exec"), namespace)  # the page's own example
    return namespace


# --- completeness ------------------------------------------------------------------------------


def test_every_example_on_the_pages_is_marked_and_run() -> None:
    unmarked, markers = [], set()
    for page in PAGES:
        for marker, lang, body in blocks(page):
            first = body.splitlines()[0] if body else ""
            if marker:
                assert (page, marker) not in markers, f"{page}: marker {marker!r} used twice"
                markers.add((page, marker))
            elif not any(page == p and first.startswith(start) for p, start in NOT_EXAMPLES):
                unmarked.append(f"{page}: ```{lang} {first[:60]}")
    assert not unmarked, "blocks with no <!-- test: name --> marker:\n" + "\n".join(unmarked)
    assert markers == set(RUN_BY), f"marked, no test: {markers - set(RUN_BY)}; stale: {set(RUN_BY) - markers}"
    for target in set(RUN_BY.values()):
        module, _, function = target.rpartition(":")
        assert callable(getattr(importlib.import_module(module or __name__), function, None)), target
    for page, start in NOT_EXAMPLES:
        assert any(body.startswith(start) for _, _, body in blocks(page)), f"stale allow-list entry {page}"


# --- local: the demo VM ------------------------------------------------------------------------


def test_run_demo_builds_acquires_verifies_and_reads_the_demo_vm(tmp_path: Path) -> None:
    """``./run demo`` as README.md and docs/quickstart.md show it (it reuses .venv, reinstalling
    the package editable). Its sibling ``./run test`` is what CI runs to run this very suite, so it
    is proven by CI itself rather than by recursing into it here."""
    lines = set()
    for page, name in (("README.md", "run-demo"), ("docs/quickstart.md", "install")):
        lang, body = example(page, name)
        assert lang == "sh"
        commands = [line.split("#")[0].strip() for line in body.splitlines()]
        assert commands == ["./run demo", "./run test"], (page, commands)
        lines.add(commands[0])
    (command,) = lines
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [*command.split(), "--workdir", str(workdir), "--no-progress", "--json"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    evidence = [path.parent for path in workdir.rglob("manifest.json")]
    assert len(evidence) == 1, evidence
    assert verify(evidence[0]).ok


def test_quickstart_python_acquires_verifies_and_opens_the_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmforensics import SigningKey

    lang, body = example("docs/quickstart.md", "python")
    assert lang == "python"
    build_demo_vm(tmp_path / "datastore1")
    SigningKey.generate().save(tmp_path / "examiner.pem", passphrase="test passphrase")
    code = adapt(
        body,
        {
            '"examiner.pem", passphrase="…"': f'"{tmp_path / "examiner.pem"}", passphrase="test passphrase"',
            "/mnt/datastore1": str(tmp_path / "datastore1"),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    namespace = run_python(code)
    assert namespace["report"].ok
    assert namespace["tsk_image"].get_size() > 0
    assert "vmdk" in capsys.readouterr().out.lower()


def test_quickstart_command_line_acquires_verifies_lists_and_exports(tmp_path: Path) -> None:
    lang, body = example("docs/quickstart.md", "cli")
    assert lang == "sh"
    build_demo_vm(tmp_path / "ds1")
    script = adapt(body, {"/mnt/ds1": str(tmp_path / "ds1"), "/cases/2026-117": str(tmp_path / "cases")})
    out = shell(script, tmp_path, {})
    assert "VERIFIED" in out and "README.TXT" in out
    assert "<dfxml" in (tmp_path / "web01.dfxml").read_text()


# --- docs/cli.md -------------------------------------------------------------------------------


def test_cli_config_file_example_fills_each_hosts_options(tmp_path: Path) -> None:
    """The page's configuration file, read through VMFORENSICS_CONFIG by the CLI's own parser."""
    from vmforensics.cli import build_parser
    from vmforensics.cli.config import apply_config

    lang, body = example("docs/cli.md", "config")
    assert lang == "toml"
    config = tmp_path / "config.toml"
    config.write_text(body)
    environ = {"VMFORENSICS_CONFIG": str(config), "HOME": str(tmp_path)}

    def parse(*argv: str) -> Any:
        parser = build_parser()
        apply_config(parser, list(argv), environ)
        return parser.parse_args(list(argv))

    out = ["--out", str(tmp_path / "out")]
    vmware = parse("acquire", "vmware", "--host", "vcenter01.lab.example", "--vm", "web01", *out)
    assert vmware.user == "ir@vsphere.local" and vmware.via == "ssh" and vmware.ssh_user == "root"
    assert vmware.tls_thumbprint == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert str(vmware.ssh_known_hosts).endswith(".ssh/esxi_known_hosts")
    hyperv = parse("acquire", "hyperv", "--host", "hv01.corp.example", "--vm", "web02", *out)
    assert hyperv.user == "CORP\\ir-examiner" and hyperv.auth == "kerberos"
    assert str(hyperv.tls_ca) == "/etc/ssl/corp-ca.pem"
    libvirt = parse("acquire", "libvirt", "--host", "kvm01", "--domain", "web03", *out)
    assert (libvirt.user, libvirt.port) == ("ir", 2222)
    assert str(libvirt.identity).endswith(".ssh/ir_ed25519")
    assert str(libvirt.known_hosts).endswith(".ssh/lab_known_hosts")


# --- VMware: govmomi's vcsim -------------------------------------------------------------------


def _vcsim_available() -> str | None:
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyVmomi") is None:
        return "needs pyVmomi"
    if shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir():
        return "vcsim needs golang-go and golang-github-vmware-govmomi-dev"
    return None


def _vcsim(tmp_path_factory: pytest.TempPathFactory, *, esx: bool) -> Iterator[Any]:
    if reason := _vcsim_available():
        pytest.skip(reason)
    from tests.acquire.vcsim.esxi_files import write_disk
    from tests.acquire.vcsim.server import VCSim

    work = tmp_path_factory.mktemp("vcsim-esx" if esx else "vcsim")
    with VCSim(work / "server", esx=esx) as server:
        (work / "oracle").mkdir()
        write_disk(server.datastore_dir() / server.vm, work / "oracle")  # a real ext4 disk in the VM
        yield server


@pytest.fixture
def vcenter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh vcsim vCenter per test (it starts in < 0.1 s): after a memory snapshot is removed,
    vcsim drops the VM's disk descriptor, so a second snapshot on the same server lacks it."""
    yield from _vcsim(tmp_path_factory, esx=False)


@pytest.fixture
def esxi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A standalone ESXi host (``vcsim -esx``)."""
    yield from _vcsim(tmp_path_factory, esx=True)


def test_vmware_python_example_acquires_a_verified_snapshot(vcenter: Any, tmp_path: Path) -> None:
    lang, body = example("docs/vmware.md", "python")
    assert lang == "python"
    code = adapt(
        body,
        {
            '"vcenter.lab"': f'"{vcenter.host}", port={vcenter.port}',
            'user="ir@vsphere.local"': f"user={vcenter.user!r}",
            "password=...": f"password={vcenter.password!r}",
            '"5A:1F:…"': repr(vcenter.thumbprint_sha256),
            '"web01"': repr(vcenter.vm),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    run_python(code)
    evidence = tmp_path / "cases" / "web01"
    assert verify(evidence).ok
    assert (evidence / "files" / "LocalDS_0" / vcenter.vm / "disk1-flat.vmdk").is_file()


@pytest.mark.parametrize(("marker", "server"), [("cli", "vcenter"), ("cli-esxi", "esxi")])
def test_vmware_command_line_examples_acquire_from_vcenter_and_a_standalone_host(
    marker: str, server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sim = request.getfixturevalue(server)
    lang, body = example("docs/vmware.md", marker)
    assert lang == "sh"
    host, user, pin = {
        "cli": ("vcenter.lab", "ir@vsphere.local", "5A:1F:…"),
        "cli-esxi": ("esx01.lab", "ir-examiner", "9C:4E:…"),
    }[marker]
    script = adapt(
        body,
        {
            "VMFORENSICS_PASSWORD=…": f"VMFORENSICS_PASSWORD={sim.password!r}",
            f"--host {host}": f"--host {sim.host} --port {sim.port}",
            f"--user {user}": f"--user {sim.user}",
            "--vm web01": f"--vm {sim.vm}",
            pin: sim.thumbprint_sha256,
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    shell(script, tmp_path, {})
    assert verify(tmp_path / "cases" / "web01").ok


def test_cli_page_session_runs_from_demo_to_image_ls(vcenter: Any, tmp_path: Path) -> None:
    lang, body = example("docs/cli.md", "session")
    assert lang == "sh"
    script = adapt(
        body,
        {
            "--host vcenter01": f"--host {vcenter.host} --port {vcenter.port}",
            "--user ir@vsphere.local": f"--user {vcenter.user}",
            "lab-ca.pem": str(vcenter.cert),
            "--vm web01": f"--vm {vcenter.vm}",
            "/cases/2026-117": str(tmp_path / "cases"),
            "web01/web01.vmdk /var/log": f"{vcenter.vm}/disk1.vmdk /home/user",  # the lab guest's files
        },
    )
    out = shell(script, tmp_path, {"VMFORENSICS_PASSWORD": vcenter.password})
    assert "VERIFIED" in out and "evidence.txt" in out
    assert vcenter.vm in (tmp_path / "estate.json").read_text()
    assert "case" in (tmp_path / "web01.case.jsonld").read_text()


# --- Hyper-V: Samba and the WS-Management test endpoint -----------------------------------------


@pytest.fixture(scope="module")
def hyperv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Hyper-V host as tests/acquire/test_hyperv.py builds it: real Samba serving its C: drive,
    real NTLM and TLS, and tests/acquire/wsman_server.py as WinRM — the one fake, because no
    WinRM server or PowerShell runs on Linux (hyperv_lab.FakeHyperV answers the reviewed scripts)."""
    from tests.acquire.hyperv_lab import FakeHyperV, build_lab
    from tests.acquire.wsman_server import WSManServer
    from tests.transport.httpsd import TestPKI
    from tests.transport.smbd import SmbServer

    root = tmp_path_factory.mktemp("hyperv-host")
    facts = build_lab(root)
    with SmbServer({"C$": facts["drive"], "HyperV": facts["drive"] / "Hyper-V"}, force_user="root") as smb:
        pki = TestPKI(root / "pki")
        host = FakeHyperV(facts["drive"], admins={smb.user})
        with WSManServer(
            host,
            {smb.user: smb.password},
            certificate=(str(pki.cert_path), str(pki.key_path)),
            user_file=str(root / "ntlm-users"),
        ) as winrm:
            yield {"smb": smb, "pki": pki, "winrm": winrm, "host": host}


def test_hyperv_python_example_acquires_a_verified_checkpoint(hyperv: dict[str, Any], tmp_path: Path) -> None:
    smb, winrm = hyperv["smb"], hyperv["winrm"]
    lang, body = example("docs/hyperv.md", "python")
    assert lang == "python"
    code = adapt(
        body,
        {
            '"hv01.lab.example"': f'"127.0.0.1", winrm_port={winrm.port}, smb_port={smb.port}',
            'user="LAB\\\\ir"': f"user={smb.user!r}",
            "password=...": f"password={smb.password!r}",
            "/etc/ssl/lab-ca.pem": str(hyperv["pki"].ca_path),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    result = run_python(code)["result"]
    assert verify(result.path).ok
    assert [a.action for a in result.manifest.actions] == ["checkpoint", "remove-checkpoint"]


def test_hyperv_command_line_example_acquires_a_verified_checkpoint(
    hyperv: dict[str, Any], tmp_path: Path
) -> None:
    smb, winrm = hyperv["smb"], hyperv["winrm"]
    lang, body = example("docs/hyperv.md", "cli")
    assert lang == "sh"
    script = adapt(
        body,
        {
            "VMFORENSICS_PASSWORD=...": f"VMFORENSICS_PASSWORD={smb.password!r}",
            "--host hv01.lab.example": f"--host 127.0.0.1 --winrm-port {winrm.port} --smb-port {smb.port}",
            "--user 'LAB\\ir'": f"--user {smb.user!r}",
            "lab-ca.pem": str(hyperv["pki"].ca_path),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    shell(script, tmp_path, {})
    assert verify(tmp_path / "cases" / "web01").ok


# --- libvirt: the system libvirtd with QEMU (TCG), reached over the test sshd ------------------


@pytest.fixture(scope="module")
def kvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running domain on a two-folder qcow2 chain (tests/acquire/libvirt_lab.py), and the test
    sshd (tests/transport/sshd.py) as the host's SSH."""
    from tests.acquire import libvirt_lab
    from tests.transport.sshd import SSHServer

    if reason := libvirt_lab.available():
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("libvirt-docs")
    for folder in ("lab", "sshd"):
        (work / folder).mkdir()
    with libvirt_lab.LibvirtLab(work / "lab") as lab, SSHServer(work / "sshd") as sshd:
        name = "vmf-docs-web01"
        _, top = lab.make_chain(work / "host")
        lab.define(name, lab.domain_xml(name, top, "52:54:00:5a:d0:01"))
        yield {"sshd": sshd, "domain": name, "top": top.name}


def _libvirt_mapping(kvm: dict[str, Any]) -> dict[str, str]:
    """What differs on a test machine in the libvirt examples: the host, its key files, the domain."""
    sshd = kvm["sshd"]
    return {
        "~/.ssh/id_ed25519": str(sshd.client_key),
        "~/.ssh/known_hosts": str(sshd.known_hosts),
    }


def test_libvirt_python_examples_acquire_the_chain_and_open_its_top(
    kvm: dict[str, Any], tmp_path: Path
) -> None:
    sshd = kvm["sshd"]
    lang, body = example("docs/libvirt.md", "python")
    assert lang == "python"
    code = adapt(
        body,
        {
            '"kvm01.lab"': f'"{sshd.host}", port={sshd.port}',
            'user="ir"': f"user={sshd.user!r}",
            **_libvirt_mapping(kvm),
            '"web01"': repr(kvm["domain"]),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    result = run_python(code)["result"]
    assert verify(result.path).ok
    assert (result.path / "files" / "disks" / "vda" / kvm["top"]).is_file()

    lang, body = example("docs/libvirt.md", "open-chain")
    assert lang == "python"
    mapping = {
        "/cases/2026-117": str(tmp_path / "cases"),
        "web01.qcow2": kvm["top"],
        "    ...": "    chain = [layer.path for layer in disk.info().chain]",  # the page's placeholder for what the reader does
    }
    namespace = run_python(adapt(body, mapping))
    assert [Path(path).name for path in namespace["chain"]] == [kvm["top"], "base.qcow2"]


def test_libvirt_command_line_example_acquires_a_verified_domain(kvm: dict[str, Any], tmp_path: Path) -> None:
    sshd = kvm["sshd"]
    lang, body = example("docs/libvirt.md", "cli")
    assert lang == "sh"
    script = adapt(
        body,
        {
            "--host kvm01.lab": f"--host {sshd.host} --port {sshd.port}",
            "--user ir": f"--user {sshd.user}",
            **_libvirt_mapping(kvm),
            "--domain web01": f"--domain {kvm['domain']}",
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    shell(script, tmp_path, {})
    assert verify(tmp_path / "cases" / "web01").ok


# --- docs/transport-ssh.md: the test sshd ------------------------------------------------------


def test_ssh_transport_example_stats_a_file_with_a_key_and_with_a_password(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from tests.transport.conftest import SSH_TEST_USER
    from tests.transport.sshd import SSHServer

    lang, body = example("docs/transport-ssh.md", "python")
    assert lang == "python"
    shared = Path(tempfile.mkdtemp(prefix="vmf-docs-ssh-"))  # readable by the password user too
    try:
        shared.chmod(0o755)
        flat, qcow2 = shared / "web01-flat.vmdk", shared / "web01.qcow2"
        flat.write_bytes(b"\0" * 4096)
        qcow2.write_bytes(b"QFI\xfb" + b"\0" * 508)
        (tmp_path / "sshd").mkdir()
        with SSHServer(tmp_path / "sshd", password_user=SSH_TEST_USER) as sshd:
            user, password = SSH_TEST_USER
            code = adapt(
                body,
                {
                    '"esxi01.lab"': f'"{sshd.host}", port={sshd.port}',
                    'user="root"': f"user={sshd.user!r}",
                    "~/.ssh/ir_ed25519": str(sshd.client_key),
                    "case-2026-117/known_hosts": str(sshd.known_hosts),
                    "/vmfs/volumes/datastore1/web01/web01-flat.vmdk": str(flat),
                    "root@kvm01:22": f"{user}@{sshd.host}:{sshd.port}",
                    "/var/lib/libvirt/images/web01.qcow2": str(qcow2),
                    "SHA256:…": sshd.host_key_fingerprint,
                    "password=secret": f"password={password!r}",
                },
            )
            namespace = run_python(code)
            ssh, path = namespace["ssh"], namespace["path"]
            with ssh:
                assert path == str(qcow2) and ssh.stat(path).size == 512
    finally:
        shutil.rmtree(shared)


# --- docs/survey.md ----------------------------------------------------------------------------


@pytest.fixture
def dormant_vm(vcenter: Any) -> str:
    """A VM that has not run for 200 days in the vCenter: created, never powered on, its log old
    (what a survey calls dormant; vcsim's own VMs all run)."""
    import ssl

    from pyVim.connect import Connect, Disconnect

    from tests.survey.test_vmware_survey import create_vm

    connection = Connect(
        vcenter.host,
        vcenter.port,
        vcenter.user,
        vcenter.password,
        sslContext=ssl.create_default_context(cafile=str(vcenter.cert)),
    )
    try:
        create_vm(connection, "zombie")
    finally:
        Disconnect(connection)
    log = vcenter.datastore_dir() / "zombie" / "vmware.log"
    log.write_text("2026-05-07T10:00:00.000Z In(05) vmx - Log for VMware ESX\n")
    old = time.time() - 200 * 86400
    os.utime(log, (old, old))
    return "zombie"


def _survey_mapping(vcenter: Any) -> dict[str, str]:
    return {
        '"vcenter01"': f'"{vcenter.host}", port={vcenter.port}',
        'user="ir@vsphere.local"': f"user={vcenter.user!r}",
        "password=...": f"password={vcenter.password!r}",
        "lab-ca.pem": str(vcenter.cert),
    }


def test_survey_python_examples_find_the_dormant_vm_and_acquire_it(
    vcenter: Any, dormant_vm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lang, body = example("docs/survey.md", "python")
    assert lang == "python"
    namespace = run_python(adapt(body, _survey_mapping(vcenter)))
    assert "dormant-vm" in capsys.readouterr().out

    lang, body = example("docs/survey.md", "acquire-many")
    assert lang == "python"
    mapping = {**_survey_mapping(vcenter), "/cases/2026-117": str(tmp_path / "cases")}
    batch = run_python(adapt(body, mapping), namespace)["batch"]
    assert [item.vm for item in batch.items] == [dormant_vm]
    assert verify(batch.items[0].path).ok


def test_survey_command_line_examples_write_json_and_seal_a_libvirt_survey(
    vcenter: Any, kvm: dict[str, Any], tmp_path: Path
) -> None:
    sshd = kvm["sshd"]
    lang, body = example("docs/survey.md", "cli")
    assert lang == "sh"
    script = adapt(
        body,
        {
            "--host vcenter01 --user ir@vsphere.local": (
                f"--host {vcenter.host} --port {vcenter.port} --user {vcenter.user} --tls-ca {vcenter.cert}"
            ),
            "--host kvm01": f"--host {sshd.host} --port {sshd.port} --user {sshd.user} --identity {sshd.client_key}",
            "~/.ssh/known_hosts": str(sshd.known_hosts),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    shell(script, tmp_path, {"VMFORENSICS_PASSWORD": vcenter.password})
    assert vcenter.vm in (tmp_path / "estate.json").read_text()
    assert verify(tmp_path / "cases" / "survey").ok


# --- README.md: the three hypervisor acquirers -------------------------------------------------


def test_readme_hypervisor_example_acquires_from_vmware_hyperv_and_libvirt(
    vcenter: Any, hyperv: dict[str, Any], kvm: dict[str, Any], tmp_path: Path
) -> None:
    """All three servers at once; the Hyper-V side is the WS-Management test endpoint (no WinRM
    server exists on Linux), everything else is real."""
    from vmforensics import SigningKey

    smb, winrm, sshd = hyperv["smb"], hyperv["winrm"], kvm["sshd"]
    lang, body = example("README.md", "hypervisors")
    assert lang == "python"
    code = adapt(
        body,
        {
            '"vcenter.lab", user="ir", password=pw, tls_ca="lab-ca.pem"': (
                f"{vcenter.host!r}, port={vcenter.port}, user={vcenter.user!r},"
                f" password={vcenter.password!r}, tls_ca={str(vcenter.cert)!r}"
            ),
            '"web01"': repr(vcenter.vm),
            '"hv01.lab", user="LAB\\\\ir", password=pw': (
                f'"127.0.0.1", winrm_port={winrm.port}, smb_port={smb.port}, user={smb.user!r},'
                f" password={smb.password!r}, ca_bundle={str(hyperv['pki'].ca_path)!r}"
            ),
            '"web02"': '"web01"',  # the Hyper-V lab's VM
            '"kvm01.lab", user="ir", identity="~/.ssh/id_ed25519"': (
                f"{sshd.host!r}, port={sshd.port}, user={sshd.user!r}, identity={str(sshd.client_key)!r},"
                f" known_hosts={str(sshd.known_hosts)!r}"
            ),
            '"web03"': repr(kvm["domain"]),
            "/cases/2026-117": str(tmp_path / "cases"),
        },
    )
    key = SigningKey.generate()  # "key as above": the README's first example makes one
    run_python(code, {"key": key})
    for name in ("web01", "web02", "web03"):
        assert verify(tmp_path / "cases" / name, key.public_key()).ok, name
