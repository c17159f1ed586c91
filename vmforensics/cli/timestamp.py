"""``vmforensics timestamp DIR --tsa URL``: add RFC 3161 tokens to a sealed evidence directory."""

from __future__ import annotations

import argparse

from vmforensics.cli.common import emit_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "timestamp",
        help="add an RFC 3161 timestamp over the sealed manifest (e.g. after the TSA was down)",
        description="Each TSA is asked for a token over the SHA-256 of manifest.json; the token is "
        "stored as manifest.json.tsr (then manifest.json.2.tsr ...) and recorded in the ledger after "
        "the seal. A TSA that fails is recorded too. The manifest is never changed.",
        epilog="exit status: 0 every TSA gave a token, 1 one or more failed, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="the sealed evidence directory")
    parser.add_argument(
        "--tsa", action="append", required=True, metavar="URL", help="time-stamping authority (repeatable)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds per TSA (default 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.timestamps import timestamp

    results = timestamp(args.directory, args.tsa, timeout=args.timeout)
    if args.json:
        emit_json(
            [{"ok": r.ok, "tsa": r.tsa, "file": r.file, "token": r.info, "error": r.error} for r in results]
        )
    else:
        print("\n".join(str(r) for r in results))
    return 0 if all(r.ok for r in results) else 1
