"""Proxmox VE's text configuration: ``qemu-server/<vmid>.conf`` and ``storage.cfg``.

Both files are written on the examined host, so the parsers are bounded (size, lines, sections,
value length) and every path they yield is built from parts that match strict patterns: a volume
name never contains ``..`` or a ``/`` where Proxmox puts none, and the path it resolves to stays
beneath its storage's folder. Whatever cannot be resolved is returned with the reason instead.

A VM config is ``key: value`` lines (the current state), ``#`` comment lines (the description,
URL-encoded), then one ``[name]`` section per snapshot (``parent``, ``snaptime``, ``vmstate``...)
and possibly ``[PENDING]`` and ``[special:cloudinit]``.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from typing import Any

import attrs

from vmforensics.errors import SourceError

#: pmxcfs refuses files over 1 MiB; a VM config is a few kilobytes.
CONFIG_LIMIT = 1 << 20
SECTION_LIMIT = 1024
KEY_LIMIT = 4096
VALUE_LIMIT = 64 << 10

DISK_KEY = re.compile(r"^(?:ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d{1,3}$")
NET_KEY = re.compile(r"^net\d{1,3}$")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_SECTION = re.compile(r"^\[([A-Za-z0-9_:-]{1,80})\]$")
_STORAGE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}"
_DIR_IMAGE = re.compile(rf"^(?:(?P<base>{_NAME})/)?(?P<vmid>\d{{1,9}})/(?P<name>{_NAME})$")
_DIR_ISO = re.compile(rf"^iso/(?P<name>{_NAME})$")
_BLOCK_NAME = re.compile(rf"^{_NAME}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$")
_NET_MODELS = (
    "virtio",
    "e1000",
    "e1000e",
    "rtl8139",
    "vmxnet3",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_pci",
    "ne2k_isa",
    "pcnet",
)


@attrs.frozen
class Section:
    """The current configuration or one snapshot: its keys in file order."""

    name: str | None  # None for the current configuration
    values: dict[str, str] = attrs.field(converter=dict)

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    @property
    def disks(self) -> dict[str, str]:
        return {k: v for k, v in self.values.items() if DISK_KEY.match(k)}

    @property
    def nets(self) -> dict[str, str]:
        return {k: v for k, v in self.values.items() if NET_KEY.match(k)}


@attrs.frozen
class VMConfig:
    """A parsed ``<vmid>.conf``."""

    vmid: str
    current: Section
    snapshots: tuple[Section, ...]
    pending: Section | None
    description: str

    @property
    def name(self) -> str | None:
        return self.current.get("name")

    @property
    def uuid(self) -> str | None:
        return option(self.current.get("smbios1"), "uuid")

    def macs(self) -> list[tuple[str, str]]:
        """(key, MAC) of each network adapter in the current configuration."""
        found = []
        for key, value in self.current.nets.items():
            mac = net_mac(value)
            if mac:
                found.append((key, mac))
        return found

    def describe(self) -> dict[str, Any]:
        return {
            "vmid": self.vmid,
            "current": self.current.values,
            "snapshots": {s.name: s.values for s in self.snapshots},
            "pending": self.pending.values if self.pending else None,
            "description": self.description or None,
        }


def parse_vm_config(text: str, vmid: str) -> VMConfig:
    """Parse a VM config; malformed lines raise SourceError with the line number."""
    if len(text) > CONFIG_LIMIT:
        raise SourceError(f"{vmid}.conf is larger than {CONFIG_LIMIT} bytes: not a Proxmox VM config")
    sections: list[tuple[str | None, dict[str, str]]] = [(None, {})]
    description: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if len(sections) == 1:
                description.append(urllib.parse.unquote(line[1:]))
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if not match:
                raise SourceError(f"{vmid}.conf line {number}: malformed section header {line[:80]!r}")
            if len(sections) >= SECTION_LIMIT:
                raise SourceError(f"{vmid}.conf has more than {SECTION_LIMIT} sections")
            if any(name == match.group(1) for name, _ in sections):
                raise SourceError(f"{vmid}.conf line {number}: section [{match.group(1)}] appears twice")
            sections.append((match.group(1), {}))
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.match(key):
            raise SourceError(f"{vmid}.conf line {number}: not a 'key: value' line: {line[:80]!r}")
        if len(value) > VALUE_LIMIT:
            raise SourceError(f"{vmid}.conf line {number}: value of {key} is longer than {VALUE_LIMIT}")
        values = sections[-1][1]
        if key in values:
            raise SourceError(f"{vmid}.conf line {number}: {key} appears twice in one section")
        if len(values) >= KEY_LIMIT:
            raise SourceError(f"{vmid}.conf line {number}: more than {KEY_LIMIT} keys in one section")
        values[key] = value
    snapshots = [
        Section(n, v) for n, v in sections[1:] if n not in ("PENDING",) and not n.startswith("special:")
    ]
    pending = next((Section(n, v) for n, v in sections[1:] if n == "PENDING"), None)
    return VMConfig(vmid, Section(None, sections[0][1]), tuple(snapshots), pending, "\n".join(description))


def options(value: str) -> tuple[str | None, dict[str, str]]:
    """``volume,key=value,...`` → (the leading bare item or None, the options)."""
    first: str | None = None
    found: dict[str, str] = {}
    for index, item in enumerate(value.split(",")):
        key, sep, val = item.partition("=")
        if not sep:
            if index == 0:
                first = item.strip()
            continue
        found[key.strip()] = val.strip()
    return first, found


def option(value: str | None, key: str) -> str | None:
    return options(value)[1].get(key) if value else None


def net_mac(value: str) -> str | None:
    """The MAC of a ``netN`` value (``virtio=BC:24:11:..,bridge=vmbr0`` or ``macaddr=``)."""
    _first, found = options(value)
    for key in (*_NET_MODELS, "macaddr"):
        mac = found.get(key)
        if mac and _MAC.match(mac):
            return mac.lower()
    return None


def disk_volume(value: str) -> tuple[str | None, dict[str, str]]:
    """The volume of a disk value (``file=`` or the bare first item) and its options."""
    first, found = options(value)
    return found.get("file", first), found


# -- storage.cfg ---------------------------------------------------------------------------------


@attrs.frozen
class Storage:
    """One ``type: id`` block of storage.cfg."""

    type: str
    id: str
    settings: dict[str, str] = attrs.field(converter=dict)


@attrs.frozen
class Volume:
    """Where a volume id points on the host, or why it does not point at a host path."""

    volume: str
    storage: str | None
    kind: str  # "file", "block", "network", "none", "unknown"
    path: str | None = None
    reason: str | None = None


def parse_storage_config(text: str) -> dict[str, Storage]:
    """``storage.cfg``: blocks of ``type: id`` then indented ``key value`` lines."""
    if len(text) > CONFIG_LIMIT:
        raise SourceError(f"storage.cfg is larger than {CONFIG_LIMIT} bytes")
    found: dict[str, Storage] = {}
    current: tuple[str, str, dict[str, str]] | None = None

    def close() -> None:
        if current is not None:
            found[current[1]] = Storage(*current)

    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            kind, sep, ident = raw.partition(":")
            ident = ident.strip()
            if not sep or not _KEY.match(kind.strip()) or not _STORAGE_ID.match(ident):
                raise SourceError(f"storage.cfg line {number}: not a 'type: id' line: {raw[:80]!r}")
            if len(found) >= SECTION_LIMIT:
                raise SourceError(f"storage.cfg has more than {SECTION_LIMIT} storages")
            close()
            current = (kind.strip(), ident, {})
            continue
        if current is None:
            raise SourceError(f"storage.cfg line {number}: a setting before any storage")
        key, _, value = raw.strip().partition(" ")
        current[2][key] = value.strip()[:VALUE_LIMIT]
    close()
    return found


_DIR_TYPES = {
    "dir": None,
    "nfs": "/mnt/pve/{id}",
    "cifs": "/mnt/pve/{id}",
    "glusterfs": "/mnt/pve/{id}",
    "cephfs": "/mnt/pve/{id}",
}


def resolve_volume(volume: str, storages: dict[str, Storage]) -> Volume:
    """The host path of a volume id such as ``local:100/vm-100-disk-0.qcow2`` or ``local-lvm:vm-100-disk-0``."""
    if volume == "none":
        return Volume(volume, None, "none", reason="no medium")
    if volume.startswith("/"):
        clean = posixpath.normpath(volume)
        kind = "block" if clean.startswith("/dev/") else "file"
        return Volume(volume, None, kind, clean, "a host path written directly in the config")
    storage_id, sep, name = volume.partition(":")
    if not sep or not _STORAGE_ID.match(storage_id):
        return Volume(volume, None, "unknown", reason="not a Proxmox volume id (storage:name)")
    storage = storages.get(storage_id)
    if storage is None:
        return Volume(volume, storage_id, "unknown", reason=f"storage {storage_id!r} is not in storage.cfg")
    settings = storage.settings
    if storage.type in _DIR_TYPES:
        root = settings.get("path") or (_DIR_TYPES[storage.type] or "").format(id=storage_id)
        if not root.startswith("/"):
            return Volume(volume, storage_id, "unknown", reason=f"storage {storage_id} has no absolute path")
        root = posixpath.normpath(root)
        if match := _DIR_IMAGE.match(name):
            path = posixpath.join(root, "images", match["vmid"], match["name"])
        elif match := _DIR_ISO.match(name):
            path = posixpath.join(root, "template", "iso", match["name"])
        else:
            return Volume(volume, storage_id, "unknown", reason="volume name does not match <vmid>/<file>")
        if ".." in path.split("/") or not path.startswith(root + "/"):
            return Volume(volume, storage_id, "unknown", reason="volume name leaves its storage folder")
        return Volume(volume, storage_id, "file", path)
    if not _BLOCK_NAME.match(name) or name in (".", ".."):
        return Volume(volume, storage_id, "unknown", reason="volume name is not a plain device name")
    if storage.type in ("lvmthin", "lvm") and _BLOCK_NAME.match(settings.get("vgname", "")):
        return Volume(volume, storage_id, "block", f"/dev/{settings['vgname']}/{name}")
    if storage.type == "zfspool" and re.match(r"^[A-Za-z0-9_.:/-]{1,255}$", settings.get("pool", "")):
        pool = posixpath.normpath(settings["pool"]).strip("/")
        if ".." not in pool.split("/"):
            return Volume(volume, storage_id, "block", f"/dev/zvol/{pool}/{name}")
    if storage.type == "rbd":
        pool = settings.get("pool", "rbd")
        if settings.get("krbd") == "1" and _BLOCK_NAME.match(pool):
            return Volume(volume, storage_id, "block", f"/dev/rbd/{pool}/{name}")
        return Volume(
            volume,
            storage_id,
            "network",
            reason=f"Ceph RBD image {pool}/{name}: QEMU reads it through librbd",
        )
    if storage.type in ("iscsi", "iscsidirect", "zfs"):
        return Volume(
            volume, storage_id, "network", reason=f"{storage.type} storage: a LUN on another system"
        )
    return Volume(volume, storage_id, "unknown", reason=f"storage type {storage.type!r} is not understood")
