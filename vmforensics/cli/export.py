"""``vmforensics export DIR --format dfxml|case|sums|e01``: the acquisition in other tools' formats."""

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
  e01    the sealed disk --disk as EnCase 6 E01 segment files under DIR/derived/e01/, each
         recorded in the ledger after the seal and re-derived byte for byte by `verify`
The dfxml, case and sums exports are unsigned views of what the manifest claims: run
`vmforensics verify DIR` for proof."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export an evidence directory as DFXML, CASE/UCO JSON-LD or SHA256SUMS, or a disk as E01",
        description=_DESCRIPTION,
        epilog=(
            "examples:\n"
            "  vmforensics export /cases/2026-117/web01 --format dfxml --output web01.dfxml\n"
            "  vmforensics export /cases/2026-117/web01 --format case > web01.case.jsonld\n"
            "  vmforensics export /cases/2026-117/web01 --format e01 --disk files/web01/web01.vmdk"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="the sealed evidence directory")
    parser.add_argument("--format", required=True, choices=("dfxml", "case", "sums", "e01"), dest="fmt")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="new file to write (never overwritten; default: standard output); "
        "for e01 the first segment's name under DIR/derived/e01/ (default: the disk's name .E01)",
    )
    e01 = parser.add_argument_group("e01")
    e01.add_argument("--disk", metavar="FILE", help="the sealed disk to export (its path in the manifest)")
    e01.add_argument(
        "--segment-size",
        metavar="SIZE",
        type=_size,
        help="largest segment file, in bytes or with K/M/G/T (default 1500M); "
        "every segment holds as many chunks as fit uncompressed",
    )
    e01.add_argument(
        "--compression",
        choices=("fast", "best", "none"),
        help="zlib level of the chunks (default fast)",
    )
    e01.add_argument("--no-progress", action="store_true", help="no progress bar (it moves once per segment)")
    parser.set_defaults(handler=_run)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    number, unit = text.rstrip("BbiI"), ""
    if number and number[-1].upper() in _UNITS:
        number, unit = number[:-1], number[-1].upper()
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1500M, 2G, 650000000)")
    return int(number) * _UNITS[unit]


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.export import export_directory

    if args.fmt == "e01":
        return _run_e01(args)
    if args.disk is not None or args.segment_size is not None or args.compression is not None:
        raise UsageError("--disk, --segment-size and --compression belong to --format e01")

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


def _run_e01(args: argparse.Namespace) -> int:
    from vmforensics.custody.ewf import DEFAULT_SEGMENT_SIZE, export_e01_into

    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if args.disk is None:
        raise UsageError(
            "--format e01 needs --disk FILE (the disk's path in the manifest, e.g. files/web01/web01.vmdk)"
        )
    disk = Path(args.disk)
    if disk.is_absolute():  # else it is the path in the manifest, relative to DIR
        try:
            disk = disk.absolute().relative_to(directory.absolute())
        except ValueError as exc:
            raise UsageError(f"{args.disk} is not inside {directory}") from exc
    results = export_e01_into(
        directory,
        disk.as_posix(),
        name=args.output,
        segment_size=args.segment_size or DEFAULT_SEGMENT_SIZE,
        compression=args.compression or "fast",
        progress=not args.no_progress,
    )
    for result in results:
        if not result.ok:
            print(f"E01 export failed: {result.error} (recorded in the ledger)", file=sys.stderr)
            return 1
    last = results[-1].event.details.get("facts", {}).get("media", {})
    print(
        f"{len(results)} E01 segment(s) under {directory / 'derived' / 'e01'}: "
        f"MD5 {last.get('md5')}, SHA-1 {last.get('sha1')}, SHA-256 of the disk {last.get('sha256')}",
        file=sys.stderr,
    )
    return 0
