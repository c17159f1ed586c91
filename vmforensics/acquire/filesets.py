"""Which files belong to a VM, per hypervisor, and the role each plays in the evidence."""

from __future__ import annotations

import re
from typing import Literal

Vendor = Literal["vmware", "hyperv", "libvirt", "virtualbox", "parallels"]

#: (pattern on the lower-cased base name, role), first match wins.
_RULES: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "vmware": tuple(
        (re.compile(pattern), role)
        for pattern, role in (
            (r".*\.vmx$", "config"),
            (r".*\.vmtx$", "config"),
            (r".*\.vmxf$", "extended-config"),
            (r".*\.vmsd$", "snapshot-list"),
            (r".*\.vmsn$", "snapshot-state"),
            (r".*\.vmss$", "suspend-state"),
            (r".*\.vmem$", "memory"),
            (r".*\.nvram$", "nvram"),
            (r".*\.vswp$", "swap"),
            (r"^vmware(-\d+)?\.log$", "log"),
            (r".*\.log$", "log"),
            (r".*-ctk\.vmdk$", "change-tracking"),
            (r".*-(flat|delta|sesparse|rdm|rdmp|s\d{3}|f\d{3})\.vmdk$", "disk-extent"),
            (r".*\.vmdk$", "disk-descriptor"),
            (r".*\.hlog$", "log"),
        )
    ),
    "hyperv": tuple(
        (re.compile(pattern), role)
        for pattern, role in (
            (r".*\.vmcx$", "config"),
            (r".*\.xml$", "config"),
            (r".*\.vmrs$", "vm-state"),
            (r".*\.vmgs$", "guest-state"),
            (r".*\.bin$", "memory"),
            (r".*\.vsv$", "saved-state"),
            (r".*\.a?vhdx?$", "disk"),
            (r".*\.(rct|mrt)$", "change-tracking"),
            (r".*\.slp$", "swap"),
        )
    ),
    "libvirt": tuple(
        (re.compile(pattern), role)
        for pattern, role in (
            (r".*\.xml$", "domain-xml"),
            (r".*\.(save|sav)$", "saved-state"),
            (r".*\.(mem|elf|core)$", "memory"),
            (r".*_vars\.fd$", "nvram"),
            (r".*\.log$", "log"),
            (r".*\.(qcow2|qcow|img|raw|vmdk|vhdx?|vdi)$", "disk"),
        )
    ),
    "virtualbox": tuple(
        (re.compile(pattern), role)
        for pattern, role in (
            (r".*\.vbox$", "config"),
            (r".*\.vbox-(prev|tmp)$", "config-backup"),
            (r"^vbox(svc|hardening)?\.log(\.\d+)?$", "log"),
            (r".*\.log(\.\d+)?$", "log"),
            (r".*\.sav$", "saved-state"),  # a saved or snapshot machine state: memory and devices
            (r".*\.nvram$", "nvram"),
            (r".*\.png$", "screenshot"),
            (r".*\.(vdi|vmdk|vhdx?|hdd|qed|qcow2?|parallels|img|raw)$", "disk"),
        )
    ),
    "parallels": tuple(
        (re.compile(pattern), role)
        for pattern, role in (
            (r"^config\.pvs$", "config"),
            (r"^config\.pvs\.backup$", "config-backup"),
            (r"^snapshots\.xml$", "snapshot-list"),
            (r"^diskdescriptor\.xml(\.backup)?$", "disk-descriptor"),
            (r".*\.hds$", "disk-extent"),  # one part of one snapshot of a .hdd bundle
            (r".*\.hdd$", "disk"),  # a plain part, or a disk of one file (older versions)
            (r".*\.sav$", "saved-state"),
            (r".*\.mem$", "memory"),
            (r"^nvram\.dat$", "nvram"),
            (r".*\.log(\.\d+)?$", "log"),
            (r".*\.png$", "screenshot"),
        )
    ),
}

#: Files that never carry evidence and are locked by design (VMware lock directories' members).
_IGNORED = re.compile(r".*\.lck$|^\.lck-.*|^\.dvsdata$")


def role_for(vendor: Vendor, name: str) -> str:
    """The role of a file by its base name ("other" when the vendor does not name it)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for pattern, role in _RULES[vendor]:
        if pattern.match(base):
            return role
    return "other"


def is_ignored(name: str) -> bool:
    return bool(_IGNORED.match(name.replace("\\", "/").rsplit("/", 1)[-1].lower()))


def guess_vendor(names: list[str]) -> Vendor | None:
    """The hypervisor whose files these are, from the tell-tale extensions."""
    lowered = [n.replace("\\", "/").rsplit("/", 1)[-1].lower() for n in names]
    if any(
        n.endswith((".vbox", ".vbox-prev", ".vdi")) for n in lowered
    ):  # before .vmdk/.nvram: VirtualBox uses both
        return "virtualbox"
    if any(n in ("config.pvs", "diskdescriptor.xml") or n.endswith(".hds") for n in lowered):
        return "parallels"
    if any(n.endswith((".vmx", ".vmdk", ".vmsd", ".nvram")) for n in lowered):
        return "vmware"
    if any(n.endswith((".vmcx", ".vmrs", ".vhdx", ".avhdx", ".vhd", ".avhd", ".vsv")) for n in lowered):
        return "hyperv"
    if any(n.endswith((".qcow2", ".xml")) for n in lowered):
        return "libvirt"
    return None
