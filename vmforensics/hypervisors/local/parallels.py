"""Parallels Desktop VM bundles (.pvm): the survey's record of the VM from config.pvs and the
disk bundles (*.hdd/DiskDescriptor.xml) inside it.

config.pvs was written by whoever controls the VM: it is parsed through images.safe_xml and only
the bundle's own files are opened, beneath the surveyed root.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from vmforensics.confine import Confinement
from vmforensics.errors import ImageFormatError, RefusedPathError
from vmforensics.hypervisors.local.virtualbox import (
    disk_record,
    files_under,
    mac_address,
    read_config,
    resolve_path,
)
from vmforensics.images import safe_xml
from vmforensics.images.parallels_layout import DESCRIPTOR_NAME
from vmforensics.survey.models import NICRecord, VMRecord

CONFIG_NAME = "config.pvs"


def is_bundle(folder: Path, names: Iterable[str]) -> bool:
    return folder.name.lower().endswith(".pvm") and CONFIG_NAME in names


def describe_parallels(bundle: Path, top: Path) -> tuple[VMRecord, set[Path]]:
    """The record of the VM in ``bundle`` and every file of the bundle."""
    claimed = set(files_under(bundle))
    config = bundle / CONFIG_NAME
    name, vm_uuid, nics, error = bundle.name[: -len(".pvm")], None, [], None
    try:
        root = safe_xml.parse(
            read_config(config, Confinement([top])), path=str(config), what="Parallels config.pvs"
        )
    except (ImageFormatError, RefusedPathError) as exc:
        error = f"config.pvs unreadable: {exc.reason if isinstance(exc, ImageFormatError) else exc}"
    else:
        name = (root.findtext("Identification/VmName") or name).strip() or name
        try:
            vm_uuid = str(uuid.UUID((root.findtext("Identification/VmUuid") or "").strip().strip("{}")))
        except ValueError:
            vm_uuid = None
        for index, adapter in enumerate(root.iter("NetworkAdapter")):
            mac = mac_address(adapter.findtext("MAC"))
            if mac:
                nics.append(NICRecord(label=f"net{index}", mac=mac, address_type="configured"))
    disks = []
    for entry in sorted(os.scandir(bundle), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and entry.name.lower().endswith(".hdd"):
            descriptor = resolve_path(Path(entry.path), DESCRIPTOR_NAME)
            if descriptor.exists():
                record, files = disk_record(descriptor, top)
                disks.append(record)
                claimed |= files
    details = {"vendor": "parallels", "folder": str(bundle)}
    if error:
        details["error"] = error
    record = VMRecord(
        name=name,
        reference=str(bundle),
        uuid=vm_uuid,
        power_state="unknown (read from files)",
        datastores=(top.name,),
        config_path=str(config),
        nics=tuple(nics),
        disks=tuple(disks),
        details=details,
    )
    return record, claimed
