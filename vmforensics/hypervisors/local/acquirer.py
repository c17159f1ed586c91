"""LocalAcquirer: a VM whose files are reachable here (mounted datastore, NFS export, a copy).

Nothing on the source is changed, so ``preserve`` is always "none". The VM folder is walked,
the .vmx read for disks kept elsewhere, and every disk opened with the image readers to find
each extent and parent in its chain.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from vmforensics.acquire.base import Acquirer, PlannedFile, Session
from vmforensics.acquire.clock import measure_clock
from vmforensics.acquire.filesets import Vendor, guess_vendor, is_ignored, role_for
from vmforensics.confine import MISSING, ConfinedPath, Confinement, Refusal, open_named_file
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import ImageFormatError, RefusedPathError, SourceError, VMNotFoundError
from vmforensics.hypervisors.local.virtualbox import parse_vbox, read_config
from vmforensics.hypervisors.local.vmx import disk_files, mac_addresses, parse_vmx, referenced_files
from vmforensics.transport.local import LocalTransport

log = logging.getLogger(__name__)

#: A .vmx is a few KiB; only this much of one is parsed (a hostile one may be any size).
MAX_VMX_BYTES = 4 << 20


class LocalAcquirer(Acquirer):
    """Acquire a VM folder (or a .vmx file) from the local file system."""

    kind = "local"
    preserve_modes = ("none",)

    def __init__(self) -> None:
        self._transport = LocalTransport()

    def connect(self, session: Session) -> None:
        session.source = SourceInfo(
            kind="local",
            host=socket.gethostname(),
            product={"name": "local file system", "os": os.uname().sysname, "release": os.uname().release},
            connection=self._transport.describe(),
        )

    def identify(self, session: Session, target: str) -> VMIdentity:
        path = Path(target).absolute()
        if not path.exists():
            raise VMNotFoundError(f"{target}: no such VM folder or .vmx file")
        folder = path if path.is_dir() else path.parent
        # every path the VM's files name is read only beneath its folder (and the examiner's
        # explicitly allowed roots), through no symbolic link, and only as a regular file
        confinement = Confinement([folder], session.options.get("allowed_roots", ()))
        self._transport.confinement = confinement
        vmx_path = path if path.is_file() else _single_vmx(folder, confinement)
        names = [p.name for p in folder.iterdir()]
        vendor = "vmware" if vmx_path else guess_vendor(names) or guess_vendor(_subfolder_names(folder))
        session.state.update(folder=folder, vmx=vmx_path, vendor=vendor or "vmware", confinement=confinement)
        session.clock = measure_clock(
            lambda: None, method="local: the source is read with the examiner's clock"
        )
        locks = sorted(n for n in names if n.lower().endswith(".lck"))
        power = "unknown (lock files present: the VM may be running)" if locks else "unknown (no lock files)"
        if vmx_path is None:
            registry = _virtualbox_identity(folder, names, confinement) if vendor == "virtualbox" else None
            return registry or VMIdentity(name=folder.name, config_path=str(folder), power_state_before=power)
        vmx = parse_vmx(_read_vmx(vmx_path, confinement, named=path.is_file()))
        session.state["vmx_entries"] = vmx
        return VMIdentity(
            name=vmx.get("displayname", vmx_path.stem),
            uuid=vmx.get("uuid.bios"),
            instance_uuid=vmx.get("vc.uuid"),
            config_path=str(vmx_path),
            mac_addresses=tuple(mac_addresses(vmx)),
            power_state_before=power,
            guest_reported={"guestOS (configured)": vmx.get("guestos")},
            details={"virtualHW.version": vmx.get("virtualhw.version"), "lock_files": locks},
        )

    def enumerate(self, session: Session) -> list[PlannedFile]:
        folder: Path = session.state["folder"]
        vendor: Vendor = session.state["vendor"]
        confinement: Confinement = session.state["confinement"]
        root = folder.parent
        planned: dict[str, PlannedFile] = {}
        omitted: set[str] = set()

        def add(reference: str, relative_to: Path, missing: str) -> None:
            found = confinement.check(reference, relative_to)
            if isinstance(found, Refusal):
                where = found.path or reference
                if where in omitted or is_ignored(Path(where).name):
                    return
                omitted.add(where)
                reason = f"{missing} ({reference!r})" if found.kind == MISSING else str(found)
                session.omit(where, role_for(vendor, Path(where).name), reason)
                return
            path = Path(found.path)
            if found.path in planned or is_ignored(path.name):
                return
            planned[found.path] = PlannedFile(
                source_path=found.path,
                dest_name=_dest_name(path, root),
                role=_role(vendor, found, confinement),
                size_reported=path.lstat().st_size,
                label=found.path,
            )

        for entry in self._transport.walk(str(folder)):
            if not is_ignored(entry.path) and not any(
                part.lower().endswith(".lck") for part in Path(entry.path).parts
            ):
                add(entry.path, folder, "listed in the VM folder but gone")
        vmx = session.state.get("vmx_entries", {})
        for name in disk_files(vmx) + referenced_files(vmx):
            add(name, folder, "named in the .vmx but not found")
        for path in [
            Path(p) for p, item in list(planned.items()) if item.role in ("disk-descriptor", "disk")
        ]:
            for member in self._chain_files(session, path, confinement):
                add(str(member), path.parent, "part of a disk's chain but not found")
        return sorted(planned.values(), key=lambda p: p.dest_name)

    def _chain_files(self, session: Session, disk: Path, confinement: Confinement) -> list[Path]:
        """Every file of a disk's chain (extents, parents), found by the image readers within the roots."""
        from vmforensics.images import open_image

        try:
            with open_image(disk, allowed_roots=confinement.roots + confinement.allowed_roots) as image:
                return [Path(name) for layer in image.info().chain for name in (layer.path, *layer.files)]
        except ImageFormatError as exc:
            session.ledger.append("disk-chain-incomplete", disk=str(disk), error=str(exc))
            session.omit(str(disk), "disk-chain", f"part of this disk's chain could not be read: {exc}")
            return []
        except SourceError:
            return []

    def source_roots(self, target: str) -> list[Path]:
        path = Path(target).absolute()
        return [path if path.is_dir() or not path.exists() else path.parent]

    def transport(self, session: Session) -> LocalTransport:
        return self._transport


