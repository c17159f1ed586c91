"""vmforensics.confine: paths from source content are read only beneath the given roots, through
no symbolic link on any component, and only when they are regular files.

Every test runs twice: with openat2 (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, where the kernel has
it) and with the per-component openat/O_NOFOLLOW walk forced. The bait files an attacker would
aim at are files these tests create outside the VM folder, never the host's own /etc.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from vmforensics import confine
from vmforensics.confine import (
    MISSING,
    NOT_REGULAR,
    OUTSIDE,
    SYMLINK,
    ConfinedPath,
    Confinement,
    Refusal,
    RemoteConfinement,
)
from vmforensics.errors import RefusedPathError, UsageError


@pytest.fixture(params=["openat2", "per-component"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "openat2":
        if confine._openat2 is None:
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(confine, "_openat2", None)
    return request.param


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A datastore with a VM folder, and examiner files beside it that the VM must not reach."""
    examiner = tmp_path / "examiner-etc"
    examiner.mkdir()
    (examiner / "shadow").write_text("root:$6$examiner-secret\n")
    vm = tmp_path / "datastore" / "web01"
    (vm / "sub").mkdir(parents=True)
    (vm / "web01.nvram").write_bytes(b"NVRAM" * 10)
    (vm / "sub" / "disk-flat.vmdk").write_bytes(b"\x00" * 4096)
    return {"vm": vm, "examiner": examiner}


def read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


def test_a_relative_reference_inside_the_vm_folder_is_opened(layout, resolution) -> None:
    policy = Confinement([layout["vm"]])
    found = policy.check("sub/disk-flat.vmdk", layout["vm"])
    assert isinstance(found, ConfinedPath) and found.relative == "sub/disk-flat.vmdk" and not found.explicit
    assert read_all(policy.open_regular(found)) == b"\x00" * 4096


