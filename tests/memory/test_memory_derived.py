"""The derived memory image written after the seal of an acquisition that captured memory:
under derived/, recorded by one "derived" ledger event after the signed head, re-derived byte
for byte by verify, and never able to lose the sealed acquisition."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.interop.vmware_state import BANNER, write_memory_state
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.custody.derived import Sink
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.memory import convert, open_memory

CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst")
PAGE = 4096
#: a small gap (not the 4 GiB one) keeps the raw image small
REGIONS = ((0, 0, 512), (0x600, 512, 512))
STATE = "web01-4ad1e7f3"


@pytest.fixture
def vm_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "web01"
    folder.mkdir()
    (folder / "web01.vmx").write_text('config.version = "8"\nmemSize = "4"\n')
    write_memory_state(folder / f"{STATE}.vmss", folder / f"{STATE}.vmem", REGIONS)
    return folder


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / LEDGER_NAME).read_text().splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_suspended_vm_gets_a_raw_image_under_derived_recorded_after_the_seal(
    vm_folder: Path, tmp_path: Path
) -> None:
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    root = result.path
    (derived,) = result.derived
    assert derived.ok and derived.output == f"derived/memory/web01/{STATE}.raw"
    image = root / derived.output
    assert sha256(image) == derived.sha256
    assert not stat.S_IMODE(image.stat().st_mode) & 0o222  # read-only like the sealed files
    with open_memory(vm_folder / f"{STATE}.vmss") as source:
        expected = convert(source, tmp_path / "expected.raw", "raw")
    assert derived.sha256 == expected.sha256  # the same bytes a direct conversion writes
    assert image.read_bytes()[(0x600 + 3) * PAGE + 0x10 :].startswith(BANNER)

    ledger = events(root)
    sealed_count = json.loads((root / "manifest.json").read_text())["integrity"]["ledger_events"]
    assert [e["action"] for e in ledger[sealed_count:]] == ["derived"]
    event = ledger[-1]["details"]
    assert (
        event["status"] == "ok"
        and event["sha256"] == derived.sha256
        and event["size"] == image.stat().st_size
    )
    listed = {f.local_path: f.hashes["sha256"] for f in result.files}
    assert event["inputs"] == [
        {"path": f"files/web01/{STATE}.vmss", "sha256": listed[f"files/web01/{STATE}.vmss"]},
        {"path": f"files/web01/{STATE}.vmem", "sha256": listed[f"files/web01/{STATE}.vmem"]},
    ]
    assert event["tool"]["name"] == "vmforensics" and event["tool"]["version"]
    assert event["conversion"] == {"format": "raw", "source_format": "vmware"}
    assert not any(path.startswith("derived/") for path in listed)  # the signed manifest is unchanged

    report = verify(root)
    assert report.ok, report
    (check,) = report.post_seal
    assert check.action == "derived" and check.status == "OK" and "re-derived byte for byte" in check.summary


def test_a_changed_derived_image_fails_verification(vm_folder: Path, tmp_path: Path) -> None:
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    image = result.path / result.derived[0].output
    image.chmod(0o644)
    with image.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"tampered")
    report = verify(result.path)
    assert not report.ok
    (check,) = report.post_seal
    assert check.status == "FAILED"
    assert any("not the file the ledger recorded" in p for p in check.problems)


def test_elf_format_is_recorded_and_rederived(vm_folder: Path, tmp_path: Path) -> None:
    result = LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "ev", case=CASE, progress=False, memory_image="elf"
    )
    (derived,) = result.derived
    assert derived.output.endswith(".elf")
    with open_memory(result.path / derived.output) as image:
        assert image.ranges() == ((0, 512 * PAGE), (0x600 * PAGE, 512 * PAGE))
    assert verify(result.path).ok


def test_memory_image_false_derives_nothing(vm_folder: Path, tmp_path: Path) -> None:
    result = LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "ev", case=CASE, progress=False, memory_image=False
    )
    assert result.derived == ()
    assert not (result.path / "derived").exists()
    assert "derived" not in [e["action"] for e in events(result.path)]


def test_a_state_that_cannot_be_converted_is_recorded_and_the_acquisition_stands(
    vm_folder: Path, tmp_path: Path
) -> None:
    write_memory_state(
        vm_folder / f"{STATE}.vmss", tmp_path / "unused.vmem", ((0, 0, 512), (0x600, 512, 4096))
    )
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    (derived,) = result.derived
    assert not derived.ok and "beyond the" in derived.error
    assert derived.output is None
    assert not list((result.path / "derived").rglob("*.raw"))  # no partial image is left
    assert events(result.path)[-1]["details"]["status"] == "failed"
    report = verify(result.path)
    assert report.ok, report  # the evidence is intact; the failed derivation is reported
    assert report.post_seal[0].status == "OK" and "was not derived" in report.post_seal[0].summary
    assert len(result.files) == 3


def test_the_checker_rederives_without_writing(vm_folder: Path, tmp_path: Path) -> None:
    result = LocalAcquirer().acquire(str(vm_folder), tmp_path / "ev", case=CASE, progress=False)
    before = sorted((p, p.stat().st_mtime_ns) for p in result.path.rglob("*"))
    assert verify(result.path).ok
    assert sorted((p, p.stat().st_mtime_ns) for p in result.path.rglob("*")) == before
    assert os.access(result.path / "manifest.json", os.R_OK)


def test_auto_gives_a_small_guest_with_firmware_below_4_gib_an_elf_and_a_large_hole_free_one_raw(
    vm_folder: Path, tmp_path: Path
) -> None:
    """A 2 MiB guest whose last region sits just below 4 GiB (where a BIOS ROM lies): raw would be
    4 GiB of holes to hash at every derive and verify, so "auto" writes ELF; the fixture's guest
    (holes smaller than its memory) still gets raw."""
    write_memory_state(
        vm_folder / f"{STATE}.vmss", vm_folder / f"{STATE}.vmem", ((0, 0, 512), (0xFFFC0, 512, 64))
    )
    result = LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "ev", case=CASE, progress=False, memory_image="auto"
    )
    (derived,) = result.derived
    assert derived.ok and derived.output == f"derived/memory/web01/{STATE}.elf"
    assert events(result.path)[-1]["details"]["conversion"] == {"format": "elf", "source_format": "vmware"}
    with (
        open_memory(result.path / derived.output) as image,
        open_memory(vm_folder / f"{STATE}.vmss") as source,
    ):
        assert image.ranges() == source.ranges() == ((0, 512 * PAGE), (0xFFFC0 * PAGE, 64 * PAGE))
        assert image.read(0xFFFC0 * PAGE, 64 * PAGE) == source.read(0xFFFC0 * PAGE, 64 * PAGE)
    assert verify(result.path).ok

    write_memory_state(vm_folder / f"{STATE}.vmss", vm_folder / f"{STATE}.vmem", REGIONS)
    again = LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "ev2", case=CASE, progress=False, memory_image="auto"
    )
    assert again.derived[0].output.endswith(".raw")


def test_a_sink_hashes_what_it_was_given_even_when_the_buffer_is_reused(tmp_path: Path) -> None:
    """The hashing thread gets a copy of a mutable buffer: reusing it for the next read must not
    change the hash of what was already written (the file on disk is the oracle)."""
    out = tmp_path / "sink.bin"
    buffer = bytearray(b"a" * 3000)
    with out.open("wb") as handle:
        sink = Sink(handle.fileno())
        for fill in b"abc":
            buffer[:] = bytes([fill]) * 3000
            sink.write(buffer)
            sink.hole(5000)
        sink.write(memoryview(b"tail"))
        sink.finish()
    assert sink.sha256 == sha256(out) and sink.position == out.stat().st_size == 3 * 8000 + 4
