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
        try:
            module = importlib.import_module(f"vmforensics.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vmforensics.cli.{name}":
                raise
            continue  # that acquirer has not landed in this build
        module.register(sources)
