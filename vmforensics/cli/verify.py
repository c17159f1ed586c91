"""``vmforensics verify DIR``: re-prove an evidence directory."""

from __future__ import annotations

import argparse

import attrs

from vmforensics.cli.common import emit_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="re-hash every file and check signature and ledger")
    parser.add_argument("directory", help="the evidence directory, or a batch directory (batch.json)")
    parser.add_argument(
        "--key", help="the public key you trust (PEM); default: the one stored beside the manifest"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.verify import verify

    report = verify(args.directory, args.key)
    if args.json:
        emit_json({"ok": report.ok, **attrs.asdict(report)})
    else:
        print(report)
    return 0 if report.ok else 1
