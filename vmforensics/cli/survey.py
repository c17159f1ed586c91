"""``vmforensics survey local|vmware|libvirt|hyperv …``: what runs where, read-only, with findings."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from vmforensics.cli.common import (
    KEY_PASSPHRASE_ENV,
    PASSWORD_ENV,
    case_from_args,
    password_from_env_or_prompt,
    signer_from_args,
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
    vmware.add_argument("--host", required=True, help="vCenter or ESXi host name or address")
    vmware.add_argument("--port", type=int, default=443)
    vmware.add_argument("--user", required=True, help="vSphere user, e.g. ir@vsphere.local")
    tls = vmware.add_mutually_exclusive_group()
    tls.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signed the server's certificate")
    tls.add_argument("--tls-thumbprint", metavar="SHA256", help="pin the server certificate's SHA-256")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS (recorded in the report)")
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
    libvirt.add_argument("--host", help="the KVM host to reach over SSH (omit to survey this machine)")
    libvirt.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    libvirt.add_argument("--user", help="SSH user (default: your user name)")
    libvirt.add_argument("--identity", help="SSH private key file")
    keys = libvirt.add_mutually_exclusive_group()
    keys.add_argument("--known-hosts", help="known_hosts file that holds the host's key")
    keys.add_argument("--host-key-fingerprint", help="pin the host key (SHA256:…) instead of known_hosts")
    libvirt.add_argument(
        "--password-auth",
        action="store_true",
        help=f"authenticate with a password from ${PASSWORD_ENV} (or a prompt); never on the command line",
    )
    libvirt.add_argument("--uri", default="qemu:///system", help="libvirt URI on the host (qemu:///system)")
    libvirt.add_argument("--virsh", default="virsh", help="virsh command on the host")
    libvirt.add_argument(
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
    hyperv.add_argument("--host", required=True, help="Hyper-V host name or address")
    hyperv.add_argument("--user", required=True, help="DOMAIN\\user or user")
    hyperv.add_argument(
        "--auth",
        choices=("ntlm", "kerberos", "credssp", "basic"),
        default="ntlm",
        help="WinRM authentication",
    )
    hyperv.add_argument(
        "--http",
        action="store_true",
        help="WinRM over HTTP 5985 with message encryption (NTLM/Kerberos/CredSSP only); default HTTPS 5986",
    )
    hyperv.add_argument("--winrm-port", type=int, help="WinRM port (default 5986, or 5985 with --http)")
    hyperv.add_argument("--tls-ca", metavar="PEM", help="CA bundle that issued the host's WinRM certificate")
    hyperv.add_argument(
        "--insecure", action="store_true", help="do not verify the WinRM certificate (recorded)"
    )
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
    seal.add_argument("--case", dest="case_id", default=os.environ.get("VMFORENSICS_CASE"), help="case id")
    seal.add_argument("--examiner", default=os.environ.get("VMFORENSICS_EXAMINER"))
    seal.add_argument("--evidence-id")
    seal.add_argument("--description")
    seal.add_argument("--authority")
    seal.add_argument("--key", help="examiner's private key (PEM); default: a single-use key")
    seal.add_argument("--key-passphrase-env", default=KEY_PASSPHRASE_ENV, metavar="VAR")


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

    password = password_from_env_or_prompt(f"password for {args.user}@{args.host}: ")
    report = survey_vmware(
        args.host,
        port=args.port,
        user=args.user,
        password=password,
        tls_ca=args.tls_ca,
        tls_thumbprint=args.tls_thumbprint,
        insecure=args.insecure,
        thresholds=_thresholds(args),
        events=not args.no_events,
        datastore_files=not args.no_datastore_files,
    )
    return _finish(report, args)


def _run_libvirt(args: argparse.Namespace) -> int:
    from vmforensics.survey.libvirt import survey_libvirt

    password = None
    if args.password_auth:
        password = password_from_env_or_prompt(
            f"SSH password for {args.user or os.environ.get('USER')}@{args.host}: "
        )
    report = survey_libvirt(
        args.host,
        user=args.user,
        port=args.port,
        identity=args.identity,
        password=password,
        known_hosts=args.known_hosts,
        host_key_fingerprint=args.host_key_fingerprint,
        uri=args.uri,
        virsh=args.virsh,
        log_dir=args.log_dir or None,
        thresholds=_thresholds(args),
    )
    return _finish(report, args)


def _run_hyperv(args: argparse.Namespace) -> int:
    from vmforensics.survey.hyperv import survey_hyperv

    report = survey_hyperv(
        args.host,
        user=args.user,
        password=password_from_env_or_prompt(f"password for {args.user}@{args.host}: "),
        transport=args.auth,
        winrm_https=not args.http,
        winrm_port=args.winrm_port,
        ca_bundle=args.tls_ca,
        verify_certificate=not args.insecure,
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
