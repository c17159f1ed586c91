"""VirtualBox VM folders: the machine registry (.vbox) parsed, and the survey's record of the VM.

The registry was written by whoever controls the VM: it is parsed through images.safe_xml (no
document type or entities, bounded size) and every path it names is opened beneath the surveyed
root only (vmforensics.confine, through open_image's allowed roots).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid as uuid_
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element

import attrs

from vmforensics.confine import Confinement
from vmforensics.errors import ImageFormatError, RefusedPathError, SourceError
from vmforensics.images import safe_xml
from vmforensics.survey.models import DiskRecord, NICRecord, SnapshotRecord, VMRecord, iso

#: Snapshot trees deeper than this are cut (VirtualBox has no such limit; a crafted file might).
MAX_SNAPSHOT_DEPTH = 255


@attrs.frozen
class VBoxDisk:
    uuid: str
    location: str  # as written: relative to the .vbox's folder, or absolute
    format: str | None
    parent: str | None  # the UUID of the disk this one differs from


@attrs.frozen
class VBoxSnapshot:
    uuid: str
    name: str
    created: str | None
    parent: str | None
    depth: int
    state_file: str | None
    description: str | None


@attrs.frozen
class VBoxNIC:
    slot: str
    mac: str | None
    attachment: str | None
    enabled: bool


@attrs.frozen
class VBoxMachine:
    name: str
    uuid: str | None
    os_type: str | None
    state_file: str | None  # a saved state: the machine is suspended
    current_snapshot: str | None
    last_state_change: str | None
    disks: tuple[VBoxDisk, ...]
    attached: tuple[str, ...]  # UUIDs of the disks the current state uses (tops of their chains)
    snapshots: tuple[VBoxSnapshot, ...]
    nics: tuple[VBoxNIC, ...]

    def disk(self, disk_uuid: str) -> VBoxDisk | None:
        return next((d for d in self.disks if d.uuid == disk_uuid), None)


def _local(element: Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _children(element: Element, name: str) -> Iterator[Element]:
    return (child for child in element if _local(child) == name)


def _child(element: Element, name: str) -> Element | None:
    return next(_children(element, name), None)


def _uuid(text: str | None) -> str | None:
    try:
        return str(uuid_.UUID((text or "").strip().strip("{}")))
    except ValueError:
        return None


def mac_address(text: str | None) -> str | None:
    raw = (text or "").strip().replace(":", "").replace("-", "").lower()
    if len(raw) != 12 or any(c not in "0123456789abcdef" for c in raw):
        return None
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def parse_vbox(raw: bytes, *, path: str) -> VBoxMachine:
    """The machine a .vbox file describes; ImageFormatError (from safe_xml) if it is not XML."""
    root = safe_xml.parse(raw, path=path, what="VirtualBox registry")
    machine = _child(root, "Machine")
    if machine is None:
        machine = root if _local(root) == "Machine" else Element("Machine")
    disks: list[VBoxDisk] = []

    def collect(element: Element, parent: str | None) -> None:
        for disk in _children(element, "HardDisk"):
            disk_uuid = _uuid(disk.get("uuid"))
            if disk_uuid is None:
                continue
            disks.append(VBoxDisk(disk_uuid, disk.get("location", ""), disk.get("format"), parent))
            collect(disk, disk_uuid)

    registry = _child(machine, "MediaRegistry")
    hard_disks = _child(registry, "HardDisks") if registry is not None else None
    if hard_disks is not None:
        collect(hard_disks, None)
    snapshots: list[VBoxSnapshot] = []
    pending: list[tuple[Element, str | None, int]] = [(s, None, 1) for s in _children(machine, "Snapshot")]
    while pending:
        element, parent, depth = pending.pop()
        snap_uuid = _uuid(element.get("uuid"))
        if snap_uuid is None or depth > MAX_SNAPSHOT_DEPTH:
            continue
        description = _child(element, "Description")
        snapshots.append(
            VBoxSnapshot(
                snap_uuid,
                element.get("name", snap_uuid),
                element.get("timeStamp"),
                parent,
                depth,
                element.get("stateFile"),
                description.text if description is not None else None,
            )
        )
        nested = _child(element, "Snapshots")
        if nested is not None:
            pending.extend((s, snap_uuid, depth + 1) for s in _children(nested, "Snapshot"))
    hardware = _child(machine, "Hardware")
    nics: list[VBoxNIC] = []
    network = _child(hardware, "Network") if hardware is not None else None
    for adapter in _children(network, "Adapter") if network is not None else ():
        attachment = next((_local(c) for c in adapter if _local(c) != "DisabledModes"), None)
        nics.append(
            VBoxNIC(
                adapter.get("slot", "?"),
                mac_address(adapter.get("MACAddress")),
                attachment,
                adapter.get("enabled", "false").lower() == "true",
            )
        )
    attached: list[str] = []
    for holder in (machine, hardware):
        controllers = _child(holder, "StorageControllers") if holder is not None else None
        for controller in _children(controllers, "StorageController") if controllers is not None else ():
            for device in _children(controller, "AttachedDevice"):
                image = _child(device, "Image")
                image_uuid = _uuid(image.get("uuid")) if image is not None else None
                if device.get("type", "HardDisk") == "HardDisk" and image_uuid:
                    attached.append(image_uuid)
    return VBoxMachine(
        name=machine.get("name") or path.rsplit("/", 1)[-1].removesuffix(".vbox"),
        uuid=_uuid(machine.get("uuid")),
        os_type=machine.get("OSType"),
        state_file=machine.get("stateFile"),
        current_snapshot=_uuid(machine.get("currentSnapshot")),
        last_state_change=machine.get("lastStateChange"),
        disks=tuple(disks),
        attached=tuple(attached),
        snapshots=tuple(sorted(snapshots, key=lambda s: (s.depth, s.created or ""))),
        nics=tuple(nics),
    )


# --- the survey's record of one VirtualBox VM -------------------------------------------------


def describe_virtualbox(vbox_path: Path, top: Path) -> tuple[VMRecord, set[Path]]:
    """The record of the VM ``vbox_path`` registers, and every file of its folder (a VirtualBox VM
    folder holds only that VM's files: registry and backups, Logs/, Snapshots/, disks)."""
    folder = vbox_path.parent
    claimed = set(files_under(folder))
    try:
        raw = read_config(vbox_path, Confinement([top]))
        machine = parse_vbox(raw, path=str(vbox_path))
    except (ImageFormatError, RefusedPathError) as exc:
        error = exc.reason if isinstance(exc, ImageFormatError) else str(exc)
        record = VMRecord(
            name=vbox_path.stem,
            reference=str(folder),
            config_path=str(vbox_path),
            details={"vendor": "virtualbox", "folder": str(folder), "error": f"registry unreadable: {error}"},
        )
        return record, claimed
    disks = []
    for disk_uuid in machine.attached:
        disk = machine.disk(disk_uuid)
        if disk is None:
            disks.append(DiskRecord(path=disk_uuid, error="attached, but not in the registry's media"))
            continue
        record, files = disk_record(resolve_path(folder, disk.location), top)
        disks.append(record)
        claimed |= files
    snapshots = [
        SnapshotRecord(
            name=s.name,
            reference=s.uuid,
            created=s.created,
            parent=s.parent,
            depth=s.depth,
            memory=s.state_file is not None,
            description=s.description,
        )
        for s in machine.snapshots
    ]
    nics = [
        NICRecord(
            label=f"adapter{n.slot}",
            mac=n.mac,
            address_type="configured",
            network=n.attachment,
            connected=n.enabled,
        )
        for n in machine.nics
        if n.enabled
    ]
    last, basis = _last_log(folder / "Logs")
    record = VMRecord(
        name=machine.name,
        reference=str(folder),
        uuid=machine.uuid,
        power_state="saved (a saved state is named)"
        if machine.state_file
        else "unknown (VirtualBox keeps no lock file)",
        datastores=(top.name,),
        config_path=str(vbox_path),
        guest_os=machine.os_type,
        nics=tuple(nics),
        disks=tuple(disks),
        snapshots=tuple(snapshots),
        last_activity=last,
        last_activity_basis=basis,
        details={
            "vendor": "virtualbox",
            "folder": str(folder),
            "current_snapshot": machine.current_snapshot,
            "state_file": machine.state_file,
            "last_state_change": machine.last_state_change,
        },
    )
    return record, claimed


def read_config(path: Path, confinement: Confinement) -> bytes:
    """A configuration file within ``confinement`` (no symbolic link, a regular file), bounded."""
    fd = confinement.open_regular(str(path))
    with open(fd, "rb") as f:
        return f.read(safe_xml.MAX_XML_BYTES + 1)


def disk_record(path: Path, top: Path) -> tuple[DiskRecord, set[Path]]:
    """A disk's chain as the image readers see it (everything beneath ``top``), and its files."""
    from vmforensics.images import open_image

    if not path.exists():
        return DiskRecord(path=str(path), error="named in the registry but not found"), set()
    try:
        with open_image(path, allowed_roots=[top]) as image:
            info = image.info()
    except (ImageFormatError, SourceError, OSError) as exc:
        return DiskRecord(path=str(path), error=f"chain unreadable: {exc}"), {path}
    files = {Path(os.path.normpath(n)) for layer in info.chain for n in (layer.path, *layer.files)}
    on_disk = sorted(f for f in files if f.exists())
    return (
        DiskRecord(
            path=str(path),
            capacity=info.size,
            allocated=sum(f.stat().st_size for f in on_disk),
            chain_depth=len(info.chain),
            format=f"{info.format}/{info.subtype}",
            files=tuple(str(f) for f in on_disk),
        ),
        files,
    )


def resolve_path(folder: Path, name: str) -> Path:
    name = name.replace("\\", "/")
    return Path(os.path.normpath(name if os.path.isabs(name) else folder / name))


def files_under(folder: Path, depth: int = 2) -> Iterator[Path]:
    """Regular files in ``folder`` and its sub-folders (``depth`` levels; links not followed)."""
    pending = [(folder, 0)]
    while pending:
        directory, level = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and level < depth:
                pending.append((Path(entry.path), level + 1))
            elif entry.is_file(follow_symlinks=False):
                yield Path(os.path.normpath(entry.path))


def _last_log(logs: Path) -> tuple[str | None, str | None]:
    try:
        log_file = logs / "VBox.log"
        mtime = os.lstat(log_file).st_mtime
    except OSError:
        return None, None
    return iso(dt.datetime.fromtimestamp(mtime, dt.UTC)), "the modification time of Logs/VBox.log"
