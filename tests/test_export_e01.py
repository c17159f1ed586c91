"""E01 export under custody, checked by independent readers: Debian's ewf-tools (ewfverify with
the stored MD5, ewfinfo's case fields, ewfexport back to raw) and libewf's Python bindings (pyewf),
against the raw bytes qemu-img convert gives for the same sealed VMDK."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import vmforensics.cli as cli
from tests.custody.conftest import make_writable
from vmforensics import CaseInfo, LocalAcquirer, verify
from vmforensics.custody.ewf import E01Case, export_e01
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.demo.vm import build_demo_vm
from vmforensics.errors import UsageError

pytestmark = pytest.mark.skipif(
    not (shutil.which("ewfverify") and shutil.which("qemu-img")),
    reason="ewf-tools and qemu-img (tests/apt-packages.txt) are the oracles",
)
DISK = "files/web01/web01.vmdk"
CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst", evidence_id="EV-7", notes="seized 1 Dec")


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=300, check=False)


def qemu_raw(image: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(out)], check=True, timeout=120)
    return out.read_bytes()


def _ctime(iso: str) -> str:
    import datetime as dt
    import time

    return time.ctime(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / LEDGER_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A sealed demo acquisition whose disk was exported by the CLI in 8 MiB segments."""
    base = tmp_path_factory.mktemp("e01")
    vm = build_demo_vm(base / "datastore").parent
    root = LocalAcquirer().acquire(str(vm), base / "ev", case=CASE, progress=False).path
    code = cli.main(["export", str(root), "--format", "e01", "--disk", DISK, "--segment-size", "8M"])
    assert code == 0
    return root, qemu_raw(root / DISK, base / "oracle.raw")


def test_e01_export_of_a_sealed_vmdk_passes_ewfverify_with_the_md5_of_the_raw_disk(exported) -> None:
    root, raw = exported
    segments = sorted((root / "derived" / "e01").iterdir())
    assert [p.name for p in segments] == [f"web01.E0{n}" for n in range(1, 6)]  # 32 MiB in 8 MiB segments
    assert all(p.stat().st_size <= 8 << 20 for p in segments)
    result = run("ewfverify", "-q", "-d", "sha1", str(segments[0]))
    out = result.stdout.decode()
    assert result.returncode == 0, out
    md5 = hashlib.md5(raw).hexdigest()
    assert f"MD5 hash stored in file:\t\t{md5}" in out
    assert f"MD5 hash calculated over data:\t\t{md5}" in out
    sha1 = hashlib.sha1(raw).hexdigest()
    assert f"SHA1 hash stored in file:\t\t{sha1}" in out  # the digest section
    assert f"SHA1 hash calculated over data:\t\t{sha1}" in out
    assert "ewfverify: SUCCESS" in out


def test_ewfinfo_shows_the_case_fields_of_the_manifest(exported) -> None:
    root, raw = exported
    out = run("ewfinfo", str(root / "derived" / "e01" / "web01.E01")).stdout.decode()
    manifest = json.loads((root / "manifest.json").read_text())
    assert "Case number:\t\t2026-117" in out
    assert "Examiner name:\t\tA. Analyst" in out
    assert "Evidence number:\tEV-7" in out
    assert "Notes:\t\t\tseized 1 Dec" in out
    assert "File format:\t\tEnCase 6" in out
    assert f"Media size:\t\t32 MiB ({len(raw)} bytes)" in out
    assert f"Acquisition date:\t{_ctime(manifest['finished'])}" in out  # from the manifest, not the clock


