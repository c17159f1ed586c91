"""Acquire the demo VM, verify the evidence, and list a directory inside the acquired disk.

Runs offline: the VM folder (a FAT16 file system in a monolithicSparse VMDK, with its .vmx,
nvram and logs) is built on the spot by vmforensics.demo.

    python examples/acquire_verify_list.py [--workdir DIR] [--path /LOGS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pytsk3

from vmforensics import CaseInfo, LocalAcquirer, SigningKey, open_image, verify
from vmforensics.demo.vm import build_demo_vm


def list_directory(disk_path: Path, directory: str) -> list[tuple[str, str, int]]:
    """(kind, name, size) of each entry of ``directory`` in the disk's first file system."""
    with open_image(disk_path) as disk:
        image = disk.as_tsk()
        volume = pytsk3.Volume_Info(image)
        partition = next(p for p in volume if p.flags == pytsk3.TSK_VS_PART_FLAG_ALLOC)
        fs = pytsk3.FS_Info(image, offset=partition.start * volume.info.block_size)
        entries = []
        for entry in fs.open_dir(directory):
            name = entry.info.name.name.decode("utf-8", "replace")
            meta = entry.info.meta
            if name in (".", "..") or meta is None:
                continue
            kind = "dir" if meta.type == pytsk3.TSK_FS_META_TYPE_DIR else "file"
            entries.append((kind, name, meta.size))
        return sorted(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to build and acquire (default: a new temp dir)")
    parser.add_argument("--path", default="/LOGS", help="directory to list inside the guest file system")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmforensics-example-"))

    vmx = build_demo_vm(workdir / "datastore")
    key = SigningKey.generate()  # in a lab: SigningKey.load("examiner.pem", passphrase=...)
    case = CaseInfo(case_id="EX-2026-001", examiner="Example Examiner", evidence_id="E1")
    result = LocalAcquirer().acquire(
        str(vmx), workdir / "evidence", case=case, signer=key, progress=not args.no_progress
    )
    print(result)

    report = verify(result.path, key.public_key())
    print(report)
    if not report.ok:
        return 1

    disk = next(f for f in result.files if f.role == "disk")
    print(f"{args.path} in {disk.local_path}:")
    for kind, name, size in list_directory(result.path / disk.local_path, args.path):
        print(f"  {kind:4} {size:>8} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
