"""Reading a VMware .vmx configuration: the facts forensics needs and the files it points at."""

from __future__ import annotations

import re

_LINE = re.compile(r'^\s*([A-Za-z0-9_.:\-\[\]]+)\s*=\s*"(.*)"\s*$')
_DISK_KEY = re.compile(r"^(scsi|sata|ide|nvme)\d+:\d+\.filename$")


def _unescape(value: str) -> str:
    """VMX files escape special characters as |XX (hex)."""
    return re.sub(r"\|([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def parse_vmx(text: str) -> dict[str, str]:
    """key -> value with keys lower-cased (VMX keys are case-insensitive); later lines win."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            entries[match.group(1).lower()] = _unescape(match.group(2))
    return entries


def disk_files(vmx: dict[str, str]) -> list[str]:
    """The virtual disk files of present devices (CD-ROM images and absent devices excluded)."""
    disks = []
    for key, value in vmx.items():
        if not _DISK_KEY.match(key) or not value.lower().endswith(".vmdk"):
            continue
        device = key.rsplit(".", 1)[0]
        if vmx.get(f"{device}.present", "true").lower() == "false":
            continue
        disks.append(value)
    return disks


def mac_addresses(vmx: dict[str, str]) -> list[str]:
    macs = []
    for key, value in sorted(vmx.items()):
        if re.match(r"^ethernet\d+\.(address|generatedaddress)$", key) and value:
            device = key.split(".", 1)[0]
            if vmx.get(f"{device}.present", "true").lower() != "false" and value.lower() not in macs:
                macs.append(value.lower())
    return macs


def referenced_files(vmx: dict[str, str]) -> list[str]:
    """Other files the configuration names: NVRAM, suspend state, extended config."""
    keys = ("nvram", "checkpoint.vmstate", "extendedconfigfile", "suspend.filename")
    return [vmx[k] for k in keys if vmx.get(k)]
