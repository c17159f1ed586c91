"""A survey sealed as evidence, and acquire_many over a local survey's selection."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.survey.estate import add_vm
from vmforensics import CaseInfo, LocalAcquirer, SigningKey, verify
from vmforensics.errors import EvidenceError
from vmforensics.hypervisors.local.survey import survey_local
from vmforensics.survey.acquisition import acquire_many
from vmforensics.survey.models import SurveyReport
from vmforensics.survey.seal import seal_report

CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst")


@pytest.fixture
def datastore(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    for index, name in enumerate(("web01", "db01", "app01", "mail01")):
        add_vm(ds, name, mac=f"00:50:56:a1:00:{index:02x}", staging=tmp_path / "staging")
    return ds


def test_sealed_survey_verifies_and_holds_the_report(datastore: Path, tmp_path: Path) -> None:
    report = survey_local(datastore)
    key = SigningKey.generate()

    result = seal_report(report, tmp_path / "scoping", case=CASE, signer=key)

    check = verify(result.path, key.public_key())
    assert check.ok, check.problems
    stored = (result.path / "files" / "survey" / "survey.json").read_bytes()
    assert stored == report.to_json() and SurveyReport.from_json(stored) == report
    assert (result.path / "files" / "survey" / "vms.csv").read_text() == report.to_csv()
    assert {f.role for f in result.manifest.files} == {"survey-report", "survey-table", "survey-findings"}
    assert result.manifest.source.kind == "local" and result.manifest.options["survey_id"] == report.survey_id
    with pytest.raises(EvidenceError):
        seal_report(report, tmp_path / "scoping", case=CASE, signer=key)


class CountingAcquirer(LocalAcquirer):
    """LocalAcquirer that records how many acquisitions run at the same time."""

    lock = threading.Lock()
    running = 0
    peak = 0

    def connect(self, session: Any) -> None:
        with self.lock:
            type(self).running += 1
            type(self).peak = max(type(self).peak, type(self).running)
        threading.Event().wait(0.2)
        super().connect(session)

    def disconnect(self, session: Any) -> None:
        with self.lock:
            type(self).running -= 1


def test_acquire_many_bounded_parallel_one_directory_each_failures_isolated(
    datastore: Path, tmp_path: Path
) -> None:
    report = survey_local(datastore)
    shutil.rmtree(datastore / "mail01")  # vanishes between the survey and the acquisition
    updates: dict[str, int] = {}

    def on_progress(vm: str, update: Any) -> None:
        updates[vm] = update.done

    batch = acquire_many(
        report.select(),
        tmp_path / "evidence",
        case=CASE,
        acquirer_factory=lambda record: CountingAcquirer(),
        max_parallel=2,
        progress=on_progress,
    )

    assert CountingAcquirer.peak == 2
    outcome = {item.vm: item for item in batch.items}
    assert [item.vm for item in batch.failed] == ["mail01"]
    assert "VMNotFoundError" in outcome["mail01"].error
    for name in ("web01", "db01", "app01"):
        item = outcome[name]
        assert item.path == tmp_path / "evidence" / name and verify(item.path).ok
        disk = next(f for f in item.result.files if f.local_path.endswith(f"{name}.vmdk"))
        source = hashlib.sha256((datastore / name / f"{name}.vmdk").read_bytes()).hexdigest()
        assert disk.hashes["sha256"] == source
        assert updates[name] == item.result.manifest.total_bytes
    assert not batch.ok and "3/4 acquired" in repr(batch)


def test_acquire_many_gives_repeated_or_hostile_names_their_own_directories(tmp_path: Path) -> None:
    ds1, ds2 = tmp_path / "a", tmp_path / "b"
    add_vm(ds1, "web01", mac="00:50:56:a1:00:01", staging=tmp_path / "s1")
    add_vm(ds2, "web01", mac="00:50:56:a1:00:02", staging=tmp_path / "s2")
    vms = survey_local(ds1).vms + survey_local(ds2).vms
    hostile = vms[1].__class__(name="../../etc", reference=vms[1].reference)

    batch = acquire_many([vms[0], vms[1], hostile], tmp_path / "out", case=CASE, progress=False)

    assert [item.path.name for item in batch.items] == ["web01", "web01-2", "etc"]
    assert batch.ok and all(item.path.parent == tmp_path / "out" for item in batch.items)


def test_acquire_many_is_the_function_whatever_was_imported_first() -> None:
    """Importing the implementing module first once bound the module object to the package name."""
    import subprocess
    import sys

    code = (
        "import vmforensics.survey.acquisition, vmforensics.acquire.batch\n"
        "from vmforensics.survey import acquire_many\n"
        "import vmforensics\n"
        "assert callable(acquire_many) and vmforensics.acquire_many is acquire_many, acquire_many\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