def test_ewfexport_back_to_raw_equals_qemu_img_convert_byte_for_byte(exported, tmp_path: Path) -> None:
    root, raw = exported
    result = run(
        "ewfexport",
        "-q",
        "-u",
        "-f",
        "raw",
        "-t",
        str(tmp_path / "back"),
        str(root / "derived/e01/web01.E01"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.raw").read_bytes() == raw


def test_pyewf_reads_the_segments_as_the_raw_disk(exported) -> None:
    pyewf = pytest.importorskip("pyewf", reason="libewf-python (test extra)")
    root, raw = exported
    handle = pyewf.handle()
    handle.open(pyewf.glob(str(root / "derived/e01/web01.E01")))
    try:
        assert handle.get_media_size() == len(raw)
        assert handle.read(len(raw)) == raw
        assert handle.get_header_value("case_number") == "2026-117"
        assert handle.get_hash_value("MD5") == hashlib.md5(raw).hexdigest()
    finally:
        handle.close()


def test_each_segment_is_a_derived_event_after_the_seal_with_the_raw_sha256_and_verify_rederives_it(
    exported,
) -> None:
    root, raw = exported
    sealed = json.loads((root / "manifest.json").read_text())["integrity"]["ledger_events"]
    after = events(root)[sealed:]
    assert [e["action"] for e in after] == ["derived"] * 5
    details = [e["details"] for e in after]
    assert [d["output"] for d in details] == [f"derived/e01/web01.E0{n}" for n in range(1, 6)]
    for d in details:
        assert d["kind"] == "e01" and d["status"] == "ok"
        assert d["sha256"] == hashlib.sha256((root / d["output"]).read_bytes()).hexdigest()
        assert d["inputs"][0]["path"] == DISK
        assert not stat.S_IMODE((root / d["output"]).stat().st_mode) & 0o222
    media = details[-1]["facts"]["media"]
    assert media == {
        "size": len(raw),
        "md5": hashlib.md5(raw).hexdigest(),
        "sha1": hashlib.sha1(raw).hexdigest(),
        "sha256": hashlib.sha256(raw).hexdigest(),  # what `qemu-img convert | sha256sum` gives
    }
    report = verify(root)
    assert report.ok, report
    assert [c.status for c in report.post_seal] == ["OK"] * 5
    assert all("re-derived byte for byte" in c.summary for c in report.post_seal)


def test_a_changed_segment_fails_verify(exported, tmp_path: Path) -> None:
    root, _ = exported
    copy = tmp_path / "ev"
    shutil.copytree(root, copy, symlinks=True)
    make_writable(copy)
    segment = copy / "derived/e01/web01.E03"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    report = verify(copy)
    assert not report.ok
    (failed,) = [c for c in report.post_seal if c.status == "FAILED"]
    assert "web01.E03" in failed.summary and "not the file the ledger recorded" in " ".join(failed.problems)


def test_export_e01_is_deterministic_and_never_overwrites(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(3 << 20) + bytes(1 << 20) + b"tail" * 128 * 1024)
    case = E01Case(
        case_number="C-1", examiner="E", acquired=1764633600, guid="12345678-1234-5678-1234-567812345678"
    )
    first = export_e01(disk, tmp_path / "a.E01", case=case, segment_size=2 << 20, progress=False)
    second = export_e01(disk, tmp_path / "b.E01", case=case, segment_size=2 << 20, progress=False)
    assert len(first.segments) == 3
    assert [s.sha256 for s in first.segments] == [s.sha256 for s in second.segments]
    assert first.sha256 == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert run("ewfverify", "-q", str(tmp_path / "a.E01")).returncode == 0
    with pytest.raises(UsageError, match="already exists"):
        export_e01(disk, tmp_path / "a.E01", case=case, segment_size=2 << 20, progress=False)
    assert [s.sha256 for s in first.segments] == [
        hashlib.sha256(Path(s.path).read_bytes()).hexdigest() for s in first.segments
    ]


def test_tabs_and_line_breaks_in_case_fields_do_not_shift_ewfinfo_fields(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"x" * (1 << 20))
    case = E01Case(case_number="C-2", examiner="Eve\tEvil\nCase number:\tforged", description="d\r\ne")
    export_e01(disk, tmp_path / "h.E01", case=case, progress=False)
    out = run("ewfinfo", str(tmp_path / "h.E01")).stdout.decode()
    assert "Case number:\t\tC-2" in out and "forged" not in out.replace("Eve Evil Case number: forged", "")
    assert "Examiner name:\t\tEve Evil Case number: forged" in out


def test_a_disk_that_is_not_whole_sectors_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "odd.raw"
    disk.write_bytes(b"y" * 1000)
    with pytest.raises(UsageError, match="whole number of 512-byte sectors"):
        export_e01(disk, tmp_path / "odd.E01", case=E01Case(case_number="C", examiner="E"), progress=False)
    assert not (tmp_path / "odd.E01").exists()


def test_cli_e01_without_disk_or_with_a_disk_outside_the_manifest_is_a_usage_error(exported, capsys) -> None:
    root, _ = exported
    assert cli.main(["export", str(root), "--format", "e01"]) == 2
    assert "--disk" in capsys.readouterr().err
    assert cli.main(["export", str(root), "--format", "e01", "--disk", "files/web01/web01.vmx.missing"]) == 2
    assert cli.main(["export", str(root), "--format", "e01", "--disk", DISK, "--output", "../x.E01"]) == 2


_RSS_SCRIPT = """
import sys
from vmforensics.custody.ewf import E01Case, export_e01
export_e01(sys.argv[1], sys.argv[2], case=E01Case(case_number="C", examiner="E"), progress=False)
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""


def _sparse_export(tmp_path: Path, size: int, name: str) -> tuple[int, Path]:
    disk = tmp_path / f"{name}.raw"
    with open(disk, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 3, size - 4096):
            f.seek(offset)
            f.write(name.encode() * (4096 // len(name)))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(disk), str(tmp_path / f"{name}.E01")],
        capture_output=True,
        check=True,
        timeout=1800,
    )
    return int(out.stdout.split()[-1]), disk


@pytest.mark.parametrize(
    "size",
    [pytest.param(2 << 30, id="2GiB"), pytest.param(10 << 30, id="10GiB", marks=pytest.mark.slow)],
)
def test_a_large_sparse_disk_exports_with_flat_rss_and_every_chunk(tmp_path: Path, size: int) -> None:
    small_kib, _ = _sparse_export(tmp_path, 256 << 20, "small")
    large_kib, disk = _sparse_export(tmp_path, size, "large")
    assert large_kib - small_kib < 32 * 1024, (small_kib, large_kib)  # 8x or 40x the size, same memory
    result = run("ewfinfo", str(tmp_path / "large.E01"))
    assert f"({size} bytes)" in result.stdout.decode()
    expected = hashlib.sha256()
    with open(disk, "rb") as f:
        while block := f.read(16 << 20):
            expected.update(block)
    exported = hashlib.sha256()
    with subprocess.Popen(
        ["ewfexport", "-q", "-u", "-f", "raw", "-t", "-", str(tmp_path / "large.E01")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as reader:
        assert reader.stdout is not None
        left = size  # ewfexport prints its verdict after the media on the same stream
        while left:
            block = reader.stdout.read(min(left, 16 << 20))
            assert block, f"ewfexport stopped {left} bytes short"
            exported.update(block)
            left -= len(block)
        reader.stdout.read()
    assert reader.returncode == 0
    assert exported.hexdigest() == expected.hexdigest()


def _recipe(name: str) -> tuple[str, str]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "exports.md").read_text()
    ((lang, body),) = re.findall(rf"<!-- test: {name} -->\n```(\w+)\n(.*?)```", page, re.DOTALL)
    return lang, body


def test_the_exports_page_cli_recipe_runs_as_written(tmp_path: Path) -> None:
    vm = build_demo_vm(tmp_path / "datastore").parent
    LocalAcquirer().acquire(str(vm), tmp_path / "web01-evidence", case=CASE, progress=False)
    lang, body = _recipe("e01-cli")
    assert lang == "sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ewfverify: SUCCESS" in done.stdout
    assert "Case number:\t\t2026-117" in done.stdout and "Examiner name:\t\tA. Analyst" in done.stdout
    assert len(list((tmp_path / "web01-evidence/derived/e01").iterdir())) == 3  # 32 MiB in 16M segments


def test_the_exports_page_python_recipe_writes_a_qcow2_disk_as_e01(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(1 << 20) + bytes(2 << 20) + b"end!" * 1024)  # a hole, a partial last chunk
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(tmp_path / "disk.qcow2")], check=True)
    expected = qemu_raw(tmp_path / "disk.qcow2", tmp_path / "oracle.raw")
    lang, body = _recipe("e01-python")
    assert lang == "python"
    done = subprocess.run(
        [sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    md5, sha256, segments = done.stdout.split(" ", 2)
    assert md5 == hashlib.md5(expected).hexdigest() and sha256 == hashlib.sha256(expected).hexdigest()
    assert segments.strip() == "['disk.E01']"
    back = run("ewfexport", "-q", "-u", "-f", "raw", "-t", str(tmp_path / "back"), str(tmp_path / "disk.E01"))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "back.raw").read_bytes() == expected


@pytest.mark.parametrize(
    "forged",
    [
        {"chunks_per_segment": 0},
        {"segment": "2"},
        {"segment": 99},
        {"compression": "lzma"},
        {"case": {"case_number": "x"}},
        {"case": "not a mapping"},
    ],
)
def test_a_forged_conversion_in_an_event_after_the_seal_fails_verify_without_crashing(
    exported, forged
) -> None:
    """The events after the signed head are not signed: verify reads their conversion as hostile."""
    root, _ = exported
    from vmforensics.custody.derived import check_event
    from vmforensics.custody.export import load_manifest
    from vmforensics.custody.ledger import CustodyEvent

    line = events(root)[-1]
    line["details"] = {**line["details"], "conversion": {**line["details"]["conversion"], **forged}}
    check = check_event(root, CustodyEvent(**line), load_manifest(root)[0], {})
    assert check.status == "FAILED"
    assert any("EvidenceError" in problem for problem in check.problems), check.problems


def test_case_export_after_the_e01_export_lists_the_derived_events_after_the_seal(exported) -> None:
    root, _ = exported
    from vmforensics.custody.export import export_directory

    graph = json.loads(export_directory(root, "case"))
    names = [
        node.get("uco-core:name") for node in graph["@graph"] if node.get("@type") == "uco-action:Action"
    ]
    assert names[-5:] == ["derived"] * 5 and names[:1] != ["derived"]


def test_the_issue_command_line_with_out_names_the_first_segment_under_derived(tmp_path: Path) -> None:
    vm = build_demo_vm(tmp_path / "datastore").parent
    root = LocalAcquirer().acquire(str(vm), tmp_path / "ev", case=CASE, progress=False).path
    argv = [
        "export",
        str(root),
        "--disk",
        DISK,
        "--format",
        "e01",
        "--out",
        "exhibit7.E01",
        "--compression",
        "best",
    ]
    assert cli.main(argv) == 0
    (segment,) = (root / "derived" / "e01").iterdir()
    assert segment.name == "exhibit7.E01"
    out = run("ewfinfo", str(segment)).stdout.decode()
    assert "Compression level:\tbest compression" in out
    assert run("ewfverify", "-q", str(segment)).returncode == 0
    assert verify(root).ok


def test_compression_none_stores_every_chunk_with_its_adler32_and_libewf_reads_it(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))
    case = E01Case(case_number="C-3", examiner="E")
    result = export_e01(disk, tmp_path / "n.E01", case=case, compression="none", progress=False)
    assert result.segments[0].size > 2 << 20  # nothing compressed, zeros included
    assert "Compression level:\tno compression" in run("ewfinfo", str(tmp_path / "n.E01")).stdout.decode()
    back = run("ewfexport", "-q", "-u", "-f", "raw", "-t", str(tmp_path / "back"), str(tmp_path / "n.E01"))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "back.raw").read_bytes() == disk.read_bytes()


def test_segment_names_run_past_e99_and_keep_the_case_of_the_first() -> None:
    from vmforensics.custody.ewf import segment_names

    names = segment_names("case/web01.E01", 101)
    assert names[:2] == ["case/web01.E01", "case/web01.E02"]
    assert names[98:] == ["case/web01.E99", "case/web01.EAA", "case/web01.EAB"]
    assert segment_names("web01.e01", 2) == ["web01.e01", "web01.e02"]
    with pytest.raises(UsageError, match=r"must end in \.E01"):
        segment_names("web01.raw", 1)


def test_e01_options_with_another_format_are_a_usage_error(exported, capsys) -> None:
    root, _ = exported
    assert cli.main(["export", str(root), "--format", "sums", "--compression", "best"]) == 2
    assert "belong to --format e01" in capsys.readouterr().err


def test_export_e01_into_reports_progress_once_per_segment(tmp_path: Path) -> None:
    from vmforensics.custody.ewf import export_e01_into

    vm = build_demo_vm(tmp_path / "datastore").parent
    root = LocalAcquirer().acquire(str(vm), tmp_path / "ev", case=CASE, progress=False).path
    updates = []
    results = export_e01_into(root, DISK, segment_size=16 << 20, progress=updates.append)
    assert [r.ok for r in results] == [True, True, True]
    spans = [r.event.details["facts"]["chunks"][1] * 32768 for r in results]
    assert [u.done for u in updates] == [0, spans[0], spans[0] + spans[1], 32 << 20]  # start, 3 segments
