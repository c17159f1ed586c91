"""``vmforensics acquire libvirt --host H --domain NAME|UUID``: a KVM/QEMU guest through virsh over SSH."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_libvirt_host_options, libvirt_host_settings

PRESERVE = ("snapshot", "suspend", "save", "none")


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "libvirt", help="a libvirt (KVM/QEMU) domain: virsh and file reads over SSH on its host"
    )
    where = add_libvirt_host_options(parser)
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

    acquirer = LibvirtAcquirer(
        **libvirt_host_settings(args),
        host_workdir=args.host_workdir,
        memory_dump=args.memory_dump,
    )
    return run_acquisition(acquirer, args.domain, args)