def test_an_absolute_reference_to_the_examiners_file_is_refused_as_outside(layout, resolution) -> None:
    policy = Confinement([layout["vm"]])
    bait = str(layout["examiner"] / "shadow")
    refusal = policy.check(bait, layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == OUTSIDE and refusal.reference == bait
    assert "outside the acquisition roots" in str(refusal) and repr(bait) in str(refusal)
    with pytest.raises(RefusedPathError) as caught:
        policy.open_regular(bait)
    assert caught.value.refusal == refusal


def test_dot_dot_walking_out_of_the_vm_folder_is_refused_with_the_exact_reference(layout, resolution) -> None:
    policy = Confinement([layout["vm"]])
    reference = "../../examiner-etc/shadow"
    refusal = policy.check(reference, layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == OUTSIDE
    assert refusal.reference == reference and refusal.path == str(layout["examiner"] / "shadow")


def test_dot_dot_that_stays_inside_the_root_is_allowed(layout, resolution) -> None:
    policy = Confinement([layout["vm"]])
    found = policy.check("../sub/../web01.nvram", layout["vm"] / "sub")
    assert isinstance(found, ConfinedPath) and found.path == str(layout["vm"] / "web01.nvram")


def test_a_directory_symlink_inside_the_vm_folder_is_not_followed(layout, resolution) -> None:
    (layout["vm"] / "etcdir").symlink_to(layout["examiner"])
    policy = Confinement([layout["vm"]])
    refusal = policy.check("etcdir/shadow", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == SYMLINK, refusal
    with pytest.raises(RefusedPathError, match="symbolic link"):
        policy.open_regular("etcdir/shadow", layout["vm"])


def test_a_symlink_as_the_last_component_is_not_followed(layout, resolution) -> None:
    (layout["vm"] / "web01.vmx~").symlink_to(layout["examiner"] / "shadow")
    refusal = Confinement([layout["vm"]]).check("web01.vmx~", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == SYMLINK and refusal.file_type == "symbolic link"


def test_a_fifo_is_refused_without_blocking(layout, resolution) -> None:
    os.mkfifo(layout["vm"] / "web01.vmss")
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(Confinement([layout["vm"]]).check("web01.vmss", layout["vm"])),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "opening a FIFO blocked"
    (refusal,) = result
    assert isinstance(refusal, Refusal) and refusal.kind == NOT_REGULAR and refusal.file_type == "FIFO"


def test_a_socket_is_refused_as_a_socket(layout, resolution) -> None:
    server = socket.socket(socket.AF_UNIX)
    path = layout["vm"] / "s.sock"
    try:
        server.bind(str(path))
        refusal = Confinement([layout["vm"]]).check("s.sock", layout["vm"])
    finally:
        server.close()
    assert isinstance(refusal, Refusal) and refusal.kind == NOT_REGULAR and refusal.file_type == "socket"


def test_a_device_inside_the_root_is_refused_and_never_opened(layout, resolution) -> None:
    os.mknod(layout["vm"] / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
    refusal = Confinement([layout["vm"]]).check("zero", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.file_type == "character device"


def test_a_directory_is_refused_as_a_directory(layout, resolution) -> None:
    refusal = Confinement([layout["vm"]]).check("sub", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == NOT_REGULAR and refusal.file_type == "directory"


def test_a_missing_file_is_a_missing_refusal(layout, resolution) -> None:
    refusal = Confinement([layout["vm"]]).check("gone.vmdk", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == MISSING


def test_a_file_as_an_intermediate_component_is_refused(layout, resolution) -> None:
    refusal = Confinement([layout["vm"]]).check("web01.nvram/x", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == NOT_REGULAR


def test_an_explicitly_allowed_root_is_reachable_and_marked(layout, resolution, tmp_path: Path) -> None:
    other = tmp_path / "datastore2"
    other.mkdir()
    (other / "base.vmdk").write_bytes(b"# Disk DescriptorFile\n")
    policy = Confinement([layout["vm"]], allowed_roots=[other])
    found = policy.check(str(other / "base.vmdk"), layout["vm"])
    assert isinstance(found, ConfinedPath) and found.explicit and found.root == str(other)
    assert policy.describe() == {"roots": [str(layout["vm"])], "allowed_roots": [str(other)]}


def test_a_root_given_through_a_symlink_is_trusted_but_links_below_it_are_not(
    layout, resolution, tmp_path: Path
) -> None:
    alias = tmp_path / "ds-alias"
    alias.symlink_to(layout["vm"].parent)  # how /vmfs/volumes/<name> points at the volume UUID
    policy = Confinement([alias / "web01"])
    assert read_all(policy.open_regular("web01.nvram", alias / "web01")) == b"NVRAM" * 10
    (layout["vm"] / "up").symlink_to(layout["vm"].parent)
    assert isinstance(policy.check("up/web01/web01.nvram", alias / "web01"), Refusal)


def test_a_nul_byte_in_a_reference_is_refused(layout) -> None:
    refusal = Confinement([layout["vm"]]).resolve("web01.nvram\0.txt", layout["vm"])
    assert isinstance(refusal, Refusal) and refusal.kind == "invalid"


def test_the_opened_descriptor_blocks_normally_and_reads_from_the_start(layout, resolution) -> None:
    import fcntl

    fd = Confinement([layout["vm"]]).open_regular("web01.nvram", layout["vm"])
    try:
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


def test_a_relative_root_is_a_usage_error_and_an_empty_policy_is_refused() -> None:
    with pytest.raises(UsageError):
        RemoteConfinement(["relative/dir"])
    with pytest.raises(UsageError):
        Confinement([])


def test_remote_posix_paths_are_checked_as_strings() -> None:
    policy = RemoteConfinement(["/vmfs/volumes/ds1/web01"])
    assert isinstance(policy.resolve("web01-flat.vmdk", "/vmfs/volumes/ds1/web01"), ConfinedPath)
    refusal = policy.resolve("../../../../etc/shadow", "/vmfs/volumes/ds1/web01")
    assert isinstance(refusal, Refusal) and refusal.path == "/etc/shadow"
    assert isinstance(policy.resolve("//vmfs/volumes/ds1/web01/x", None), ConfinedPath)
    assert isinstance(
        policy.resolve("/vmfs/volumes/ds1/web01-other/x", None), Refusal
    )  # a prefix, not a parent


def test_remote_windows_paths_compare_without_case_and_strip_the_long_path_prefix() -> None:
    policy = RemoteConfinement(["C:\\Hyper-V\\web01"], flavor="windows")
    found = policy.resolve("\\\\?\\c:\\hyper-v\\WEB01\\Virtual Hard Disks\\web01.vhdx")
    assert isinstance(found, ConfinedPath) and found.relative == "Virtual Hard Disks\\web01.vhdx"
    assert isinstance(policy.resolve("..\\..\\Windows\\System32\\config\\SAM", "C:\\Hyper-V\\web01"), Refusal)
    assert isinstance(policy.resolve("C:disk.vhdx", "C:\\Hyper-V\\web01"), Refusal)
    confined = policy.resolve("web01.vmcx", "C:\\Hyper-V\\web01")
    assert isinstance(confined, ConfinedPath)
    assert isinstance(policy.check_stat(confined, is_dir=False, is_symlink=True), Refusal)
    assert policy.check_stat(confined, is_dir=False, is_symlink=False) is confined


def test_allowed_roots_must_be_absolute_paths_and_a_list() -> None:
    from vmforensics.confine import check_allowed_roots

    assert check_allowed_roots(["/mnt/ds2", "D:\\VMs"]) == ["/mnt/ds2", "D:\\VMs"]
    with pytest.raises(UsageError, match="absolute"):
        check_allowed_roots(["relative"])
    with pytest.raises(UsageError, match="list"):
        check_allowed_roots("/mnt/ds2")  # type: ignore[arg-type]
