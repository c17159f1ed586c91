"""The ``vmforensics`` command: one module per command group, registered here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from vmforensics import __version__
from vmforensics.cli.config import apply_config
from vmforensics.errors import UsageError, VMForensicsError

#: Modules under vmforensics.cli that each provide ``register(subparsers)``.
COMMAND_MODULES = (
    "demo",
    "acquire",
    "acquire_batch",
    "survey",
    "verify",
    "timestamp",
    "keygen",
    "image",
    "memory",
    "export",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmforensics",
        description="Forensic acquisition of virtual machines, with a signed chain of custody.",
        epilog=(
            "examples:\n"
            "  vmforensics demo\n"
            "  vmforensics acquire local /vmfs/volumes/ds1/web01 --out /cases/2026-117/web01 --case 2026-117\n"
            "  vmforensics verify /cases/2026-117/web01\n"
            "  vmforensics image ls /cases/2026-117/web01/files/web01/web01.vmdk /\n"
            "\nexit status: 0 success, 1 acquisition or verification failed, 2 usage error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"vmforensics.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        apply_config(parser, argv)  # the config file's host settings become option defaults
    except UsageError as exc:
        print(f"vmforensics: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        return EXIT_OK
    except UsageError as exc:
        print(f"vmforensics: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VMForensicsError as exc:
        print(f"vmforensics: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vmforensics: interrupted; evidence written so far is kept (re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
