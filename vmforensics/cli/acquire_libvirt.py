"""``vmforensics acquire libvirt --host H --domain NAME|UUID``: a KVM/QEMU guest through virsh over SSH."""

from __future__ import annotations

import argparse
import os

from vmforensics.cli.common import (
    PASSWORD_ENV,
    add_acquire_options,
    password_from_env_or_prompt,
    run_acquisition,
)

PRESERVE = ("snapshot", "suspend", "save", "none")


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "libvirt", help="a libvirt (KVM/QEMU) domain: virsh and file reads over SSH on its host"
    )
    where = parser.add_argument_group("host")
    where.add_argument("--host", help="the KVM host to reach over SSH (omit to work on this machine)")
    where.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    where.add_argument("--user", help="SSH user (default: your user name)")
    where.add_argument("--identity", help="SSH private key file")
    where.add_argument("--known-hosts", help="known_hosts file that holds the host's key")
    where.add_argument("--host-key-fingerprint", help="pin the host key (SHA256:…) instead of known_hosts")
    where.add_argument(
        "--password-auth",
        action="store_true",
        help=f"authenticate with a password from ${PASSWORD_ENV} (or a prompt); never on the command line",
    )
    where.add_argument(
        "--uri", default="qemu:///system", help="libvirt URI on the host (default qemu:///system)"
    )
    where.add_argument("--virsh", default="virsh", help="virsh command on the host")
    where.add_argument(
        "--host-workdir", help="host folder for overlays and memory/state files (default: by the disk)"
    )
    parser.add_argument("--domain", required=True, help="domain name, UUID or id")
    parser.add_argument(
        "--memory-dump",
        action="store_true",
        help="with --preserve snapshot, also an ELF memory image (virsh dump)",
    )
    add_acquire_options(parser, preserve=PRESERVE)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.libvirt import LibvirtAcquirer

    password = None
    if args.password_auth:
        user = args.user or os.environ.get("USER", "")
        password = password_from_env_or_prompt(
            f"SSH password for {user}@{args.host}: ", account=(args.host, user)
        )
    acquirer = LibvirtAcquirer(
        args.host,
        user=args.user,
        port=args.port,
        identity=args.identity,
        password=password,
        known_hosts=args.known_hosts,
        host_key_fingerprint=args.host_key_fingerprint,
        uri=args.uri,
        virsh=args.virsh,
        host_workdir=args.host_workdir,
        memory_dump=args.memory_dump,
    )
    return run_acquisition(acquirer, args.domain, args)
