"""The vmforensics command: demo, keygen, acquire local, verify; exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.custody.conftest import make_writable
from vmforensics.cli import main
from vmforensics.demo.vm import build_demo_vm


def test_demo_acquires_verifies_and_reads_the_guest_files(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "verification     : VERIFIED" in out and "/LOGS/DROPPER.PS1 (71 bytes)" in out


def test_keygen_acquire_verify_and_a_tampered_directory_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VMFORENSICS_KEY_PASSPHRASE", "s3cret passphrase")
    assert main(["keygen", str(tmp_path / "examiner.pem")]) == 0
    assert "key id sha256:" in capsys.readouterr().out
    vm = build_demo_vm(tmp_path / "ds").parent
    out = str(tmp_path / "ev")
    argv = ["acquire", "local", str(vm), "--out", out, "--case", "C-9", "--examiner", "E. Xaminer"]
    assert (
        main([*argv, "--key", str(tmp_path / "examiner.pem"), "--hash", "md5", "--no-progress", "--json"])
        == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["case"]["case_id"] == "C-9" and set(manifest["files"][0]["hashes"]) == {"sha256", "md5"}
    assert main(["verify", out, "--key", str(tmp_path / "examiner.pem.pub")]) == 0
    make_writable(tmp_path / "ev")
    (tmp_path / "ev" / "files" / "web01" / "vmware.log").write_text("rewritten")
    assert main(["verify", out]) == 1
    assert "MISMATCH files/web01/vmware.log" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VMFORENSICS_CASE", raising=False)
    vm = build_demo_vm(tmp_path / "ds").parent
    assert main(["acquire", "local", str(vm), "--out", str(tmp_path / "ev"), "--no-progress"]) == 2
    assert "--case is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["acquire", "local"])
    assert exit_info.value.code == 2


def test_console_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "vmforensics", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "exit status" in done.stdout
