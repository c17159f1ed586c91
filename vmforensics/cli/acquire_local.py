"""``vmforensics acquire local SRC``: a VM folder or .vmx reachable as files."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import add_acquire_options, run_acquisition


def register(sources: argparse._SubParsersAction) -> None:
    parser = sources.add_parser(
        "local", help="a VM folder or .vmx on a mounted datastore, NFS export or copy"
    )
    parser.add_argument("source", help="the VM folder or its .vmx file")
    add_acquire_options(parser)
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files whose name or path under files/ matches (repeatable; recorded as omissions)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.local.acquirer import LocalAcquirer

    return run_acquisition(LocalAcquirer(), args.source, args, exclude=tuple(args.exclude))