def _role(vendor: Vendor, found: ConfinedPath, confinement: Confinement) -> str:
    """By name, except that a .vmdk holding its own grains (hosted sparse, COWD) is a whole disk."""
    role = role_for(vendor, Path(found.path).name)
    if role == "disk-descriptor":
        try:
            with open(confinement.open_regular(found), "rb") as f:
                if f.read(4) in (b"KDMV", b"COWD"):
                    return "disk"
        except (OSError, RefusedPathError):
            pass
    return role


def _virtualbox_identity(folder: Path, names: list[str], confinement: Confinement) -> VMIdentity | None:
    """The VM a VirtualBox folder's single .vbox registers (None when there is not exactly one,
    or it cannot be read: the folder is then named by itself)."""
    registries = [n for n in names if n.lower().endswith(".vbox")]
    if len(registries) != 1:
        return None
    path = folder / registries[0]
    try:
        machine = parse_vbox(read_config(path, confinement), path=str(path))
    except (ImageFormatError, RefusedPathError) as exc:
        log.warning("%s: not read: %s", path, exc)
        return None
    return VMIdentity(
        name=machine.name,
        uuid=machine.uuid,
        config_path=str(path),
        mac_addresses=tuple(n.mac for n in machine.nics if n.enabled and n.mac),
        power_state_before="saved (the registry names a saved state)"
        if machine.state_file
        else "unknown (VirtualBox keeps no lock file)",
        details={
            "vendor": "virtualbox",
            "OSType (configured)": machine.os_type,
            "current_snapshot": machine.current_snapshot,
            "snapshots": len(machine.snapshots),
        },
    )


#: How many names below the VM folder's subfolders are looked at to tell the hypervisor.
_VENDOR_PROBE_NAMES = 4096


def _subfolder_names(folder: Path) -> list[str]:
    """Names one level down (Hyper-V keeps a VM in "Virtual Machines/", "Virtual Hard Disks/",
    "Snapshots/"), through no symbolic link, at most ``_VENDOR_PROBE_NAMES`` of them."""
    names: list[str] = []
    with os.scandir(folder) as entries:
        subfolders = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    for subfolder in subfolders:
        try:
            with os.scandir(subfolder) as entries:
                for entry in entries:
                    names.append(entry.name)
                    if len(names) >= _VENDOR_PROBE_NAMES:
                        return names
        except OSError:
            continue  # unreadable: the enumeration records it
    return names


def _single_vmx(folder: Path, confinement: Confinement) -> Path | None:
    found = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".vmx" and isinstance(confinement.check(p.name, folder), ConfinedPath)
    )
    if len(found) > 1:
        raise VMNotFoundError(
            f"{folder} holds several VMs ({', '.join(p.name for p in found)}); name the .vmx"
        )
    return found[0] if found else None


def _read_vmx(vmx: Path, confinement: Confinement, *, named: bool) -> str:
    """The .vmx text (its first MAX_VMX_BYTES): the examiner's own path is opened as named; one
    found in the folder goes through the confinement like every other file."""
    try:
        fd = open_named_file(vmx) if named else confinement.open_regular(str(vmx))
    except RefusedPathError as exc:
        raise VMNotFoundError(f"{vmx}: cannot read the configuration: {exc.refusal.reason}") from exc
    with open(fd, "rb") as f:
        raw = f.read(MAX_VMX_BYTES + 1)
    if len(raw) > MAX_VMX_BYTES:
        log.warning("%s: only the first %d bytes of the configuration are parsed", vmx, MAX_VMX_BYTES)
        raw = raw[:MAX_VMX_BYTES]
    return raw.decode("utf-8", "replace")


def _dest_name(path: Path, root: Path) -> str:
    """Keep the datastore layout: the path below the VM folder's parent, else under external/."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return "external/" + path.as_posix().lstrip("/")
