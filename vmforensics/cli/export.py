"""``vmforensics export DIR --format dfxml|case|sums``: the acquisition in other tools' formats."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vmforensics.errors import UsageError

_DESCRIPTION = """\
Write a view of a sealed evidence directory for other tools:
  dfxml  Digital Forensics XML: a fileobject per file with size, times and hashes
  case   CASE/UCO JSON-LD: the acquisition as an InvestigativeAction with its custody events
  sums   SHA256SUMS for `sha256sum -c` (run it inside the evidence directory)
Exports are unsigned views of what the manifest claims: run `vmforensics verify DIR` for proof."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export an evidence directory as DFXML, CASE/UCO JSON-LD or SHA256SUMS",
        description=_DESCRIPTION,
        epilog=(
            "examples:\n"
            "  vmforensics export /cases/2026-117/web01 --format dfxml --output web01.dfxml\n"
            "  vmforensics export /cases/2026-117/web01 --format case > web01.case.jsonld"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="the sealed evidence directory")
    parser.add_argument("--format", required=True, choices=("dfxml", "case", "sums"), dest="fmt")
    parser.add_argument(
        "--output", metavar="FILE", help="new file to write (never overwritten; default: standard output)"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.export import export_directory

    content = export_directory(args.directory, args.fmt)
    if args.output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    output = Path(args.output)
    if output.absolute().resolve().is_relative_to(Path(args.directory).absolute().resolve()):
        raise UsageError(f"{output} is inside the evidence directory; write exports elsewhere")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise UsageError(f"{output} already exists") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    print(f"{args.fmt} export of {args.directory} written to {output}", file=sys.stderr)
    return 0
