"""``vmforensics demo``: a whole acquisition on a small VM built on the spot; no network, no root."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from vmforensics.cli.common import emit_json
from vmforensics.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build a small VMware VM folder, acquire, verify and open it")
    parser.add_argument(
        "--workdir", help="where to build it: a new or empty folder (default: a new temporary one, kept)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=_run)


def _workdir(given: str | None) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix="vmforensics-demo-"))
    workdir = Path(given)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise UsageError(f"--workdir {workdir} is not empty; give a new or empty folder")
    except OSError as exc:
        raise UsageError(f"cannot use --workdir {workdir}: {exc.strerror or exc}") from exc
    return workdir


def _run(args: argparse.Namespace) -> int:
    from vmforensics.demo.run import run_demo

    outcome = run_demo(_workdir(args.workdir), progress=not args.no_progress)
    if args.json:
        emit_json(_plain(outcome))
    else:
        _print(outcome)
    return 0 if outcome.report.ok else 1


def _plain(outcome: Any) -> dict[str, Any]:
    manifest = outcome.result.manifest
    return {
        "source": str(outcome.source),
        "evidence": str(outcome.result.path),
        "vm": {
            "name": manifest.source.vm.name,
            "uuid": manifest.source.vm.uuid,
            "mac_addresses": list(manifest.source.vm.mac_addresses),
        },
        "files": [
            {"path": f.local_path, "role": f.role, "size": f.size, "sha256": f.hashes["sha256"]}
            for f in manifest.files
        ],
        "signer_key_id": manifest.integrity.signer_key_id,
        "verified": outcome.report.ok,
        "verification": outcome.report.summary_lines(),
        "guest_files": list(outcome.guest_listing),
    }


def _print(outcome: Any) -> None:
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
