"""``vmforensics acquire vmware --host H --vm NAME|UUID|MOREF --out DIR`` and ``survey vmware``: vCenter or ESXi."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_vsphere_options, vsphere_settings
from vmforensics.cli.survey import add_survey_options, finish, thresholds_from_args
from vmforensics.errors import UsageError
from vmforensics.hypervisors.vmware import HYPERVISOR


def register_acquire(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "vmware",
        help="a VM on vCenter or ESXi (vSphere API; files over HTTPS or SSH)",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line).",
    )
    add_vsphere_options(parser)
    parser.add_argument(
        "--vm", required=True, help="the VM's name, BIOS UUID, instance UUID or moref (vm-42)"
    )
    parser.add_argument(
        "--via", choices=("https", "ssh"), default="https", help="how files travel (default https)"
    )
    parser.add_argument("--ssh-user", default="root", help="with --via ssh: the ESXi user")
    parser.add_argument("--ssh-host", help="with --via ssh: the ESXi host (default: the VM's host)")
    parser.add_argument("--ssh-port", type=int, default=22)
    parser.add_argument("--ssh-identity", help="with --via ssh: private key file")
    parser.add_argument("--ssh-known-hosts", help="with --via ssh: known_hosts file to trust")
    parser.add_argument("--ssh-fingerprint", help="with --via ssh: pin the host key (SHA256:...)")
    parser.add_argument(
        "--datastore-endpoint", metavar="HOST:PORT", help="download datastore files from here"
    )
    parser.add_argument(
        "--download-from",
        choices=("host", "vcenter"),
        default="host",
        help="on vCenter: read files from the VM's ESXi host with a service ticket and its "
        "certificate pinned (default; falls back to vCenter per file, recorded), or always via vCenter",
    )
    parser.add_argument(
        "--host-thumbprint",
        action="append",
        default=[],
        metavar="NAME=SHA256",
        help="pin an ESXi host's certificate (SHA-256) known out of band; repeatable",
    )
    add_acquire_options(parser, preserve=HYPERVISOR.preserve)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.vmware.acquirer import VMwareAcquirer

    connection = vsphere_settings(args)
    ssh = None
    if args.via == "ssh":
        ssh = {
            "user": args.ssh_user,
            "host": args.ssh_host,
            "port": args.ssh_port,
            "identity": args.ssh_identity,
            "known_hosts": args.ssh_known_hosts,
            "host_key_fingerprint": args.ssh_fingerprint,
        }
    acquirer = VMwareAcquirer(
        **connection,
        via=args.via,
        ssh_options=ssh,
        datastore_endpoint=args.datastore_endpoint,
        download_from=args.download_from,
        host_thumbprints=_thumbprints(args.host_thumbprint),
    )
    return run_acquisition(acquirer, args.vm, args)


def _thumbprints(pairs: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for pair in pairs:
        name, sep, digest = pair.partition("=")
        if not sep or not name or not digest:
            raise UsageError(f"--host-thumbprint takes NAME=SHA256, not {pair!r}")
        pins[name] = digest
    return pins


def register_survey(sources: argparse._SubParsersAction) -> None:
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
    add_survey_options(vmware)
    vmware.set_defaults(handler=_run_survey)


def _run_survey(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.vmware.survey import survey_vmware

    report = survey_vmware(
        **vsphere_settings(args),
        thresholds=thresholds_from_args(args),
        events=not args.no_events,
        datastore_files=not args.no_datastore_files,
    )
    return finish(report, args)
