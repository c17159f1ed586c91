"""Evidence is never written into the source, nor does the tool acquire its own evidence: an
--out equal to, inside, or holding a local source root is a usage error (exit 2) before anything
is written. The folders are real; the commands are the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmforensics import CaseInfo, FilesAcquirer
from vmforensics.cli import main
from vmforensics.errors import UsageError
from vmforensics.transport.local import LocalTransport

CASE = CaseInfo(case_id="O-1", examiner="Out Tester")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    (folder / "host").mkdir(parents=True)
    (folder / "host" / "vmkernel.log").write_text("boot\n")
    return folder


@pytest.mark.parametrize("where", ["inside", "equal", "nested-deeper"])
def test_out_inside_or_equal_to_a_files_source_is_a_usage_error_and_nothing_is_written(source, where, capsys):
    out = {"inside": source / "evidence", "equal": source, "nested-deeper": source / "host" / "ev"}[where]
    before = _tree(source)
    argv = ["acquire", "files", source.as_uri(), "--recursive", "--out", str(out), "--case", "O-1"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "inside the source" in err and "=True" not in err
    assert _tree(source) == before


def test_source_inside_the_evidence_directory_is_refused(tmp_path, source):
    out = tmp_path  # holds the source folder
    with pytest.raises(UsageError, match="is inside the evidence directory"):
        FilesAcquirer(LocalTransport(), [str(source)], recursive=True).acquire(
            "logs", out, case=CASE, progress=False
        )
    assert not (tmp_path / "custody.log.jsonl").exists() and not (tmp_path / "files").exists()


def test_out_reached_through_a_symlink_into_the_source_is_refused(tmp_path, source):
    (tmp_path / "innocent").symlink_to(source / "host")
    with pytest.raises(UsageError, match="inside the source"):
        FilesAcquirer(LocalTransport(), [str(source)], recursive=True).acquire(
            "logs", tmp_path / "innocent" / "ev", case=CASE, progress=False
        )
    assert _tree(source) == ["host", "host/vmkernel.log"]


def test_out_beside_the_source_is_accepted(tmp_path, source):
    result = FilesAcquirer(LocalTransport(), [str(source)], recursive=True).acquire(
        "logs", tmp_path / "ev", case=CASE, progress=False
    )
    assert [f.local_path.rsplit("/", 1)[-1] for f in result.files] == ["vmkernel.log"]


def test_directory_source_without_recursive_names_the_cli_option(source, tmp_path, capsys):
    argv = ["acquire", "files", source.as_uri(), "--out", str(tmp_path / "ev"), "--case", "O-1"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--recursive" in err and "recursive=True" not in err


def test_non_empty_out_is_a_usage_error_that_names_resume_only_for_an_interrupted_run(
    source, tmp_path, capsys
):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["acquire", "files", source.as_uri(), "-r", "--out", str(out), "--case", "O-1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_vmx_naming_a_file_inside_the_evidence_directory_is_omitted_not_acquired(tmp_path):
    """The .vmx names the custody ledger this very acquisition is writing."""
    from vmforensics import LocalAcquirer, verify
    from vmforensics.demo.vm import build_demo_vm

    vm = build_demo_vm(tmp_path / "ds").parent
    out = tmp_path / "ev"
    vmx = vm / "web01.vmx"
    vmx.write_text(vmx.read_text() + f'extendedConfigFile = "{out}/custody.log.jsonl"\n')
    result = LocalAcquirer().acquire(str(vm), out, case=CASE, progress=False)
    assert not any("custody.log.jsonl" in f.local_path for f in result.files)
    omitted = [o for o in result.omissions if o.source_path.endswith("custody.log.jsonl")]
    assert omitted, result.omissions
    # this template's rule; the confinement policy (outside the VM's folder) may refuse it first
    assert omitted[0].reason == "inside the evidence directory" or "outside" in omitted[0].reason
    assert verify(out).ok


@pytest.mark.parametrize("where", ["inside", "equal", "vmx-folder"])
def test_out_inside_or_equal_to_a_local_vm_folder_is_a_usage_error_and_nothing_is_written(
    tmp_path, where, capsys
):
    from vmforensics.demo.vm import build_demo_vm

    vm = build_demo_vm(tmp_path / "ds").parent
    target = vm / "web01.vmx" if where == "vmx-folder" else vm
    out = vm if where == "equal" else vm / "evidence"
    before = _tree(vm)
    argv = ["acquire", "local", str(target), "--out", str(out), "--case", "O-2", "--no-progress"]
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 2  # the hint of the old error: still nothing written
    err = capsys.readouterr().err
    assert "inside the source" in err and "resume=True" not in err
    assert _tree(vm) == before


def test_swapped_source_and_out_are_refused_and_the_vm_folder_is_untouched(tmp_path, capsys):
    """`acquire local EVIDENCE --out VMFOLDER --resume`: the evidence dir as the source."""
    from vmforensics import LocalAcquirer
    from vmforensics.demo.vm import build_demo_vm

    vm = build_demo_vm(tmp_path / "ds").parent
    evidence = LocalAcquirer().acquire(str(vm), tmp_path / "ev", case=CASE, progress=False).path
    before = _tree(vm)
    argv = ["acquire", "local", str(evidence), "--out", str(vm), "--case", "O-3", "--no-progress"]
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "holds no interrupted acquisition" in err
    assert _tree(vm) == before
