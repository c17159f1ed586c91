"""``vmforensics survey SOURCE …``: what runs where, read-only, with findings.

One sub-command per registered hypervisor with a survey (vmforensics.hypervisors); each adds its
own options, then :func:`add_survey_options`, and hands its report to :func:`finish`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vmforensics.cli.common import add_case_options, add_signing_options, case_from_args, signer_from_args
from vmforensics.custody.names import printable
from vmforensics.hypervisors import hypervisors, load

if TYPE_CHECKING:
    from vmforensics.survey.models import SurveyReport, Thresholds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "survey", help="inventory VMs, snapshots, MACs and hosts, with findings (changes nothing)"
    )
    sources = parser.add_subparsers(dest="survey_source", metavar="SOURCE", required=True)
    for hypervisor in hypervisors():
        if hypervisor.survey_cli is not None:
            load(hypervisor.survey_cli)(sources)


def add_survey_options(parser: argparse.ArgumentParser) -> None:
    """The options every ``survey <name>`` has: output, finding thresholds, sealing."""
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--csv", metavar="FILE", help="also write the per-VM table as CSV")
    limits = parser.add_argument_group("findings")
    limits.add_argument("--dormant-days", type=float, default=90, help="powered off longer than this (90)")
    limits.add_argument("--active-since", metavar="DATE", help="VMs not run since this ISO date are dormant")
    limits.add_argument("--snapshot-age-days", type=float, default=3, help="snapshots older than this (3)")
    limits.add_argument("--snapshot-depth", type=int, default=3, help="snapshot chains deeper than this (3)")
    limits.add_argument("--clock-skew", type=float, default=60, help="clock skew in seconds (60)")
    limits.add_argument("--moved-within-days", type=float, default=30, help="report moves this recent (30)")
    seal = parser.add_argument_group("sealing the report as evidence")
    seal.add_argument("--seal", metavar="DIR", help="also seal the report into this new evidence directory")
    add_case_options(seal)
    add_signing_options(seal)


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """The finding thresholds of :func:`add_survey_options`."""
    from vmforensics.survey.models import Thresholds

    return Thresholds(
        dormant_days=args.dormant_days,
        active_since=args.active_since,
        snapshot_age_days=args.snapshot_age_days,
        snapshot_depth=args.snapshot_depth,
        clock_skew_seconds=args.clock_skew,
        moved_within_days=args.moved_within_days,
    )


def finish(report: SurveyReport, args: argparse.Namespace) -> int:
    """Seal, write CSV and print the report as :func:`add_survey_options` asked; the exit status."""
    if args.seal:
        from vmforensics.survey.seal import seal_report

        sealed = seal_report(report, args.seal, case=case_from_args(args), signer=signer_from_args(args))
        print(f"survey sealed into {sealed.path}", file=sys.stderr)
    if args.csv:
        report.to_csv(args.csv)
    if args.json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
    else:
        print(summary(report))
    return 0


def summary(report: SurveyReport) -> str:
    """A plain-text view: one line per VM, then the findings, with every name escaped."""
    header = f"{'VM':<28} {'power':<10} {'host':<16} {'snaps':>5} {'last active':<20} MACs"
    lines = [
        f"survey of {report.source.kind} {report.source.host or ''} at {report.taken}: "
        f"{len(report.vms)} VMs, {len(report.hosts)} hosts, {len(report.findings)} findings",
        header,
    ]
    for vm in report.vms:
        lines.append(
            f"{vm.name[:28]:<28} {(vm.power_state or '?').split(' ')[0][:10]:<10} {(vm.host or '-')[:16]:<16} "
            f"{len(vm.snapshots):>5} {(vm.last_activity or '-')[:19]:<20} {' '.join(vm.macs)}"
        )
    if report.findings:
        lines.append("findings:")
        lines += [f"  [{f.severity}] {f.kind}: {f.explanation}" for f in report.findings]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(printable(line) for line in lines)  # every field came from the surveyed host
