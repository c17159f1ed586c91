"""`vmforensics acquire files` over a real OpenSSH server and over file://: the same signed,
verifiable evidence directory as a VM acquisition, with the source layout kept."""

from __future__ import annotations

import hashlib
import os

import pytest

from vmforensics import CaseInfo, verify
from vmforensics.acquire.files import FilesAcquirer
from vmforensics.cli import main
from vmforensics.errors import UsageError
from vmforensics.transport.local import LocalTransport


def test_acquire_files_over_ssh_recursive_through_the_cli(sshd, tmp_path, capsys):
    source = tmp_path / "host-logs"
    (source / "qemu").mkdir(parents=True)
    payloads = {"qemu/vm1.log": os.urandom(300_000), "libvirtd.log": b"started\n" * 1000}
    for name, data in payloads.items():
        (source / name).write_bytes(data)
    url = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{source}"
    out = tmp_path / "ev"
    argv = ["acquire", "files", url, "--recursive", "--known-hosts", str(sshd.known_hosts)]
    argv += [
        "--identity",
        str(sshd.client_key),
        "--out",
        str(out),
        "--case",
        "F-1",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    report = verify(out)
    assert report.ok, str(report)
    for name, data in payloads.items():
        copied = out / "files" / sshd.host / str(source).lstrip("/") / name
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_directory_without_recursive_is_a_usage_error_before_anything_is_copied(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    acquirer = FilesAcquirer(LocalTransport(), [str(tmp_path / "d")])
    with pytest.raises(UsageError, match="recursive"):
        acquirer.acquire("d", tmp_path / "ev", case=CaseInfo(case_id="F-2", examiner="E"), progress=False)
    assert not any((tmp_path / "ev" / "files").iterdir())
    assert "failed" in (tmp_path / "ev" / "custody.log.jsonl").read_text().splitlines()[-1]
