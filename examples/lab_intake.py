"""Lab intake: acquire every VM folder listed in a CSV with LocalAcquirer, verify each one, and
write a results CSV. One failing VM does not stop the others; the exit status says if any failed.

CSV columns: source (VM folder or .vmx), case_id, evidence_id, examiner, and optionally
description. Each VM goes to OUT/<case_id>/<evidence_id>/.

    python examples/lab_intake.py intake.csv --out /cases [--key examiner.pem] [--results results.csv]
    python examples/lab_intake.py --demo DIR     # build two demo VM folders and their CSV, then run

An interrupted intake (Ctrl-C) leaves each evidence directory consistent: run the same command
with --resume to continue the VM that was in progress (sealed ones are skipped).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from vmforensics import CaseInfo, LocalAcquirer, SigningKey, VMForensicsError, verify
from vmforensics.demo.vm import build_demo_vm

log = logging.getLogger("lab_intake")
RESULT_FIELDS = ("source", "case_id", "evidence_id", "status", "evidence", "files", "bytes", "detail")


def read_intake(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"source", "case_id", "evidence_id", "examiner"} - set(rows[0] if rows else ())
    if missing:
        raise SystemExit(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return rows


def intake(
    rows: Iterable[dict[str, str]],
    out: Path,
    signer: SigningKey,
    *,
    resume: bool = False,
    progress: bool = False,
) -> list[dict[str, object]]:
    """Acquire and verify each row's VM; return one result row per VM."""
    results: list[dict[str, object]] = []
    for row in rows:
        result: dict[str, object] = {k: row[k] for k in ("source", "case_id", "evidence_id")}
        target = out / row["case_id"] / row["evidence_id"]
        if resume and (target / "manifest.json").exists():
            report = verify(target, signer.public_key())
            result.update(status="verified" if report.ok else "FAILED", evidence=str(target))
            result.update(detail="sealed by an earlier run")
            results.append(result)
            continue
        case = CaseInfo(
            case_id=row["case_id"],
            examiner=row["examiner"],
            evidence_id=row["evidence_id"],
            description=row.get("description") or None,
        )
        try:
            acquired = LocalAcquirer().acquire(
                row["source"], target, case=case, signer=signer, progress=progress, resume=resume
            )
            report = verify(acquired.path, signer.public_key())
        except VMForensicsError as exc:
            log.error("%s: %s", row["source"], exc)
            result.update(status="failed", detail=str(exc))
        else:
            result.update(
                status="verified" if report.ok else "FAILED",
                evidence=str(acquired.path),
                files=len(acquired.files),
                bytes=acquired.manifest.total_bytes,
                detail="; ".join(report.summary_lines()[1:]) if not report.ok else "",
            )
        results.append(result)
    return results


def write_results(results: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(results)


def make_demo_lab(root: Path) -> Path:
    """Two demo VM folders (two datastores) and an intake CSV naming them; returns the CSV."""
    rows = []
    for number in (1, 2):
        vmx = build_demo_vm(root / f"datastore{number}")
        rows.append(
            {
                "source": str(vmx.parent),
                "case_id": "LAB-2026-042",
                "evidence_id": f"E{number:03d}",
                "examiner": "Intake Examiner",
                "description": f"web01 from datastore{number}",
            }
        )
    path = root / "intake.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, help="the intake list")
    parser.add_argument("--out", type=Path, help="root of the evidence directories")
    parser.add_argument("--key", help="examiner's signing key (PEM); default: a single-use key")
    parser.add_argument("--results", type=Path, help="results CSV (default: OUT/intake-results.csv)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted intake")
    parser.add_argument("--demo", type=Path, metavar="DIR", help="build a demo lab in DIR and run on it")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.demo:
        args.csv = make_demo_lab(args.demo)
        args.out = args.out or args.demo / "cases"
    if args.csv is None or args.out is None:
        parser.error("give the intake CSV and --out (or --demo DIR)")
    passphrase = os.environ.get("VMFORENSICS_KEY_PASSPHRASE")
    signer = SigningKey.load(args.key, passphrase) if args.key else SigningKey.generate()
    args.out.mkdir(parents=True, exist_ok=True)
    results = intake(read_intake(args.csv), args.out, signer, resume=args.resume, progress=args.progress)
    results_path = args.results or args.out / "intake-results.csv"
    write_results(results, results_path)
    for r in results:
        print(f"{r['status']:9} {r['case_id']}/{r['evidence_id']}  {r['source']}  {r.get('detail') or ''}")
    print(f"results: {results_path}")
    return 0 if all(r["status"] == "verified" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
