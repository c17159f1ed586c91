"""``vmforensics survey local|vmware|libvirt|hyperv …``: what runs where, read-only, with findings."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vmforensics.cli.common import add_case_options, add_signing_options, case_from_args, signer_from_args
from vmforensics.cli.connections import (
    add_libvirt_host_options,
    add_vsphere_options,
    add_winrm_options,
    libvirt_host_settings,
    vsphere_settings,
    winrm_settings,
)

if TYPE_CHECKING:
    from vmforensics.survey.models import SurveyReport, Thresholds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "survey", help="inventory VMs, snapshots, MACs and hosts, with findings (changes nothing)"
    )
    sources = parser.add_subparsers(dest="survey_source", metavar="SOURCE", required=True)

    local = sources.add_parser("local", help="a datastore or folder of VM folders reachable as files")
    local.add_argument("path", help="the datastore (or any folder above VM folders)")
    _common(local)
    local.set_defaults(handler=_run_local)

    vmware = sources.add_parser(
        "vmware",
        help="vCenter or ESXi (vSphere API)",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line).",
    )
    add_vsphere_options(vmware)
    vmware.add_argument("--no-events", action="store_true", help="do not read moves and power history")
    vmware.add_argument(
        "--no-datastore-files", action="store_true", help="do not list datastores for files no VM uses"
    )
    _common(vmware)
    vmware.set_defaults(handler=_run_vmware)

    libvirt = sources.add_parser(
        "libvirt",
        help="a KVM/QEMU host: virsh and qemu-img over SSH (reading commands only)",
        description="Every domain, snapshot, disk chain and storage pool of one libvirt host.",
    )
    where = add_libvirt_host_options(libvirt)
    where.add_argument(
        "--log-dir", default="/var/log/libvirt/qemu", help="the QEMU driver's log folder on the host"
    )
    _common(libvirt)
    libvirt.set_defaults(handler=_run_libvirt)

    hyperv = sources.add_parser(
        "hyperv",
        help="a Hyper-V host: reviewed PowerShell over WinRM, folders listed over SMB",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line). "
        "The account needs WinRM access and Hyper-V Administrators membership; listing the VM "
        "folders for orphaned files needs read access to the administrative shares (C$...).",
    )
    add_winrm_options(hyperv)
    hyperv.add_argument("--smb-port", type=int, default=445)
    hyperv.add_argument(
        "--no-files", action="store_true", help="do not list VM folders over SMB (no orphaned-file search)"
    )
    _common(hyperv)
    hyperv.set_defaults(handler=_run_hyperv)


def _common(parser: argparse.ArgumentParser) -> None:
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


def _thresholds(args: argparse.Namespace) -> Thresholds:
    from vmforensics.survey.models import Thresholds

    return Thresholds(
        dormant_days=args.dormant_days,
        active_since=args.active_since,
        snapshot_age_days=args.snapshot_age_days,
        snapshot_depth=args.snapshot_depth,
        clock_skew_seconds=args.clock_skew,
        moved_within_days=args.moved_within_days,
    )


def _run_local(args: argparse.Namespace) -> int:
    from vmforensics.survey.local import survey_local

    return _finish(survey_local(args.path, thresholds=_thresholds(args)), args)


def _run_vmware(args: argparse.Namespace) -> int:
    from vmforensics.survey.vmware import survey_vmware

    report = survey_vmware(
        **vsphere_settings(args),
        thresholds=_thresholds(args),
        events=not args.no_events,
        datastore_files=not args.no_datastore_files,
    )
    return _finish(report, args)


def _run_libvirt(args: argparse.Namespace) -> int:
    from vmforensics.survey.libvirt import survey_libvirt

    report = survey_libvirt(
        **libvirt_host_settings(args),
        log_dir=args.log_dir or None,
        thresholds=_thresholds(args),
    )
    return _finish(report, args)


def _run_hyperv(args: argparse.Namespace) -> int:
    from vmforensics.survey.hyperv import survey_hyperv

    report = survey_hyperv(
        **winrm_settings(args),
        smb_port=args.smb_port,
        files=not args.no_files,
        thresholds=_thresholds(args),
    )
    return _finish(report, args)


def _finish(report: SurveyReport, args: argparse.Namespace) -> int:
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
    """A plain-text view: one line per VM, then the findings."""
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
    return "\n".join(lines)
