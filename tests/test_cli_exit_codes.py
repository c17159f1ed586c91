"""Every command exits 0 on success, 1 when the work failed, 2 when the command line was wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.custody.conftest import make_writable
from vmforensics.cli import main
from vmforensics.demo.vm import build_demo_vm

OK, FAILED, USAGE = 0, 1, 2


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed evidence directory of the demo VM, acquired through the command line."""
    work = tmp_path_factory.mktemp("exit-codes")
    vm = build_demo_vm(work / "datastore").parent
    argv = ["acquire", "local", str(vm), "--out", str(work / "evidence"), "--case", "C-1", "--no-progress"]
    assert exit_code(argv) == OK
    return work / "evidence"


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VMFORENSICS_PASSWORD", "VMFORENSICS_KEY_PASSPHRASE", "VMFORENSICS_CASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMFORENSICS_CONFIG", "/nonexistent/config.toml")


def test_success_is_0(evidence: Path, tmp_path: Path) -> None:
    disk = str(evidence / "files" / "web01" / "web01.vmdk")
    for argv in (
        ["verify", str(evidence)],
        ["verify", str(evidence), "--json"],
        ["export", str(evidence), "--format", "sums"],
        ["export", str(evidence), "--format", "dfxml", "--output", str(tmp_path / "e.dfxml")],
        ["image", "info", disk],
        ["image", "ls", disk, "/LOGS"],
        ["survey", "local", str(evidence / "files")],
        ["keygen", str(tmp_path / "k.pem"), "--no-passphrase"],
    ):
        assert exit_code(argv) == OK, argv


def test_failed_work_is_1(evidence: Path, tmp_path: Path) -> None:
    not_an_image = tmp_path / "random.img"
    not_an_image.write_bytes(bytes(range(256)) * 4096)
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-a", str(evidence), str(tampered)], check=True)
    make_writable(tampered)
    (tampered / "files" / "web01" / "vmware.log").write_text("rewritten")
    for argv in (
        ["verify", str(tampered)],
        ["verify", str(evidence), "--key", "/etc/hostname"],  # not a public key: cannot prove anything
        ["image", "ls", str(not_an_image)],
        ["acquire", "local", str(tmp_path / "no-such-vm"), "--out", str(tmp_path / "o"), "--case", "C"],
        ["keygen", str(tmp_path / "missing-dir" / "k.pem"), "--no-passphrase"],
    ):
        assert exit_code(argv) == FAILED, argv


def test_usage_errors_are_2(evidence: Path, tmp_path: Path) -> None:
    vm = str(evidence / "files" / "web01")
    for argv in (
        [],
        ["no-such-command"],
        ["acquire"],
        ["acquire", "local", vm],  # no --out
        ["acquire", "local", vm, "--out", str(tmp_path / "o"), "--no-progress"],  # no --case
        ["acquire", "vmware", "--host", "h", "--vm", "v", "--out", str(tmp_path / "o")],  # no --user
        [
            "acquire",
            "vmware",
            "--host",
            "h",
            "--user",
            "u",
            "--vm",
            "v",
            "--out",
            str(tmp_path / "o"),
            "--case",
            "C",
        ],
        ["survey", "vmware", "--host", "h", "--user", "u"],  # no password, no terminal to ask
        ["verify"],
        ["verify", str(tmp_path / "no-such-dir")],
        ["export", str(evidence)],  # no --format
        ["export", str(evidence), "--format", "sums", "--output", str(evidence / "SUMS")],
        ["image", "info"],
        ["image", "ls", str(evidence / "files" / "web01" / "web01.vmdk"), "/", "--partition", "9"],
        ["keygen", str(tmp_path / "k2.pem")],  # no passphrase, no terminal to ask
        ["demo", "--workdir", str(evidence)],  # not empty
    ):
        assert exit_code(argv) == USAGE, argv


def test_the_process_exit_status_is_the_same(evidence: Path, tmp_path: Path) -> None:
    def status(*argv: str) -> int:
        return subprocess.run([sys.executable, "-m", "vmforensics", *argv], capture_output=True).returncode

    assert status("verify", str(evidence)) == OK
    assert status("image", "ls", "/etc/hostname") == FAILED
    assert status("verify") == USAGE
    assert status("verify", str(tmp_path)) == FAILED  # a directory without a manifest fails verification
