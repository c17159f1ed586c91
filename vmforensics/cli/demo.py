"""``vmforensics demo``: a whole acquisition on a small VM built on the spot; no network, no root."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build a small VMware VM folder, acquire, verify and open it")
    parser.add_argument("--workdir", help="where to build it (default: a new temporary directory, kept)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmforensics.demo.run import run_demo

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vmforensics-demo-"))
    outcome = run_demo(workdir, progress=not args.no_progress)
    manifest = outcome.result.manifest
    print(f"source VM folder : {outcome.source}")
    print(f"evidence         : {outcome.result.path}")
    print(f"VM               : {manifest.source.vm.name} uuid={manifest.source.vm.uuid}")
    print(f"                   MACs {', '.join(manifest.source.vm.mac_addresses)}")
    print(f"files acquired   : {len(manifest.files)} ({manifest.total_bytes:,} bytes)")
    for f in manifest.files:
        print(f"  {f.hashes['sha256']}  {f.role:16} {f.local_path}")
    print(f"signed by        : {manifest.integrity.signer_key_id}")
    print(f"verification     : {'VERIFIED' if outcome.report.ok else 'FAILED'}")
    for line in outcome.report.summary_lines()[1:]:
        print(f"  {line}")
    print("guest files read back from the acquired disk (pytsk3):")
    for line in outcome.guest_listing:
        print(f"  {line}")
    print(f"try: vmforensics verify {outcome.result.path}")
    return 0 if outcome.report.ok else 1
