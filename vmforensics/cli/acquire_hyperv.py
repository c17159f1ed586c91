"""``vmforensics acquire hyperv --host H --user U --vm NAME|GUID --out DIR``: PowerShell over WinRM, files over SMB."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition
from vmforensics.cli.connections import add_winrm_options, winrm_settings


def register(sources: argparse._SubParsersAction) -> None:
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
    add_acquire_options(parser, preserve=("checkpoint", "save", "none"))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.hyperv import HyperVAcquirer

    acquirer = HyperVAcquirer(
        **winrm_settings(args),
        smb_share=args.smb_share,
        smb_share_root=args.smb_share_root,
        smb_port=args.smb_port,
        smb_encrypt=True if args.smb_encrypt else None,
        restart_saved=args.restart_saved,
    )
    return run_acquisition(acquirer, args.vm, args, remote_hash=not args.no_remote_hash)
