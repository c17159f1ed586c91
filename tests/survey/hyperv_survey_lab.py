r"""The Hyper-V test host of tests/acquire/hyperv_lab.py, taught the survey's inventory script.

:class:`SurveyHyperV` is a :class:`FakeHyperV` (same WinRM app, same Samba-served C: drive) that
also recognises the survey's reviewed script by its SHA-256 and answers it from the host's VMs,
with Get-VHD chains read from the files on the served tree. Its starting estate is the acquirer
lab's, made clean (each VM its own MAC, a fresh checkpoint taken while web01 ran); ``add_vm``
lays out more VMs the way ``New-VM -Path C:\Hyper-V`` does, with real VHDX files (qemu-img) and
differencing children, and checkpoints with their .vmcx/.VMRS files.
"""

from __future__ import annotations

import datetime as dt
import ntpath
import os
import subprocess
import uuid
from typing import Any

from tests.acquire.hyperv_lab import (
    DISK_SIZE,
    OTHER_VM_ID,
    VM_ID,
    VM_SUMMARY_FIELDS,
    FakeHyperV,
    dotnet_time,
)
from tests.acquire.hyperv_vhdx import write_differencing
from vmforensics.hypervisors.hyperv import survey_scripts as survey_scripts

HOME = r"C:\Hyper-V"


class SurveyHyperV(FakeHyperV):
    """The fake host, answering ``survey-inventory`` too."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.by_hash.update({s.sha256: s for s in survey_scripts.ALL.values()})
        self.mac_range = ("00155D0A0B00", "00155D0A0BFF")
        self.vms[OTHER_VM_ID]["adapters"][0]["mac_address"] = "00155D0A0B0D"
        snapshot = self.vms[VM_ID]["snapshots"][0]
        snapshot.update(
            creation_time=dotnet_time(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)), state="Running"
        )
        self.vms[VM_ID]["uptime_seconds"] = 3600

    def add_vm(
        self,
        name: str,
        *,
        mac: str,
        state: str = "Off",
        dynamic: bool = True,
        chain: int = 1,
        checkpoints: tuple[tuple[str, dt.datetime], ...] | list[tuple[str, dt.datetime]] = (),
    ) -> dict[str, Any]:
        r"""A VM in ``C:\Hyper-V\NAME`` with a ``chain``-deep VHDX chain and chained checkpoints."""
        vm_id = str(uuid.uuid4()).upper()
        home = ntpath.join(HOME, name)
        disks = ntpath.join(home, "Virtual Hard Disks")
        base = ntpath.join(disks, f"{name}.vhdx")
        self.local(disks).mkdir(parents=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "vhdx", str(self.local(base)), str(DISK_SIZE)], check=True
        )
        self.vhd_parent[base.lower()] = None
        top = base
        for level in range(1, chain):
            child = ntpath.join(disks, f"{name}_{level}.avhdx")
            write_differencing(
                self.local(child), size=DISK_SIZE, parent=self.local(top), parent_absolute_path=top
            )
            self.vhd_parent[child.lower()] = top
            top = child
        config = self.local(ntpath.join(home, "Virtual Machines"))
        config.mkdir()
        for suffix, size in ((".vmcx", 40_000), (".VMRS", 24_576), (".vmgs", 65_536)):
            (config / f"{vm_id}{suffix}").write_bytes(os.urandom(size))
        vm = self._vm(vm_id, name, state, [top])
        vm.update(
            path=home, configuration_location=home, snapshot_file_location=home, smart_paging_file_path=home
        )
        vm["adapters"][0].update(mac_address=mac, dynamic_mac_address_enabled=dynamic)
        vm["uptime_seconds"] = 600 if state == "Running" else 0
        parent = None
        for label, created in checkpoints:
            snap_id = str(uuid.uuid4()).upper()
            folder = self.local(ntpath.join(home, "Snapshots"))
            folder.mkdir(exist_ok=True)
            (folder / f"{snap_id}.vmcx").write_bytes(os.urandom(30_000))
            (folder / f"{snap_id}.VMRS").write_bytes(os.urandom(8192))
            vm["snapshots"].append(
                {
                    "id": snap_id,
                    "name": label,
                    "snapshot_type": "Standard",
                    "state": "Off",
                    "creation_time": dotnet_time(created),
                    "parent_snapshot_id": parent,
                    "path": home,
                    "hard_drives": [base],
                    "created_disks": {},
                }
            )
            parent = snap_id
        self.vms[vm_id] = vm
        return vm

    def files_of(self, vm: dict[str, Any]) -> list[Any]:
        """The VM's files on the served tree (to age them)."""
        home = self.local(vm["path"])
        return [p for p in home.rglob("*") if p.is_file()]

    # -- the survey's script --------------------------------------------------------------------

    def _survey_inventory(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "host": {
                "computer_name": "HV01",
                "virtual_machine_path": r"C:\ProgramData\Microsoft\Windows\Hyper-V",
                "virtual_hard_disk_path": r"C:\ProgramData\Microsoft\Windows\Virtual Hard Disks",
                "mac_address_minimum": self.mac_range[0],
                "mac_address_maximum": self.mac_range[1],
            },
            "vms": [self._inventory_vm(vm) for vm in self.vms.values()],
        }

    def _inventory_vm(self, vm: dict[str, Any]) -> dict[str, Any]:
        summary = {k: vm[k] for k in VM_SUMMARY_FIELDS}
        fields = ("name", "mac_address", "switch_name", "dynamic_mac_address_enabled", "connected")
        return {
            **summary,
            "status": "Operating normally",
            "uptime_seconds": vm.get("uptime_seconds", 0),
            "creation_time": dotnet_time(dt.datetime(2025, 6, 1, tzinfo=dt.UTC)),
            "integration_services_state": "Up to date",
            "integration_services_version": "10.0.20348",
            "network_adapters": [{k: a[k] for k in fields} for a in vm["adapters"]],
            "hard_drives": [
                {
                    "controller_type": "SCSI",
                    "controller_number": 0,
                    "controller_location": i,
                    "path": p,
                    "chain": [
                        {k: layer[k] for k in layer if k != "disk_identifier"} for layer in self._chain(p)
                    ],
                }
                for i, p in enumerate(vm["drives"])
            ],
            "snapshots": [
                {
                    "id": s["id"],
                    "name": s["name"],
                    "snapshot_type": s["snapshot_type"],
                    "state": s.get("state", "Off"),
                    "creation_time": s["creation_time"],
                    "parent_snapshot_id": s["parent_snapshot_id"],
                    "hard_drives": list(s["hard_drives"]),
                }
                for s in vm["snapshots"]
            ],
        }
