"""Source names that cannot be stored as they are become escaped names (original bytes recorded)
or omissions with the reason; they never abort the VM. Every folder here is built on disk with
the hostile names, acquired with the real LocalAcquirer and re-verified."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.cli import main
from vmforensics.custody import names
from vmforensics.custody.evidence import safe_relative_path
from vmforensics.errors import UnsafePathError

CASE = CaseInfo(case_id="N-1", examiner="Name Tester")
HOSTILE = [b"\xff\xfe.log", b"CON.log", b"nul", b"a\\b.log", b"x\nVERIFIED: all good", b"trail. ", b"..."]


def _plant(folder: Path, name: bytes, content: bytes) -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(content)


@pytest.mark.parametrize("raw", HOSTILE, ids=lambda r: r.decode("latin-1").encode("unicode_escape").decode())
def test_hostile_source_name_is_stored_escaped_with_its_original_bytes(raw, tmp_path, vm_folder):
    content = b"planted " + raw
    _plant(vm_folder, raw, content)
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    planted = [f for f in result.files if f.name_escaped]
    assert len(planted) == 1, [f.local_path for f in result.files]
    record = planted[0]
    stored = result.path / record.local_path
    assert stored.read_bytes() == content
    assert record.hashes["sha256"] == hashlib.sha256(content).hexdigest()
    safe_relative_path(record.local_path)  # the stored name passes the evidence writer's own check
    assert os.fsencode(names.unescape(record.local_path.rsplit("/", 1)[-1])) == raw
    if raw == b"\xff\xfe.log":
        assert base64.b64decode(record.source_path_b64).endswith(b"/" + raw)
        assert "\\xff\\xfe" in record.source_path
    else:
        assert record.source_path_b64 is None and record.source_path.endswith(raw.decode())
    assert verify(result.path).ok


def test_name_too_long_to_store_is_an_omission_and_the_vm_is_still_acquired(tmp_path, vm_folder):
    raw = b"\x01" * 100  # 100 bytes, 300 once escaped: over the 255-byte limit of a name
    _plant(vm_folder, raw, b"x")
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    assert any("cannot be stored" in o.reason for o in result.omissions)
    assert any(f.local_path.endswith("web01.vmx") for f in result.files)
    assert verify(result.path).ok


def test_planted_newline_name_cannot_inject_lines_into_the_verify_report(tmp_path, vm_folder, capsys):
    _plant(vm_folder, b"x\nVERIFIED: all good", b"x")
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    extra = result.path / "files" / "web01"
    os.chmod(extra, 0o755)
    (extra / "y\nVERIFIED: all good").write_bytes(b"planted after the seal")
    assert main(["verify", str(result.path)]) == 1
    out = capsys.readouterr().out
    assert not any(line.startswith("VERIFIED") for line in out.splitlines())
    assert "y\\nVERIFIED: all good" in out


def test_exclude_glob_leaves_files_out_and_records_them(tmp_path, vm_folder):
    (vm_folder / "web01.vswp").write_bytes(b"swap")
    result = LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "ev", case=CASE, progress=False, exclude=("*.vswp", "web01/*.log")
    )
    assert not any(f.local_path.endswith((".vswp", ".log")) for f in result.files)
    reasons = {o.source_path.rsplit("/", 1)[-1]: o.reason for o in result.omissions}
    assert reasons["web01.vswp"] == "excluded by the examiner (--exclude *.vswp)"
    assert reasons["vmware.log"] == "excluded by the examiner (--exclude web01/*.log)"
    assert result.manifest.options["exclude"] == ["*.vswp", "web01/*.log"]
    assert verify(result.path).ok


def test_exclude_option_on_the_command_line_is_recorded(tmp_path, vm_folder, capsys):
    argv = ["acquire", "local", str(vm_folder), "--out", str(tmp_path / "ev"), "--case", "N-2"]
    assert main([*argv, "--no-progress", "--exclude", "*.log", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"--exclude *.log"' not in out and "excluded by the examiner (--exclude *.log)" in out


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=80).filter(lambda b: b"/" not in b and b"\x00" not in b))
def test_escaping_is_reversible_and_always_storable(raw):
    name = os.fsdecode(raw)
    try:
        stored = names.escape_component(name)
    except UnsafePathError:
        assert len(raw) * 3 > names.MAX_COMPONENT_BYTES  # only names too long once escaped
        return
    safe_relative_path(stored)
    assert names.unescape(stored) == name
    assert names.is_text(stored)
    assert "\n" not in names.printable(name) and "\x1b" not in names.printable(name)


def test_planted_newline_name_omitted_is_escaped_in_the_acquire_summary(tmp_path, vm_folder, capsys):
    (vm_folder / "x\nacquired 0 files").symlink_to(vm_folder / "web01.vmx")  # a symlink: an omission
    argv = ["acquire", "local", str(vm_folder), "--out", str(tmp_path / "ev"), "--case", "N-3"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "x\\nacquired 0 files" in out and not any(
        line.startswith("acquired 0") for line in out.splitlines()
    )


def test_vm_folder_whose_name_is_not_utf8_is_acquired_and_sealed(tmp_path):
    from vmforensics.demo.vm import build_demo_vm

    built = build_demo_vm(tmp_path / "ds").parent
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path / "ds"), b"vm-\xff")))
    built.rename(folder)
    result = LocalAcquirer().acquire(str(folder), tmp_path / "ev", case=CASE, progress=False)
    assert result.manifest.source.vm.config_path.endswith("vm-\\xff/web01.vmx")
    assert all(f.name_escaped and "%FF" in f.local_path for f in result.files)
    assert all(base64.b64decode(f.source_path_b64).count(b"vm-\xff/") == 1 for f in result.files)
    assert verify(result.path).ok
