"""``vmforensics acquire hyperv --host H --user U --vm NAME|GUID --out DIR`` and ``survey hyperv``: PowerShell over WinRM, files over SMB."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_winrm_options, winrm_settings
from vmforensics.cli.survey import add_survey_options, finish, thresholds_from_args
from vmforensics.hypervisors.hyperv import HYPERVISOR


def register_acquire(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "hyperv",
        help="a VM on a Hyper-V host (PowerShell over WinRM; files over SMB)",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line). "
        "The account needs WinRM access, Hyper-V Administrators membership and read access to the "
        "administrative share (C$) or to --smb-share. See docs/hyperv.md.",
    )
    add_winrm_options(parser)
    parser.add_argument("--vm", required=True, help="the VM's name or its id (GUID)")
    smb = parser.add_argument_group("smb")
    smb.add_argument("--smb-share", help="read files through this share instead of the admin shares (C$...)")
    smb.add_argument(
        "--smb-share-root", metavar="PATH", help="the host folder --smb-share exports, e.g. D:\\Hyper-V"
    )
    smb.add_argument("--smb-port", type=int, default=445)
    smb.add_argument("--smb-encrypt", action="store_true", help="require SMB 3 encryption")
    parser.add_argument(
        "--restart-saved", action="store_true", help="with --preserve save: start the VM afterwards"
    )
    parser.add_argument(
        "--no-remote-hash", action="store_true", help="skip the per-file Get-FileHash cross-check on the host"
    )
    add_acquire_options(parser, preserve=HYPERVISOR.preserve)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.hyperv.acquirer import HyperVAcquirer

    acquirer = HyperVAcquirer(
        **winrm_settings(args),
        smb_share=args.smb_share,
        smb_share_root=args.smb_share_root,
        smb_port=args.smb_port,
        smb_encrypt=True if args.smb_encrypt else None,
        restart_saved=args.restart_saved,
    )
    return run_acquisition(acquirer, args.vm, args, remote_hash=not args.no_remote_hash)


def register_survey(sources: argparse._SubParsersAction) -> None:
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
    hyperv.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also follow parent disks named beneath DIR on the host (a disk on another volume)",
    )
    add_survey_options(hyperv)
    hyperv.set_defaults(handler=_run_survey)


def _run_survey(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.hyperv.survey import survey_hyperv

    report = survey_hyperv(
        **winrm_settings(args),
        smb_port=args.smb_port,
        files=not args.no_files,
        thresholds=thresholds_from_args(args),
        allowed_roots=tuple(args.allow_root),
    )
    return finish(report, args)
