"""The demo flow: build a VM folder, acquire it with a fresh key, verify it, open its disk."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytsk3

from vmforensics.acquire.base import AcquisitionResult
from vmforensics.custody.models import CaseInfo
from vmforensics.custody.signing import SigningKey
from vmforensics.custody.verify import VerificationReport, verify
from vmforensics.demo.vm import VM_NAME, build_demo_vm
from vmforensics.hypervisors.local.acquirer import LocalAcquirer
from vmforensics.images import open_image


@attrs.frozen
class DemoOutcome:
    source: Path
    result: AcquisitionResult
    report: VerificationReport
    guest_listing: tuple[str, ...]


def run_demo(workdir: Path, *, progress: bool = True) -> DemoOutcome:
    """Everything happens under ``workdir``: datastore/web01 (the source) and evidence/ (the output)."""
    vmx = build_demo_vm(workdir / "datastore")
    key = SigningKey.generate()
    key.save(workdir / "examiner.pem")
    case = CaseInfo(
        case_id="DEMO-2026-001",
        examiner="Demo Examiner",
        evidence_id="E001",
        description=f"demo acquisition of {VM_NAME}",
    )
    result = LocalAcquirer().acquire(str(vmx), workdir / "evidence", case=case, signer=key, progress=progress)
    report = verify(result.path, key.public_key())
    disk = next(f for f in result.files if f.local_path.endswith(f"{VM_NAME}.vmdk"))
    return DemoOutcome(vmx.parent, result, report, tuple(list_guest_files(result.path / disk.local_path)))


def list_guest_files(disk_path: Path) -> list[str]:
    """Paths and sizes of the files in the first partition's file system, via pytsk3."""
    with open_image(disk_path) as disk:
        tsk = disk.as_tsk()
        volume = pytsk3.Volume_Info(tsk)
        start = next(p.start for p in volume if p.flags == pytsk3.TSK_VS_PART_FLAG_ALLOC and p.len > 2048)
        fs = pytsk3.FS_Info(tsk, offset=start * volume.info.block_size)
        return sorted(_walk(fs, fs.open_dir("/"), ""))


def _walk(fs, directory, prefix: str) -> list[str]:
    found = []
    for entry in directory:
        name = entry.info.name.name.decode("utf-8", "replace")
        if name in (".", "..") or name.startswith("$") or "Volume Label" in name or entry.info.meta is None:
            continue
        if entry.info.meta.type == pytsk3.TSK_FS_META_TYPE_DIR:
            found += _walk(fs, entry.as_directory(), f"{prefix}/{name}")
        elif entry.info.meta.type == pytsk3.TSK_FS_META_TYPE_REG:
            found.append(f"{prefix}/{name} ({entry.info.meta.size} bytes)")
    return found
