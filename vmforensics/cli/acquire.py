"""``vmforensics acquire SOURCE …``: one sub-command per registered hypervisor, and ``files``."""

from __future__ import annotations

import argparse

from vmforensics.cli import acquire_files
from vmforensics.hypervisors import hypervisors, load


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("acquire", help="acquire a VM (or files) into a signed evidence directory")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for hypervisor in hypervisors():
        if hypervisor.acquire_cli is not None:
            load(hypervisor.acquire_cli)(sources)
    acquire_files.register(sources)
