"""Exports of a sealed demo acquisition: DFXML against the DFXML schema, CASE/UCO JSON-LD through
case_validate, SHA256SUMS through coreutils' sha256sum -c; hashes checked against hashlib."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import vmforensics.cli as cli
from tests.custody.conftest import make_writable
from vmforensics import CaseInfo, LocalAcquirer, SigningKey
from vmforensics.custody.export import (
    DFXML_NS,
    VMF_NS,
    export_directory,
    load_manifest,
    to_case,
    to_dfxml,
)
from vmforensics.custody.ledger import LEDGER_NAME
from vmforensics.demo.vm import build_demo_vm
from vmforensics.errors import EvidenceError

etree = pytest.importorskip("lxml.etree", reason="lxml (test extra) validates the DFXML schema")

SCHEMA = Path(__file__).parent / "data" / "dfxml-subset.xsd"
NS = {"d": DFXML_NS, "v": VMF_NS}


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    vm = build_demo_vm(root / "datastore").parent
    case = CaseInfo(case_id="EXP-1", examiner="E. Xporter", evidence_id="EX-7", description="export test")
    result = LocalAcquirer().acquire(
        str(vm), root / "evidence", case=case, signer=SigningKey.generate(), hashes=("md5",), progress=False
    )
    return result.path


def _on_disk(evidence: Path, local_path: str) -> dict[str, str]:
    data = (evidence / local_path).read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


def test_dfxml_is_valid_against_the_schema_with_a_fileobject_per_evidence_file(evidence):
    document = etree.fromstring(export_directory(evidence, "dfxml"))
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    assert schema.validate(document), schema.error_log
    objects = document.findall("d:fileobject", NS)
    on_disk = sorted(
        p.relative_to(evidence).as_posix() for p in (evidence / "files").rglob("*") if p.is_file()
    )
    assert sorted(o.findtext("d:filename", namespaces=NS) for o in objects) == on_disk
    for item in objects:
        name = item.findtext("d:filename", namespaces=NS)
        digests = {h.get("type"): h.text for h in item.findall("d:hashdigest", NS)}
        assert digests == _on_disk(evidence, name)
        assert int(item.findtext("d:filesize", namespaces=NS)) == (evidence / name).stat().st_size
        assert item.findtext("v:role", namespaces=NS)
    environment = document.find("d:creator/d:execution_environment", NS)
    assert document.findtext("d:creator/d:program", namespaces=NS) == "vmforensics"
    assert environment.findtext("d:username", namespaces=NS) and environment.findtext(
        "d:start_time", namespaces=NS
    )


def test_the_schema_check_rejects_a_document_it_should(evidence):
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    document = etree.fromstring(export_directory(evidence, "dfxml"))
    document.find("d:fileobject/d:hashdigest", NS).set("type", "crc32")
    assert not schema.validate(document)
    document = etree.fromstring(export_directory(evidence, "dfxml"))
    item = document.find("d:fileobject", NS)
    item.append(item.find("d:filesize", NS))  # filesize after hashdigest: out of the schema's order
    assert not schema.validate(document)


def test_dfxml_stays_well_formed_with_hostile_names(evidence):
    manifest, _ = load_manifest(evidence)
    hostile = attrs.evolve(
        manifest,
        files=(attrs.evolve(manifest.files[0], local_path="files/a\x01b\udcff<&>.vmdk", role="disk"),),
    )
    document = etree.fromstring(to_dfxml(hostile))
    assert document.findtext("d:fileobject/d:filename", namespaces=NS) == "files/a\\x01b\\xdcff<&>.vmdk"


def test_case_export_passes_case_validate_and_carries_files_hashes_and_custody(evidence, tmp_path):
    exported = tmp_path / "acquisition.jsonld"
    exported.write_bytes(export_directory(evidence, "case"))
    pytest.importorskip("case_utils", reason="case-utils (test extra) provides case_validate")
    command = [sys.executable, "-c", "from case_utils.case_validate import main; main()", str(exported)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NonExistentCDOConceptWarning" not in done.stderr
    graph = {node["@id"]: node for node in json.loads(exported.read_text())["@graph"]}
    (action,) = [n for n in graph.values() if n["@type"] == "case-investigation:InvestigativeAction"]
    assert graph[action["uco-action:performer"]["@id"]]["uco-core:name"] == "E. Xporter"
    assert graph[action["uco-action:instrument"][0]["@id"]]["uco-core:name"] == "vmforensics"
    ledger_lines = (evidence / LEDGER_NAME).read_bytes().splitlines()
    steps = [graph[ref["@id"]] for ref in action["uco-action:subaction"]]
    assert [s["uco-core:name"] for s in steps] == [json.loads(line)["action"] for line in ledger_lines]
    files = [graph[ref["@id"]] for ref in action["uco-action:result"]]
    (provenance,) = [f for f in files if f["@type"] == "case-investigation:ProvenanceRecord"]
    assert provenance["case-investigation:exhibitNumber"] == "EX-7"
    for node in (f for f in files if f["@type"] == "uco-observable:File"):
        file_facet, content = node["uco-core:hasFacet"]
        hashes = {
            h["uco-types:hashMethod"].lower(): h["uco-types:hashValue"]["@value"]
            for h in content["uco-observable:hash"]
        }
        assert hashes == _on_disk(evidence, file_facet["uco-observable:filePath"])


def test_case_export_is_deterministic_and_refuses_a_ledger_that_does_not_match(evidence, tmp_path):
    assert export_directory(evidence, "case") == export_directory(evidence, "case")
    copy = tmp_path / "copy"
    shutil.copytree(evidence, copy)
    make_writable(copy)
    lines = (copy / LEDGER_NAME).read_bytes().splitlines(keepends=True)
    (copy / LEDGER_NAME).write_bytes(b"".join(lines[:-1]))
    with pytest.raises(EvidenceError, match="does not match the sealed manifest"):
        export_directory(copy, "case")


def test_case_graph_without_events_still_names_every_file(evidence):
    manifest, _ = load_manifest(evidence)
    graph = to_case(manifest)["@graph"]
    assert sum(n["@type"] == "uco-observable:File" for n in graph) == len(manifest.files)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_sums_export_checks_with_sha256sum_and_catches_a_changed_file(evidence, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(evidence, copy)
    make_writable(copy)
    (tmp_path / "SUMS").write_bytes(export_directory(copy, "sums"))
    check = ["sha256sum", "--strict", "-c", str(tmp_path / "SUMS")]
    done = subprocess.run(check, cwd=copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK") == sum(p.is_file() for p in (copy / "files").rglob("*")) + 2
    (copy / "files" / "web01" / "web01.vmx").write_text('displayName = "someone else"\n')
    done = subprocess.run(check, cwd=copy, capture_output=True, text=True)
    assert done.returncode == 1 and "files/web01/web01.vmx: FAILED" in done.stdout


def test_cli_export_writes_a_new_file_and_never_overwrites(evidence, tmp_path, capsys):
    out = tmp_path / "web01.dfxml"
    assert cli.main(["export", str(evidence), "--format", "dfxml", "--output", str(out)]) == 0
    assert etree.parse(str(out)).getroot().tag == f"{{{DFXML_NS}}}dfxml"
    assert cli.main(["export", str(evidence), "--format", "dfxml", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    inside = evidence / "export.dfxml"
    assert cli.main(["export", str(evidence), "--format", "sums", "--output", str(inside)]) == 2
    assert not inside.exists()


def test_cli_export_to_stdout_and_exit_codes(evidence, tmp_path, capsysbinary):
    assert cli.main(["export", str(evidence), "--format", "sums"]) == 0
    assert capsysbinary.readouterr().out.startswith((evidence / "SHA256SUMS").read_bytes())
    assert cli.main(["export", str(tmp_path), "--format", "case"]) == 2  # not an evidence directory
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(evidence), "--format", "stix"])
    assert exit_info.value.code == 2
