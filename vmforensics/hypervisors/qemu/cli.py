"""``vmforensics acquire qemu --qmp SOCKET``, ``acquire proxmox --vmid N`` and ``survey proxmox``."""

from __future__ import annotations

import argparse
from typing import Any

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_ssh_key_options, ssh_key_settings
from vmforensics.cli.survey import add_survey_options, finish, thresholds_from_args
from vmforensics.hypervisors.qemu import HYPERVISOR


def add_host_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "host" group: --host, --port, --user, the SSH key options and --socat."""
    where = parser.add_argument_group("host")
    where.add_argument(
        "--host", help="the host running QEMU, reached over SSH (omit to work on this machine)"
    )
    where.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    where.add_argument("--user", help="SSH user (default: your user name)")
    add_ssh_key_options(where)
    where.add_argument("--socat", default="socat", help="socat command on the host (QMP over SSH)")
    return where


def host_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the acquirers and survey_proxmox from :func:`add_host_options`."""
    return {
        "host": args.host,
        "user": args.user,
        "port": args.port,
        **ssh_key_settings(args, host=args.host, user=args.user),
        "socat": args.socat,
    }


def add_proxmox_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--config-root", default="/etc/pve", help="Proxmox configuration folder (/etc/pve)")
    group.add_argument(
        "--run-root",
        default="/var/run/qemu-server",
        help="folder of the VMs' QMP sockets (/var/run/qemu-server)",
    )


def _acquire_options(parser: argparse.ArgumentParser, where: argparse._ArgumentGroup) -> None:
    where.add_argument(
        "--host-workdir", help="host folder for overlays and memory/state files (default: by the disk)"
    )
    parser.add_argument(
        "--keep-paused", action="store_true", help="leave the VM paused after preservation (default: cont)"
    )
    add_acquire_options(parser, preserve=HYPERVISOR.preserve)


def register_acquire(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser("qemu", help="a QEMU VM by its QMP socket: QMP and file reads over SSH")
    where = add_host_options(parser)
    parser.add_argument("--qmp", required=True, metavar="SOCKET", help="the VM's QMP unix socket on the host")
    parser.add_argument(
        "--log-file", action="append", default=[], help="a host file to add as a log (repeatable)"
    )
    parser.add_argument(
        "--config-file", action="append", default=[], help="a host file to add as config (repeatable)"
    )
    _acquire_options(parser, where)
    parser.set_defaults(handler=_run_qemu)


def register_acquire_proxmox(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "proxmox", help="a Proxmox VE VM by its VM id: its .conf, QMP and files over SSH"
    )
    where = add_host_options(parser)
    add_proxmox_options(where)
    parser.add_argument("--vmid", required=True, help="the VM id (100, 101, ...)")
    _acquire_options(parser, where)
    parser.set_defaults(handler=_run_proxmox)


def _common_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {**host_settings(args), "host_workdir": args.host_workdir, "keep_running": not args.keep_paused}


def _run_qemu(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.qemu.acquirer import QemuAcquirer

    acquirer = QemuAcquirer(**_common_settings(args), log_files=args.log_file, config_files=args.config_file)
    return run_acquisition(acquirer, args.qmp, args)


def _run_proxmox(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.qemu.acquirer import ProxmoxAcquirer

    acquirer = ProxmoxAcquirer(**_common_settings(args), config_root=args.config_root, run_root=args.run_root)
    return run_acquisition(acquirer, args.vmid, args)


def register_survey_proxmox(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "proxmox",
        help="a Proxmox VE node: its VM configs, storages and QMP run states over SSH (reading only)",
        description="Every VM config, snapshot, disk and unclaimed image file of one Proxmox VE node.",
    )
    add_proxmox_options(add_host_options(parser))
    add_survey_options(parser)
    parser.set_defaults(handler=_run_survey)


def _run_survey(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.qemu.survey import survey_proxmox

    report = survey_proxmox(
        **host_settings(args),
        config_root=args.config_root,
        run_root=args.run_root,
        thresholds=thresholds_from_args(args),
    )
    return finish(report, args)
