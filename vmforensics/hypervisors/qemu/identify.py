"""What QEMU says about a running VM over QMP: name, UUID, run state, disks and their chains, NICs.

Every value comes from the examined host and is checked for type before use; a disk's chain is
read from ``query-block``'s nested ``backing-image`` (bounded depth) and ``qemu-img info
--backing-chain`` gives the same ImageInfo objects for a VM that is not running.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import attrs

from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.qmp import QMPClient, QMPError

log = logging.getLogger(__name__)

#: Backing chains deeper than this are cut (and recorded as cut).
MAX_DEPTH = 256
#: Disks per VM and NICs per VM that are looked at.
MAX_DEVICES = 1024


@attrs.frozen
class Layer:
    """One image of a disk's chain, top first, as QEMU or qemu-img names it."""

    filename: str
    format: str | None
    virtual_size: int | None
    backing_filename: str | None

    @property
    def on_host(self) -> bool:
        """A plain absolute path (not ``json:{…}``, ``rbd:…``, ``nbd://…``)."""
        return self.filename.startswith("/") and "\0" not in self.filename

    @property
    def is_block_device(self) -> bool:
        return self.filename.startswith("/dev/")


@attrs.frozen
class BlockDevice:
    """One ``query-block`` entry: a drive and what is inserted in it."""

    device: str  # the drive id ("drive-scsi0"), "" for -blockdev nodes without one
    node_name: str | None
    qdev: str | None
    removable: bool
    read_only: bool
    layers: tuple[Layer, ...]
    chain_cut: bool = False

    @property
    def name(self) -> str:
        return self.device or self.node_name or self.qdev or "disk"

    @property
    def key(self) -> str:
        """What stays the same across snapshots and commits: the drive id, else the guest device."""
        return self.device or self.qdev or self.node_name or "disk"

    @property
    def snapshottable(self) -> bool:
        """Writable, not removable media, with a top image that is a path on the host."""
        return not self.removable and not self.read_only and bool(self.layers) and self.layers[0].on_host

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "node_name": self.node_name,
            "qdev": self.qdev,
            "removable": self.removable,
            "read_only": self.read_only,
            "layers": [attrs.asdict(layer) for layer in self.layers],
            "chain_cut": self.chain_cut,
        }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def layers_from_image(image: Any) -> tuple[tuple[Layer, ...], bool]:
    """The chain of an ImageInfo (nested ``backing-image``), and whether it was cut at MAX_DEPTH."""
    layers: list[Layer] = []
    while isinstance(image, dict):
        if len(layers) >= MAX_DEPTH:
            return tuple(layers), True
        filename = _str(image.get("filename"))
        if filename is None:
            break
        size = image.get("virtual-size")
        layers.append(
            Layer(
                filename,
                _str(image.get("format")),
                size if isinstance(size, int) and size >= 0 else None,
                _str(image.get("full-backing-filename") or image.get("backing-filename")),
            )
        )
        image = image.get("backing-image")
    return tuple(layers), False


def block_devices(reply: Any) -> tuple[BlockDevice, ...]:
    """The drives of ``query-block`` that have something inserted."""
    if not isinstance(reply, list):
        raise SourceError("QMP query-block did not return a list")
    devices = []
    for entry in reply[:MAX_DEVICES]:
        if not isinstance(entry, dict) or not isinstance(entry.get("inserted"), dict):
            continue
        inserted = entry["inserted"]
        layers, cut = layers_from_image(inserted.get("image"))
        top = _str(inserted.get("file"))
        if top and (not layers or layers[0].filename != top):  # trust the drive's own file name for the top
            layers = (Layer(top, _str(inserted.get("drv")), None, None), *layers[1:])
        devices.append(
            BlockDevice(
                device=_str(entry.get("device")) or "",
                node_name=_str(inserted.get("node-name")),
                qdev=_str(entry.get("qdev")),
                removable=entry.get("removable") is True,
                read_only=inserted.get("ro") is True,
                layers=layers,
                chain_cut=cut,
            )
        )
    return tuple(devices)


def node_files(reply: Any) -> list[dict[str, Any]]:
    """``query-named-block-nodes`` (flat) reduced to node name, driver, file and read-only flag."""
    if not isinstance(reply, list):
        raise SourceError("QMP query-named-block-nodes did not return a list")
    return [
        {
            "node_name": _str(n.get("node-name")),
            "drv": _str(n.get("drv")),
            "file": _str(n.get("file")),
            "ro": n.get("ro") is True,
        }
        for n in reply[: MAX_DEVICES * 4]
        if isinstance(n, dict)
    ]


def nic_macs(qmp: QMPClient) -> list[dict[str, Any]]:
    """Each NIC's name and MAC from ``query-rx-filter`` (empty when no NIC supports it)."""
    try:
        reply = qmp.execute("query-rx-filter")
    except QMPError as exc:
        log.info("query-rx-filter: %s", exc)
        return []
    if not isinstance(reply, list):
        return []
    return [
        {"name": _str(n.get("name")), "mac": str(n.get("main-mac", "")).lower() or None}
        for n in reply[:MAX_DEVICES]
        if isinstance(n, dict)
    ]


def run_state(qmp: QMPClient) -> str:
    """``query-status``'s run state ("running", "paused", "postmigrate"...)."""
    status = qmp.execute("query-status")
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        raise SourceError(f"{qmp.where}: query-status did not return a run state")
    return status["status"][:64]


def vm_facts(qmp: QMPClient) -> dict[str, Any]:
    """name, uuid, status and the block layout of the VM behind ``qmp``."""
    name = qmp.execute("query-name")
    uuid = qmp.execute("query-uuid")
    state = run_state(qmp)
    devices = block_devices(qmp.execute("query-block"))
    nodes = node_files(qmp.execute("query-named-block-nodes", flat=True))
    return {
        "name": _str(name.get("name")) if isinstance(name, dict) else None,
        "uuid": _str(uuid.get("UUID")) if isinstance(uuid, dict) else None,
        "status": state,
        "running": state == "running",
        "qemu_version": qmp.version,
        "devices": devices,
        "nodes": nodes,
        "nics": nic_macs(qmp),
    }


def overlay_name(layer: Layer, device: str, tag: str, workdir: str | None) -> str:
    """Where our overlay for a disk goes: beside its top image, or in ``workdir``."""
    stem = posixpath.basename(layer.filename).rsplit(".", 1)[0] or device or "disk"
    folder = workdir or (None if layer.is_block_device else posixpath.dirname(layer.filename))
    if not folder:
        raise SourceError(
            f"{device or layer.filename} is a block device: give host_workdir= (a folder on the host) "
            "for the snapshot overlay"
        )
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in stem)[:100] or "disk"
    return posixpath.join(folder, f"{safe}.{tag}.qcow2")
