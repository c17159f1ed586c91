"""``vmforensics acquire vmware --host H --vm NAME|UUID|MOREF --out DIR``: vCenter or ESXi."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_vsphere_options, vsphere_settings
from vmforensics.errors import UsageError


def register(sources: argparse._SubParsersAction) -> None:
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
    add_acquire_options(parser, preserve=("snapshot", "suspend", "none"))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.vmware import VMwareAcquirer

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
