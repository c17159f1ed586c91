"""Survey of a datastore folder tree reachable as files (a mounted datastore, an NFS export, a copy).

Every VM folder (a folder with a .vmx or .vmtx) is described from its files alone: the .vmx facts,
each disk's chain as the image readers resolve it, the snapshots in the .vmsd, lock files (a
running VM holds them), and the span of its vmware.log. Files that no VM's configuration, chain
or snapshot list accounts for are reported as unclaimed. Nothing is written to the tree.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import is_ignored, role_for
from vmforensics.confine import MISSING, ConfinedPath, Confinement, Refusal
from vmforensics.custody.models import SourceInfo
from vmforensics.errors import ImageFormatError, RefusedPathError, SourceError, UsageError
from vmforensics.hypervisors.local.parallels import describe_parallels
from vmforensics.hypervisors.local.parallels import is_bundle as is_parallels_bundle
from vmforensics.hypervisors.local.virtualbox import describe_virtualbox
from vmforensics.hypervisors.local.vmsd import depths, parse_vmsd
from vmforensics.hypervisors.local.vmx import disk_files, parse_vmx, referenced_files
from vmforensics.survey.findings import with_findings
from vmforensics.survey.models import (
    DiskRecord,
    FileRecord,
    NICRecord,
    SnapshotRecord,
    SurveyReport,
    Thresholds,
    VMRecord,
    iso,
)

log = logging.getLogger(__name__)

_LOG_TIME = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))")
_LOG_TAIL = 64 * 1024
#: .vmx and .vmsd files are a few KiB; only this much of one is parsed.
MAX_CONFIG_BYTES = 4 << 20
_DISK_ROLES = {"disk-descriptor", "disk-extent", "change-tracking"}
_STATE_SUFFIXES = (".vmsn", ".vmss")


@attrs.define
class _Folder:
    """What the walk found in one directory."""

    path: Path
    files: dict[str, os.stat_result] = attrs.field(factory=dict)  # name -> lstat
    locks: list[str] = attrs.field(factory=list)


def survey_local(
    root: str | os.PathLike[str], *, thresholds: Thresholds | None = None, max_depth: int = 4
) -> SurveyReport:
    """Survey every VM folder under ``root`` (at most ``max_depth`` levels down) without writing."""
    began = time.monotonic()
    top = Path(root).absolute()
    if not top.is_dir():
        raise UsageError(f"{root}: not a directory (give a datastore or a folder of VM folders)")
    clock = measure_clock(lambda: None, method="local: the files are read with the examiner's clock")
    folders = list(_walk(top, max_depth))
    claimed: set[Path] = set()
    vms = []
    for folder in folders:
        for name in sorted(folder.files):
            if name.lower().endswith((".vmx", ".vmtx")):
                record, files = _describe(folder, folder.path / name, top)
                vms.append(record)
                claimed |= files
            elif name.lower().endswith(".vbox"):
                record, files = describe_virtualbox(folder.path / name, top)
                vms.append(record)
                claimed |= files
        if is_parallels_bundle(folder.path, folder.files.keys()):
            record, files = describe_parallels(folder.path, top)
            vms.append(record)
            claimed |= files
    unclaimed = _unclaimed(folders, claimed, top)
    report = SurveyReport(
        source=SourceInfo(
            kind="local",
            host=socket.gethostname(),
            product={"name": "local file system", "root": str(top)},
        ),
        vms=tuple(vms),
        unclaimed_files=tuple(unclaimed),
        thresholds=thresholds or Thresholds(),
        clock=clock,
        duration=round(time.monotonic() - began, 6),
        notes=(
            "local survey: power state is inferred from lock files; no host or move history is kept in files",
        ),
    )
    return with_findings(report)


def _walk(top: Path, max_depth: int) -> Iterator[_Folder]:
    """Directories under ``top`` (symbolic links not followed, hidden system folders skipped)."""
    pending = [(top, 0)]
    while pending:
        directory, depth = pending.pop()
        folder = _Folder(directory)
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            log.warning("cannot list %s: %s", directory, exc)
            continue
        for entry in entries:
            if entry.name.lower().endswith(".lck"):
                folder.locks.append(entry.name)
                continue
            if entry.name.startswith(".") or is_ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < max_depth:
                    pending.append((Path(entry.path), depth + 1))
            elif entry.is_file(follow_symlinks=False):
                folder.files[entry.name] = entry.stat(follow_symlinks=False)
        yield folder


def _describe(folder: _Folder, vmx_path: Path, top: Path) -> tuple[VMRecord, set[Path]]:
    """The VM's record and every file it accounts for.

    Every path the .vmx and .vmsd name is read only beneath the surveyed root, through no
    symbolic link, and only as a regular file (vmforensics.confine); a disk elsewhere is reported
    with the refusal as its error.
    """
    confinement = Confinement([top])
    vmx = parse_vmx(_read_text(confinement, vmx_path) or "")
    claimed = {vmx_path}
    for name, _ in folder.files.items():
        if role_for("vmware", name) not in _DISK_ROLES and not name.lower().endswith(
            (*_STATE_SUFFIXES, ".vmem")
        ):
            claimed.add(folder.path / name)
    for name in referenced_files(vmx):
        claimed.add(_resolve(folder.path, name))
    disks = []
    for name in disk_files(vmx):
        record, files = _disk(_resolve(folder.path, name), confinement, name)
        disks.append(record)
        claimed |= files
    vmsd_path = _resolve(folder.path, vmx.get("snapshot.filename") or f"{vmx_path.stem}.vmsd")
    if vmsd_path.suffix.lower() != ".vmsd":
        vmsd_path = vmsd_path.with_suffix(".vmsd")
    snapshots, snapshot_files = _snapshots(folder, vmsd_path, confinement)
    claimed |= snapshot_files
    suspended = [
        folder.path / n for n in folder.files if n.lower().endswith(".vmss") and _in_use_suspend(vmx, n)
    ]
    for state in suspended:
        claimed |= {state, state.with_suffix(".vmem")}
    first, last, basis = _activity(folder)
    locks = sorted(folder.locks)
    if locks:
        power = "locked (lock files present: probably running)"
    elif suspended:
        power = "suspended"
    else:
        power = "off (no lock files)"
    record = VMRecord(
        name=vmx.get("displayname") or vmx_path.stem,
        reference=str(vmx_path),
        uuid=vmx.get("uuid.bios"),
        instance_uuid=vmx.get("vc.uuid"),
        power_state=power,
        datastores=(top.name,),
        config_path=str(vmx_path),
        guest_os=vmx.get("guestos"),
        tools_status=None,
        nics=tuple(_nics(vmx)),
        disks=tuple(disks),
        snapshots=tuple(snapshots),
        last_power_on=first,
        last_activity=last,
        last_activity_basis=basis,
        lock_files=tuple(locks),
        template=vmx_path.suffix.lower() == ".vmtx",
        details={
            "vendor": "vmware",
            "folder": str(folder.path),
            "virtualHW.version": vmx.get("virtualhw.version"),
            "memsize_mib": vmx.get("memsize"),
        },
    )
    return record, {Path(os.path.normpath(p)) for p in claimed}


def _regular(confinement: Confinement, path: Path) -> bool:
    return isinstance(confinement.check(str(path)), ConfinedPath)


def _read_text(confinement: Confinement, path: Path) -> str | None:
    """A configuration file's text (its first MAX_CONFIG_BYTES), or None when it may not be read."""
    try:
        fd = confinement.open_regular(str(path))
    except RefusedPathError as exc:
        log.info("%s: not read: %s", path, exc)
        return None
    with open(fd, "rb") as f:
        return f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")


