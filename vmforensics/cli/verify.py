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
    parser.add_argument(
        "--ca",
        metavar="PEM",
        help="the lab's CA: prove the signer's stored certificate through it (no --key needed)",
    )
    parser.add_argument("--tsa-ca", metavar="PEM", help="the TSA's CA: prove the stored RFC 3161 timestamps")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.custody.certificates import load_certificates
    from vmforensics.custody.verify import verify
    from vmforensics.errors import SigningKeyError, UsageError

    anchors = {name: value for name, value in (("ca", args.ca), ("tsa_ca", args.tsa_ca)) if value}
    for name, path in anchors.items():  # the examiner's own trust anchors: a bad file is a usage error
        try:
            load_certificates(path, what=f"--{name.replace('_', '-')} certificate")
        except SigningKeyError as exc:
            raise UsageError(str(exc)) from exc
    report = verify(args.directory, args.key, **anchors)
    if args.json:
        verdict = getattr(report, "verdict", "VERIFIED" if report.ok else "FAILED")
        emit_json({"ok": report.ok, "verdict": verdict, **attrs.asdict(report)})
    else:
        print(report)
    return 0 if report.ok else 1
