"""``vmforensics acquire files URL... --out DIR``: any files, over file://, ssh://, smb:// or https://."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlsplit

from vmforensics.cli.common import add_acquire_options, password_from_env_or_prompt, run_acquisition
from vmforensics.cli.connections import add_ssh_key_options, ssh_key_settings


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "files",
        help="files or folders by URL (host logs, exported VMs, a datastore folder)",
        description="URLs: file:///p, ssh://user@host[:port]/p, smb://[domain;]user@host[:port]/share/p, "
        "https://host/folder/p?dcPath=DC&dsName=DS. Further PATHs are read over the same connection.",
    )
    parser.add_argument("url", metavar="URL", help="the first file or folder, and the connection")
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="more files or folders over the same connection"
    )
    parser.add_argument(
        "--recursive", "-r", action="store_true", help="acquire folders with everything below"
    )
    parser.add_argument("--label", default="files", help="what is being acquired, for the manifest")
    add_ssh_key_options(parser.add_argument_group("ssh"))
    tls = parser.add_argument_group("https / smb")
    tls.add_argument("--tls-ca", help="CA bundle for the server certificate")
    tls.add_argument("--tls-thumbprint", help="pinned server certificate SHA-256")
    tls.add_argument(
        "--cookie-env", default="VMFORENSICS_COOKIE", help="variable holding the vSphere session cookie"
    )
    add_acquire_options(parser)
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files whose name or path under files/ matches (repeatable; recorded as omissions)",
    )
    parser.set_defaults(handler=_run)


def _options(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import os

    scheme = urlsplit(url).scheme or "file"
    if scheme == "ssh":
        return ssh_key_settings(args)
    if scheme == "smb":
        return {"password": password_from_env_or_prompt("SMB password: ")}
    if scheme == "https":
        return {
            "tls_ca": args.tls_ca,
            "tls_thumbprint": args.tls_thumbprint,
            "cookie": os.environ.get(args.cookie_env),
        }
    return {}


def _run(args: argparse.Namespace) -> int:
    from vmforensics.acquire.files import FilesAcquirer
    from vmforensics.transport.urls import open_url

    transport, first = open_url(args.url, **_options(args.url, args))
    acquirer = FilesAcquirer(transport, [first, *args.paths], recursive=args.recursive)
    return run_acquisition(acquirer, args.label, args, exclude=tuple(args.exclude))
