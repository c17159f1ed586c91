"""Sealing a survey: the report becomes evidence, so scoping decisions are documented and signed.

The evidence directory has the same form as an acquisition's (``files/``, ledger, signed
manifest, SHA256SUMS) and ``vmforensics verify`` checks it the same way. ``files/survey/`` holds
the canonical JSON report, the per-VM table and the findings as CSV.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vmforensics.acquire.base import AcquisitionResult
from vmforensics.custody.evidence import FILES_DIR, EvidenceDirectory, check_hashes
from vmforensics.custody.ledger import LEDGER_NAME, Ledger
from vmforensics.custody.models import (
    CaseInfo,
    EvidenceFile,
    ExaminerHost,
    Integrity,
    Manifest,
    new_acquisition_id,
    to_plain,
    utc_now,
)
from vmforensics.custody.seal import make_read_only, write_sealed_records
from vmforensics.custody.signing import SigningKey
from vmforensics.errors import UsageError
from vmforensics.survey.models import SurveyReport


def seal_report(
    report: SurveyReport,
    out: str | os.PathLike[str],
    *,
    case: CaseInfo,
    signer: SigningKey | None = None,
    hashes: tuple[str, ...] = ("sha256",),
) -> AcquisitionResult:
    """Write ``report`` into the new evidence directory ``out`` and sign it.

    Without ``signer`` a single-use key signs (integrity only, not who signed), as for acquisitions.
    """
    if not isinstance(case, CaseInfo):
        raise UsageError("case must be a vmforensics.CaseInfo(case_id=..., examiner=...)")
    began = time.monotonic()
    algorithms = check_hashes(hashes)
    key = signer or SigningKey.generate()
    evidence = EvidenceDirectory(out)
    host = ExaminerHost.current()
    ledger = Ledger.create(
        evidence.root / LEDGER_NAME, {"examiner": case.examiner, "host": host.hostname, "user": host.user}
    )
    acquisition_id = new_acquisition_id()
    started = utc_now()
    options = {"kind": "survey", "survey_id": report.survey_id, "ephemeral_signing_key": signer is None}
    ledger.append(
        "start",
        acquisition_id=acquisition_id,
        acquirer="survey",
        target=report.source.host or report.source.kind,
        case=to_plain(case),
        options=options,
        command_line=list(host.command_line),
    )
    ledger.append(
        "survey",
        survey_id=report.survey_id,
        taken=report.taken,
        source=to_plain(report.source),
        vms=len(report.vms),
        hosts=len(report.hosts),
        findings=[f"{f.severity} {f.kind} {f.subject}" for f in report.findings],
    )
    outputs = (
        ("survey/survey.json", report.to_json(), "survey-report"),
        ("survey/vms.csv", report.to_csv().encode(), "survey-table"),
        ("survey/findings.csv", report.findings_csv().encode(), "survey-findings"),
    )
    files = [_write(evidence, ledger, name, data, role, algorithms, report) for name, data, role in outputs]
    ledger.append("seal", files=len(files), omissions=0, signer_key_id=key.key_id)
    manifest = Manifest(
        acquisition_id=acquisition_id,
        case=case,
        source=report.source,
        files=tuple(files),
        integrity=Integrity(ledger.head, ledger.count, key.key_id, key.algorithm),
        examiner_host=host,
        clock=report.clock,
        options=options,
        started=started,
        finished=utc_now(),
    )
    manifest = write_sealed_records(evidence.root, manifest, key)
    make_read_only(evidence.root)
    return AcquisitionResult(Path(evidence.root), manifest, time.monotonic() - began)


def _write(
    evidence: EvidenceDirectory,
    ledger: Ledger,
    name: str,
    data: bytes,
    role: str,
    algorithms: tuple[str, ...],
    report: SurveyReport,
) -> EvidenceFile:
    started = utc_now()
    writer = evidence.open_file(name, algorithms)
    try:
        writer.write(data)
        digests = writer.seal()
    finally:
        writer.close()
    record = EvidenceFile(
        source_path=f"survey {report.survey_id} ({report.source.kind} {report.source.host or ''})".strip(),
        local_path=f"{FILES_DIR}/{name}",
        role=role,
        size=len(data),
        hashes=digests,
        transport="generated",
        started=started,
        finished=utc_now(),
    )
    ledger.append(
        "acquire-file",
        source=record.source_path,
        local=record.local_path,
        role=role,
        size=len(data),
        hashes=digests,
    )
    return record
