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
from vmforensics.custody.models import SourceInfo, VMIdentity
from vmforensics.errors import ImageFormatError, SourceError, VMNotFoundError
from vmforensics.hypervisors.local.vmx import disk_files, mac_addresses, parse_vmx, referenced_files
from vmforensics.transport.local import LocalTransport

log = logging.getLogger(__name__)


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
        vmx_path = path if path.is_file() else _single_vmx(folder)
        names = [p.name for p in folder.iterdir()]
        vendor = "vmware" if vmx_path else guess_vendor(names)
        session.state.update(folder=folder, vmx=vmx_path, vendor=vendor or "vmware")
        session.clock = measure_clock(
            lambda: None, method="local: the source is read with the examiner's clock"
        )
        locks = sorted(n for n in names if n.lower().endswith(".lck"))
        power = "unknown (lock files present: the VM may be running)" if locks else "unknown (no lock files)"
        if vmx_path is None:
            return VMIdentity(name=folder.name, config_path=str(folder), power_state_before=power)
        vmx = parse_vmx(vmx_path.read_text(errors="replace"))
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
        root = folder.parent
        planned: dict[str, PlannedFile] = {}

        def add(path: Path) -> None:
            path = Path(os.path.normpath(path))
            if str(path) in planned or is_ignored(path.name):
                return
            planned[str(path)] = PlannedFile(
                source_path=str(path),
                dest_name=_dest_name(path, root),
                role=_role(vendor, path),
                size_reported=path.lstat().st_size if path.exists() or path.is_symlink() else None,
                label=str(path),
            )

        for entry in self._transport.walk(str(folder)):
            if not is_ignored(entry.path) and not any(
                part.lower().endswith(".lck") for part in Path(entry.path).parts
            ):
                add(Path(entry.path))
        vmx = session.state.get("vmx_entries", {})
        for name in disk_files(vmx) + referenced_files(vmx):
            path = folder / name if not os.path.isabs(name) else Path(name)
            if path.exists():
                add(path)
            else:
                session.omit(str(path), role_for(vendor, path.name), "named in the .vmx but not found")
        for path in [
            Path(p) for p, item in list(planned.items()) if item.role in ("disk-descriptor", "disk")
        ]:
            for member in self._chain_files(session, path):
                add(member)
        return sorted(planned.values(), key=lambda p: p.dest_name)

    def _chain_files(self, session: Session, disk: Path) -> list[Path]:
        """Every file of a disk's chain (extents, parents), found by the image readers."""
        from vmforensics.images import open_image

        try:
            with open_image(disk) as image:
                return [Path(name) for layer in image.info().chain for name in (layer.path, *layer.files)]
        except ImageFormatError as exc:
            session.ledger.append("disk-chain-incomplete", disk=str(disk), error=str(exc))
            session.omit(str(disk), "disk-chain", f"part of this disk's chain could not be read: {exc}")
            return []
        except SourceError:
            return []

    def transport(self, session: Session) -> LocalTransport:
        return self._transport


def _role(vendor: Vendor, path: Path) -> str:
    """By name, except that a .vmdk holding its own grains (hosted sparse, COWD) is a whole disk."""
    role = role_for(vendor, path.name)
    if role == "disk-descriptor" and not path.is_symlink():
        try:
            with path.open("rb") as f:
                if f.read(4) in (b"KDMV", b"COWD"):
                    return "disk"
        except OSError:
            pass
    return role


def _single_vmx(folder: Path) -> Path | None:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".vmx" and p.is_file())
    if len(found) > 1:
        raise VMNotFoundError(
            f"{folder} holds several VMs ({', '.join(p.name for p in found)}); name the .vmx"
        )
    return found[0] if found else None


def _dest_name(path: Path, root: Path) -> str:
    """Keep the datastore layout: the path below the VM folder's parent, else under external/."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return "external/" + path.as_posix().lstrip("/")
