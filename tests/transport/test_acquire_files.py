"""`vmforensics acquire files` over a real OpenSSH server and over file://: the same signed,
verifiable evidence directory as a VM acquisition, with the source layout kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.deadline import within
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


CASE = CaseInfo(case_id="F-13", examiner="E")
BAIT = b"examiner's own file, never evidence\n"


def _tree(tmp_path):
    """source/a/b/{keep.log, link -> bait/, pipe}, and bait/ (outside the source) with secret.txt."""
    bait = tmp_path / "bait"
    bait.mkdir()
    (bait / "secret.txt").write_bytes(BAIT)
    deep = tmp_path / "source" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "keep.log").write_bytes(b"kept\n" * 10)
    (deep / "link").symlink_to(bait, target_is_directory=True)
    os.mkfifo(deep / "pipe")
    return tmp_path / "source", bait


def _in_time(acquirer, target, out, seconds=60):
    return within(
        seconds, lambda: acquirer.acquire(target, out, case=CASE, progress=False), "the acquisition blocked"
    )


def _stored(out):
    return {p.name: p.read_bytes() for p in (out / "files").rglob("*") if p.is_file()}


def _ssh(sshd):
    from vmforensics.transport.ssh import SSHTransport

    return SSHTransport(
        sshd.host, user=sshd.user, port=sshd.port, identity=sshd.client_key, known_hosts=sshd.known_hosts
    )


@pytest.mark.parametrize("over", ["local", "ssh"])
def test_recursive_walk_follows_no_symlinked_directory_and_omits_special_files(over, sshd, tmp_path):
    source, _ = _tree(tmp_path)
    transport = LocalTransport() if over == "local" else _ssh(sshd)
    result = _in_time(FilesAcquirer(transport, [str(source)], recursive=True), "src", tmp_path / "ev")
    assert _stored(tmp_path / "ev") == {"keep.log": b"kept\n" * 10}
    reasons = {o.source_path: o.reason for o in result.manifest.omissions}
    assert "symbolic link: not followed" in reasons[str(source / "a" / "b" / "link")]
    assert "FIFO" in reasons[str(source / "a" / "b" / "pipe")]
    assert verify(tmp_path / "ev").ok


class SwapsAfterListing(FilesAcquirer):
    """Between the walk and the copy, the source swaps directory a/ for a link to the bait folder
    (holding a b/keep.log of its own): the listed path now leads out of the source."""

    def enumerate(self, session):
        planned = super().enumerate(session)
        source = Path(self._paths[0])
        (self.bait / "b").mkdir()
        (self.bait / "b" / "keep.log").write_bytes(BAIT)
        os.rename(source / "a", source / "a-moved")
        (source / "a").symlink_to(self.bait, target_is_directory=True)
        return planned


@pytest.mark.parametrize("over", ["local", "ssh"])
def test_directory_swapped_for_a_symlink_before_the_copy_is_not_followed(over, sshd, tmp_path):
    source, bait = _tree(tmp_path)
    transport = LocalTransport() if over == "local" else _ssh(sshd)
    acquirer = SwapsAfterListing(transport, [str(source)], recursive=True)
    acquirer.bait = bait
    result = _in_time(acquirer, "src", tmp_path / "ev")
    assert BAIT not in _stored(tmp_path / "ev").values()
    reasons = {o.source_path: o.reason for o in result.manifest.omissions}
    assert "symbolic link" in reasons[str(source / "a" / "b" / "keep.log")]
    assert verify(tmp_path / "ev").ok


def test_directory_swapped_for_a_symlink_between_listing_and_opening_is_not_entered(tmp_path, monkeypatch):
    """The race is placed exactly: the swap happens inside the walk, just before a/ is opened by
    its descriptor (the file system operations are real; only their moment is chosen)."""
    from vmforensics.acquire import files

    source, bait = _tree(tmp_path)
    (bait / "b").mkdir()
    (bait / "b" / "keep.log").write_bytes(BAIT)
    (source / "top.log").write_bytes(b"top\n")
    real_open = os.open

    def open_after_swap(path, flags, *args, dir_fd=None, **kwargs):
        if path == "a" and dir_fd is not None and not (source / "a").is_symlink():
            os.rename(source / "a", source / "a-moved")
            (source / "a").symlink_to(bait, target_is_directory=True)
        return real_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(files.os, "open", open_after_swap)
    result = _in_time(FilesAcquirer(LocalTransport(), [str(source)], recursive=True), "src", tmp_path / "ev")
    assert BAIT not in _stored(tmp_path / "ev").values()
    reasons = {o.source_path: o.reason for o in result.manifest.omissions}
    assert "now not one" in reasons[str(source / "a")]
    assert _stored(tmp_path / "ev") == {"top.log": b"top\n"}
