"""``vmforensics acquire libvirt --host H --domain NAME|UUID`` and ``survey libvirt``: a KVM/QEMU host through virsh over SSH."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_libvirt_host_options, libvirt_host_settings
from vmforensics.cli.survey import add_survey_options, finish, thresholds_from_args
from vmforensics.hypervisors.libvirt import HYPERVISOR


def register_acquire(sources: argparse._SubParsersAction) -> None:
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
    add_acquire_options(parser, preserve=HYPERVISOR.preserve)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.libvirt.acquirer import LibvirtAcquirer

    acquirer = LibvirtAcquirer(
        **libvirt_host_settings(args),
        host_workdir=args.host_workdir,
        memory_dump=args.memory_dump,
    )
    return run_acquisition(acquirer, args.domain, args)


def register_survey(sources: argparse._SubParsersAction) -> None:
    libvirt = sources.add_parser(
        "libvirt",
        help="a KVM/QEMU host: virsh and qemu-img over SSH (reading commands only)",
        description="Every domain, snapshot, disk chain and storage pool of one libvirt host.",
    )
    where = add_libvirt_host_options(libvirt)
    where.add_argument(
        "--log-dir", default="/var/log/libvirt/qemu", help="the QEMU driver's log folder on the host"
    )
    where.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also follow backing files beneath DIR on the host (beyond the disk folders and file pools)",
    )
    add_survey_options(libvirt)
    libvirt.set_defaults(handler=_run_survey)


def _run_survey(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.libvirt.survey import survey_libvirt

    report = survey_libvirt(
        **libvirt_host_settings(args),
        log_dir=args.log_dir or None,
        thresholds=thresholds_from_args(args),
        allowed_roots=tuple(args.allow_root),
    )
    return finish(report, args)
