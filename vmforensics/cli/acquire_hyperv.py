"""``vmforensics acquire hyperv --host H --user U --vm NAME|GUID --out DIR``: PowerShell over WinRM, files over SMB."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, password_from_env_or_prompt, run_acquisition


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "hyperv",
        help="a VM on a Hyper-V host (PowerShell over WinRM; files over SMB)",
        description="Password: $VMFORENSICS_PASSWORD, else prompted (never on the command line). "
        "The account needs WinRM access, Hyper-V Administrators membership and read access to the "
        "administrative share (C$) or to --smb-share. See docs/hyperv.md.",
    )
    parser.add_argument("--host", required=True, help="Hyper-V host name or address")
    parser.add_argument("--user", required=True, help="DOMAIN\\user or user")
    parser.add_argument("--vm", required=True, help="the VM's name or its id (GUID)")
    winrm = parser.add_argument_group("winrm")
    winrm.add_argument(
        "--auth",
        choices=("ntlm", "kerberos", "credssp", "basic"),
        default="ntlm",
        help="WinRM authentication",
    )
    winrm.add_argument(
        "--http",
        action="store_true",
        help="WinRM over HTTP 5985 with message encryption (NTLM/Kerberos/CredSSP only); default HTTPS 5986",
    )
    winrm.add_argument("--winrm-port", type=int, help="WinRM port (default 5986, or 5985 with --http)")
    winrm.add_argument("--tls-ca", metavar="PEM", help="CA bundle that issued the host's WinRM certificate")
    winrm.add_argument(
        "--insecure", action="store_true", help="do not verify the WinRM certificate (recorded)"
    )
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
        args.host,
        user=args.user,
        password=password_from_env_or_prompt(
            f"password for {args.user}@{args.host}: ", account=(args.host, args.user)
        ),
        transport=args.auth,
        winrm_https=not args.http,
        winrm_port=args.winrm_port,
        ca_bundle=args.tls_ca,
        verify_certificate=not args.insecure,
        smb_share=args.smb_share,
        smb_share_root=args.smb_share_root,
        smb_port=args.smb_port,
        smb_encrypt=True if args.smb_encrypt else None,
        restart_saved=args.restart_saved,
    )
    return run_acquisition(acquirer, args.vm, args, remote_hash=not args.no_remote_hash)
