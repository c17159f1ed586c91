"""``vmforensics acquire SOURCE …``: one sub-command per kind of source."""

from __future__ import annotations

import argparse
import importlib

#: Modules under vmforensics.cli that each provide ``register(acquire_subparsers)``.
SOURCE_MODULES = ("acquire_local", "acquire_files", "acquire_vmware", "acquire_hyperv", "acquire_libvirt")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("acquire", help="acquire a VM (or files) into a signed evidence directory")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name in SOURCE_MODULES:
        importlib.import_module(f"vmforensics.cli.{name}").register(sources)
