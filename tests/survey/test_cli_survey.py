"""``vmforensics survey local|vmware``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import vmforensics.cli as cli
from tests.survey.estate import NOW, add_vm
from vmforensics import verify
from vmforensics.survey.models import SurveyReport


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    add_vm(ds, "web01", mac="00:50:56:a1:00:01", staging=tmp_path / "s")
    add_vm(ds, "db01", mac="00:50:56:a1:00:01", staging=tmp_path / "s")  # duplicate MAC
    return ds


def test_survey_local_json_csv_and_seal(
    datastore: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = cli.main(
        [
            "survey",
            "local",
            str(datastore),
            "--json",
            "--csv",
            str(tmp_path / "vms.csv"),
            "--seal",
            str(tmp_path / "sealed"),
            "--case",
            "2026-117",
            "--examiner",
            "A. Analyst",
        ]
    )

    assert code == 0
    report = SurveyReport.from_json(capsys.readouterr().out)
    assert {vm.name for vm in report.vms} == {"web01", "db01"}
    assert {f.kind for f in report.findings} == {"duplicate-mac"}
    rows = list(csv.DictReader((tmp_path / "vms.csv").open()))
    assert {r["name"]: r["findings"] for r in rows} == {"web01": "duplicate-mac", "db01": "duplicate-mac"}
    assert verify(tmp_path / "sealed").ok
    sealed = json.loads((tmp_path / "sealed" / "files" / "survey" / "survey.json").read_bytes())
    assert sealed["survey_id"] == report.survey_id


def test_survey_local_text_and_dormant_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datetime as dt

    ds = tmp_path / "ds"
    add_vm(ds, "old01", mac="00:50:56:a1:00:02", last_run=NOW - dt.timedelta(days=40), staging=tmp_path / "s")

    assert cli.main(["survey", "local", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "old01" in out and "dormant" not in out
    assert cli.main(["survey", "local", str(ds), "--dormant-days", "30"]) == 0
    assert "[warning] dormant-vm: old01 has not run for 40 days" in capsys.readouterr().out


def test_survey_missing_folder_and_seal_without_case_are_usage_errors(tmp_path: Path) -> None:
    assert cli.main(["survey", "local", str(tmp_path / "nope")]) == 2
    (tmp_path / "ds").mkdir()
    assert cli.main(["survey", "local", str(tmp_path / "ds"), "--seal", str(tmp_path / "x")]) == 2


@pytest.mark.skipif(
    shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir(),
    reason="vcsim needs golang-go and golang-github-vmware-govmomi-dev",
)
def test_survey_vmware_against_vcsim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.acquire.vcsim.server import VCSim

    with VCSim(tmp_path / "vcsim") as server:
        monkeypatch.setenv("VMFORENSICS_PASSWORD", server.password)
        args = ["survey", "vmware", "--host", server.host, "--port", str(server.port), "--user", server.user]
        code = cli.main([*args, "--tls-thumbprint", server.thumbprint_sha256, "--json"])
        assert code == 0
        report = SurveyReport.from_json(capsys.readouterr().out)
        assert len(report.vms) == 4 and report.source.connection["tls_verification"] == "pinned-thumbprint"
        monkeypatch.setenv("VMFORENSICS_PASSWORD", "wrong")
        assert cli.main([*args, "--tls-thumbprint", server.thumbprint_sha256]) == 1


def test_survey_text_escapes_names_planted_in_the_vmx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "ds"
    folder = add_vm(ds, "web01", mac="00:50:56:a1:00:03", staging=tmp_path / "s")
    vmx = next(folder.glob("*.vmx"))
    lines = vmx.read_text().splitlines()
    assert any(line.startswith("displayName") for line in lines)
    planted = 'displayName = "web01\x1b[2J\x1b[1;1HVERIFIED: all good"'
    vmx.write_text("\n".join(planted if line.startswith("displayName") else line for line in lines) + "\n")
    assert cli.main(["survey", "local", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # no terminal escape reaches the examiner's screen
    assert "web01\\x1b[2J" in out