def _resolve(folder: Path, name: str) -> Path:
    return Path(os.path.normpath(name if os.path.isabs(name) else folder / name))


def _in_use_suspend(vmx: dict[str, str], name: str) -> bool:
    named = vmx.get("checkpoint.vmstate") or vmx.get("suspend.filename")
    return not named or os.path.basename(named) == name


def _nics(vmx: dict[str, str]) -> Iterator[NICRecord]:
    devices = sorted(
        {key.split(".", 1)[0] for key in vmx if re.match(r"^ethernet\d+\.", key)},
        key=lambda d: int(d[len("ethernet") :]),
    )
    for device in devices:
        if vmx.get(f"{device}.present", "true").lower() == "false":
            continue
        kind = vmx.get(f"{device}.addresstype")
        mac = vmx.get(f"{device}.address") if (kind or "").lower() == "static" else None
        mac = mac or vmx.get(f"{device}.generatedaddress") or vmx.get(f"{device}.address")
        yield NICRecord(
            label=device,
            mac=mac.lower() if mac else None,
            address_type=kind,
            network=vmx.get(f"{device}.networkname") or vmx.get(f"{device}.vnet"),
            connected=_flag(vmx.get(f"{device}.startconnected")),
        )


def _flag(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() in ("true", "1", "yes")


def _disk(path: Path, confinement: Confinement, reference: str) -> tuple[DiskRecord, set[Path]]:
    """The disk's chain as the image readers see it (within the surveyed root), and its files."""
    from vmforensics.images import open_image

    found = confinement.check(str(path))
    if isinstance(found, Refusal):
        if found.kind == MISSING:
            return DiskRecord(path=str(path), error="named in the .vmx but not found"), set()
        return DiskRecord(
            path=str(path), error=f"not read: {attrs.evolve(found, reference=reference)}"
        ), set()
    try:
        with open_image(path, allowed_roots=confinement.roots) as image:
            info = image.info()
    except (ImageFormatError, SourceError, OSError) as exc:
        return DiskRecord(path=str(path), error=f"chain unreadable: {exc}"), {path}
    files = {Path(os.path.normpath(n)) for layer in info.chain for n in (layer.path, *layer.files)}
    files |= {f.with_name(f.name[: -len(".vmdk")] + "-ctk.vmdk") for f in files if f.suffix == ".vmdk"}
    on_disk = [f for f in files if f.exists()]
    return (
        DiskRecord(
            path=str(path),
            capacity=info.size,
            allocated=sum(f.stat().st_size for f in on_disk),
            chain_depth=len(info.chain),
            format=f"{info.format}/{info.subtype}",
            files=tuple(sorted(str(f) for f in on_disk)),
        ),
        files,
    )


def _snapshots(
    folder: _Folder, vmsd_path: Path, confinement: Confinement
) -> tuple[list[SnapshotRecord], set[Path]]:
    text = _read_text(confinement, vmsd_path)
    if text is None:
        return [], set()
    listed = parse_vmsd(text)
    levels = depths(listed)
    records, claimed = [], {vmsd_path}
    for snapshot in listed:
        state = _resolve(vmsd_path.parent, snapshot.state_file) if snapshot.state_file else None
        memory = state.with_suffix(".vmem") if state is not None else None
        present = [p for p in (state, memory) if p is not None and _regular(confinement, p)]
        sizes = [p.stat().st_size for p in present]
        for name in snapshot.disks:
            _, files = _disk(_resolve(vmsd_path.parent, name), confinement, name)
            claimed |= files
        claimed |= {p for p in (state, memory) if p is not None}
        records.append(
            SnapshotRecord(
                name=snapshot.name,
                reference=snapshot.uid,
                created=iso(snapshot.created),
                parent=snapshot.parent,
                depth=levels[snapshot.uid],
                memory=memory in present,
                size=sum(sizes) if sizes else None,
                description=snapshot.description,
            )
        )
    return records, claimed


def _activity(folder: _Folder) -> tuple[str | None, str | None, str | None]:
    """(first and last time in the newest vmware.log, what the last time is based on)."""
    log_path = folder.path / "vmware.log"
    if "vmware.log" in folder.files:
        first, last = _log_span(log_path)
        if last is not None:
            return first, last, "the last line of vmware.log"
    candidates = [
        (info.st_mtime, name)
        for name, info in folder.files.items()
        if name.lower().endswith((".log", ".nvram", ".vmss"))
    ]
    if not candidates:
        return None, None, None
    mtime, name = max(candidates)
    return None, iso(dt.datetime.fromtimestamp(mtime, dt.UTC)), f"the modification time of {name}"


def _log_span(path: Path) -> tuple[str | None, str | None]:
    try:
        with open(path, "rb") as f:
            head = f.read(_LOG_TAIL)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _LOG_TAIL))
            tail = f.read(_LOG_TAIL)
    except OSError:
        return None, None
    times = [m.group(1).decode() for line in head.splitlines() if (m := _LOG_TIME.match(line))]
    last = [m.group(1).decode() for line in tail.splitlines() if (m := _LOG_TIME.match(line))]
    return (_normal(times[0]) if times else None), (_normal(last[-1]) if last else None)


def _normal(text: str) -> str | None:
    try:
        return iso(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def _unclaimed(folders: list[_Folder], claimed: set[Path], top: Path) -> list[FileRecord]:
    found = []
    for folder in folders:
        has_vm = any(n.lower().endswith((".vmx", ".vmtx")) for n in folder.files)
        for name, info in sorted(folder.files.items()):
            path = Path(os.path.normpath(folder.path / name))
            if path in claimed:
                continue
            if not has_vm:
                if folder.path == top:
                    continue  # files lying at the datastore's top are not a VM's
                reason = "in a folder without a VM configuration (.vmx)"
            elif role_for("vmware", name) in _DISK_ROLES:
                reason = "a disk file in no disk chain of the VM's configuration or snapshots"
            else:
                reason = "a saved state the VM's configuration and snapshot list do not name"
            found.append(
                FileRecord(
                    path=path.relative_to(top).as_posix(),
                    datastore=top.name,
                    size=info.st_size,
                    modified=iso(dt.datetime.fromtimestamp(info.st_mtime, dt.UTC)),
                    reason=reason,
                )
            )
    return found
