"""EvidenceWriter: exclusive create, hostile names, no symlink escape, resume after a crash, seal."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from vmforensics.custody.evidence import EvidenceDirectory, safe_relative_path
from vmforensics.errors import EvidenceError, UnsafePathError, UsageError

HOSTILE_NAMES = [
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "C:/Windows/x",
    "a//b",
    "./a",
    "a/./b",
    "nul\x00byte",
    "tab\tname",
    "back\\slash",
    "CON",
    "con.txt",
    "a/LPT1",
    "x" * 256,
    "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_source_names_are_refused(name):
    with pytest.raises(UnsafePathError):
        safe_relative_path(name)


def test_ordinary_datastore_names_are_kept():
    assert safe_relative_path("ds 1/web01 (old)/web01-000001-sesparse.vmdk") == (
        "ds 1",
        "web01 (old)",
        "web01-000001-sesparse.vmdk",
    )


def test_file_is_hashed_in_the_same_pass_and_sealed_read_only(tmp_path):
    evidence = EvidenceDirectory(tmp_path / "ev")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with evidence.open_file("ds/vm/disk-flat.vmdk", ("sha256", "md5", "sha1", "sha512")) as writer:
        writer.write(payload)
        digests = writer.seal()
    assert digests == {
        name: hashlib.new(name, payload).hexdigest() for name in ("sha256", "md5", "sha1", "sha512")
    }
    path = evidence.local_path("ds/vm/disk-flat.vmdk")
    assert path.read_bytes() == payload
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert evidence.is_sealed("ds/vm/disk-flat.vmdk")


def test_existing_evidence_file_is_never_overwritten(tmp_path):
    evidence = EvidenceDirectory(tmp_path / "ev")
    with evidence.open_file("a.bin") as writer:
        writer.write(b"original")
        writer.seal()
    with pytest.raises(EvidenceError, match="never overwritten"):
        evidence.open_file("a.bin")
    with pytest.raises(EvidenceError, match="sealed"):
        evidence.open_file("a.bin", resume=True)
    assert evidence.local_path("a.bin").read_bytes() == b"original"


def test_symlink_planted_in_the_evidence_tree_is_not_followed(tmp_path):
    evidence = EvidenceDirectory(tmp_path / "ev")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "ev" / "files" / "ds").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        evidence.open_file("ds/file.bin")
    (tmp_path / "ev" / "files" / "f.bin").symlink_to(outside / "target")
    with pytest.raises((EvidenceError, OSError)):
        evidence.open_file("f.bin", resume=True)
    assert list(outside.iterdir()) == []


def test_resume_rehashes_what_a_crashed_run_left_and_continues(tmp_path):
    payload = os.urandom(5 * 1024 * 1024)
    evidence = EvidenceDirectory(tmp_path / "ev")
    writer = evidence.open_file("disk.bin", ("sha256", "md5"))
    writer.write(payload[:2_000_003])
    writer.flush()
    writer.close()  # the process "dies" here: no seal
    (tmp_path / "ev" / "custody.log.jsonl").touch()  # an interrupted run always leaves its ledger
    resumed = EvidenceDirectory(tmp_path / "ev", resume=True).open_file(
        "disk.bin", ("sha256", "md5"), resume=True
    )
    assert resumed.resumed_from == 2_000_003
    resumed.write(payload[2_000_003:])
    assert resumed.seal() == {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "md5": hashlib.md5(payload).hexdigest(),
    }


def test_non_empty_destination_is_refused_without_resume(tmp_path):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "something").write_text("x")
    with pytest.raises(EvidenceError, match="not empty"):
        EvidenceDirectory(tmp_path / "ev")


def test_unknown_hash_algorithm_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        EvidenceDirectory(tmp_path / "ev").open_file("a", ("crc32",))


def test_aligned_and_unaligned_pieces_land_byte_exact_whichever_write_path_they_take(tmp_path):
    """Block-aligned pieces bypass the page cache (O_DIRECT), unaligned ones are buffered."""
    pieces = [os.urandom(n) for n in (8 << 20, 4096 * 3, 12345, 8 << 20, 1, 4096)]
    evidence = EvidenceDirectory(tmp_path / "ev")
    with evidence.open_file("mixed.bin", ("sha256", "md5")) as writer:
        for piece in pieces:
            writer.write(piece)
        digests = writer.seal()
    payload = b"".join(pieces)
    assert evidence.local_path("mixed.bin").read_bytes() == payload
    assert digests == {"sha256": hashlib.sha256(payload).hexdigest(), "md5": hashlib.md5(payload).hexdigest()}
