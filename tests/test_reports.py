"""Jupyter HTML views: tables of a real demo acquisition, its verification and its disk image,
parsed back with lxml; untrusted names never become markup."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import attrs
import pytest

from tests.custody.conftest import make_writable
from vmforensics import CaseInfo, LocalAcquirer, SigningKey, open_image, verify
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.demo.vm import MAC, build_demo_vm
from vmforensics.reports import image_info_html, manifest_html, timeline_html, verification_html

html = pytest.importorskip("lxml.html", reason="lxml (test extra) parses the HTML back")


@pytest.fixture(scope="module")
def acquired(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("reports")
    vm = build_demo_vm(root / "datastore").parent
    case = CaseInfo(case_id="REP-1", examiner="R. Eporter", authority="warrant 42")
    return LocalAcquirer().acquire(
        str(vm), root / "evidence", case=case, signer=SigningKey.generate(), progress=False
    )


def _rows(document, css_class: str) -> list[list[str]]:
    (table,) = document.xpath(f"//table[@class='{css_class}']")
    return [[cell.text_content() for cell in row.xpath("td")] for row in table.xpath("tbody/tr")]


def _facts(document, css_class: str) -> dict[str, str]:
    (table,) = document.xpath(f"//table[@class='{css_class}']")
    return {
        row.xpath("th")[0].text_content(): row.xpath("td")[0].text_content()
        for row in table.xpath("tbody/tr")
    }


def test_acquisition_result_shows_files_vm_identity_clock_and_the_custody_timeline(acquired):
    document = html.fromstring(acquired._repr_html_())
    files = _rows(document, "vmforensics-files")
    assert len(files) == len(acquired.files)
    for row in files:
        path = acquired.path / row[0]
        assert row[3] == hashlib.sha256(path.read_bytes()).hexdigest() and row[4] == "sealed"
    assert {row[1] for row in files} >= {"config", "disk", "log"}
    vm = _facts(document, "vmforensics-vm")
    assert vm["VM"] == "web01" and vm["MAC addresses"] == MAC
    assert vm["BIOS UUID"] == acquired.manifest.source.vm.uuid
    assert "method" in _facts(document, "vmforensics-clock")
    assert _facts(document, "vmforensics-case")["authority"] == "warrant 42"
    timeline = _rows(document, "vmforensics-timeline")
    ledger = (acquired.path / LEDGER_NAME).read_bytes().splitlines()
    assert len(timeline) == len(ledger) and timeline[0][2] == "start" and timeline[-1][2] == "seal"


def test_manifest_with_a_report_shows_each_files_status(acquired):
    report = verify(acquired.path)
    document = html.fromstring(manifest_html(acquired.manifest, report=report))
    assert {row[4] for row in _rows(document, "vmforensics-files")} == {"OK"}
    assert html.fromstring(acquired.manifest._repr_html_()).xpath("//table[@class='vmforensics-files']")


def test_verification_report_lists_mismatches_first_with_their_problems(acquired, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(acquired.path, copy)
    make_writable(copy)
    (copy / "files" / "web01" / "vmware.log").write_text("rewritten")
    (copy / "files" / "web01" / "planted.exe").write_bytes(b"MZ")
    report = verify(copy)
    document = html.fromstring(report._repr_html_())
    assert _facts(document, "vmforensics-verification")["result"] == "FAILED"
    rows = _rows(document, "vmforensics-files")
    assert [r[1] for r in rows[:2]] == ["EXTRA", "MISMATCH"] and rows[1][0] == "files/web01/vmware.log"
    assert all(r[1] == "OK" for r in rows[2:])
    assert document.xpath("//b[text()='MISMATCH']/@style")[0].startswith("color:#cf222e")
    good = html.fromstring(verification_html(verify(acquired.path)))
    assert (
        _facts(good, "vmforensics-verification")["result"]
        == "VERIFIED (integrity only: key from the directory)"
    )


def test_hostile_names_are_escaped_not_rendered(acquired):
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    vm = attrs.evolve(acquired.manifest.source.vm, name=hostile, guest_reported={"hostname": hostile})
    files = (attrs.evolve(acquired.manifest.files[0], local_path=f"files/{hostile}", source_path=hostile),)
    manifest = attrs.evolve(
        acquired.manifest, source=attrs.evolve(acquired.manifest.source, vm=vm), files=files
    )
    markup = manifest_html(manifest)
    document = html.fromstring(markup)
    assert not document.xpath("//script | //img")
    assert _facts(document, "vmforensics-vm")["VM"] == hostile
    assert _rows(document, "vmforensics-files")[0][0] == f"files/{hostile}"


def test_long_timelines_show_the_first_and_last_events(acquired):
    from vmforensics.custody.ledger import CustodyEvent

    events = [
        CustodyEvent(n, "2026-01-01T00:00:00Z", {}, f"step-{n}", {"n": n}, "0" * 64) for n in range(1, 1001)
    ]
    rows = _rows(html.fromstring(timeline_html(events, limit=10)), "vmforensics-timeline")
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5", "…", "996", "997", "998", "999", "1000"]


def test_disk_image_description_shows_the_chain(acquired):
    disk = next(f for f in acquired.files if f.role == "disk")
    with open_image(acquired.path / disk.local_path) as image:
        info = image.info()
    document = html.fromstring(image_info_html(info))
    (layer,) = _rows(document, "vmforensics-chain")
    assert layer[0] == "0" and layer[1] == str(info.path) and layer[2].startswith("vmdk")
    assert f"{info.size:,} bytes" in document.text_content()


def test_reports_do_not_need_the_evidence_directory(acquired, tmp_path):
    moved = attrs.evolve(acquired, path=Path(tmp_path / "gone"))
    document = html.fromstring(moved._repr_html_())
    assert not document.xpath("//table[@class='vmforensics-timeline']")
    assert len(_rows(document, "vmforensics-files")) == len(acquired.files)
