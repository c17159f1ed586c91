"""``vmforensics acquire vmware --host H --vm NAME|UUID|MOREF --out DIR``: vCenter or ESXi."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, password_from_env_or_prompt, run_acquisition


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "vmware",
        help="a VM on vCenter or ESXi (vSphere API; files over HTTPS or SSH)",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line).",
    )
    parser.add_argument("--host", required=True, help="vCenter or ESXi host name or address")
    parser.add_argument("--port", type=int, default=443, help="API port (default 443)")
    parser.add_argument("--user", required=True, help="vSphere user, e.g. ir@vsphere.local")
    parser.add_argument(
        "--vm", required=True, help="the VM's name, BIOS UUID, instance UUID or moref (vm-42)"
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signed the server's certificate")
    tls.add_argument(
        "--tls-thumbprint", metavar="SHA256", help="pin the server certificate's SHA-256 (or SHA-1)"
    )
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS (recorded in the manifest)")
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
    add_acquire_options(parser, preserve=("snapshot", "suspend", "none"))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.vmware import VMwareAcquirer

    password = password_from_env_or_prompt(
        f"password for {args.user}@{args.host}: ", account=(args.host, args.user)
    )
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
        args.host,
        port=args.port,
        user=args.user,
        password=password,
        tls_ca=args.tls_ca,
        tls_thumbprint=args.tls_thumbprint,
        insecure=args.insecure,
        via=args.via,
        ssh_options=ssh,
        datastore_endpoint=args.datastore_endpoint,
    )
    return run_acquisition(acquirer, args.vm, args)
