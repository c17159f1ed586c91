r"""A Hyper-V host for tests: its C: drive on disk (served by Samba as C$) and its PowerShell answers.

``build_lab(root)`` lays out a host the way Hyper-V does for ``New-VM -Path C:\Hyper-V``::

    C:\Hyper-V\web01\Virtual Machines\<VMID>.vmcx .vmrs .vmgs     (plus another VM's files: decoys)
    C:\Hyper-V\web01\Virtual Hard Disks\web01.vhdx                 dynamic VHDX made by qemu-img (ext4)
    C:\Hyper-V\web01\Virtual Hard Disks\web01_<SNAP>.avhdx         differencing child (a later ext4 state)
    C:\Hyper-V\web01\Virtual Hard Disks\web01.rct / web01.mrt      resilient change tracking
    C:\Hyper-V\web01\Snapshots\<SNAP>.vmcx .vmrs                   the user's earlier checkpoint

``FakeHyperV`` is the host's side of the reviewed scripts: it recognises each script by the SHA-256
of its text (anything else is refused and recorded), reads its arguments from the environment as
PowerShell would, and answers with the objects the scripts build from Hyper-V's documented cmdlet
output (Get-VM, Get-VMNetworkAdapter, Get-VMHardDiskDrive, Get-VHD, Get-VMSnapshot, Get-FileHash).
Side effects happen on the served tree: a checkpoint writes a new empty .avhdx per disk and the
checkpoint's .vmcx/.vmrs, Save-VM writes the memory into .vmrs, Remove-VMSnapshot merges (the
new differencing disk holds no writes, so merging deletes it). Errors can be injected per script.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ntpath
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.acquire.hyperv_vhdx import write_differencing
from vmforensics.hypervisors.hyperv import scripts as scripts

VM_ID = "6F1A4C52-93B0-4E55-A7D8-1B2C3D4E5F60"
OTHER_VM_ID = "0D0D0D0D-1111-4222-8333-444455556666"
SNAP_ID = "A1B2C3D4-0001-4002-8003-000000000001"
MAC = "00155D0A0B0C"
#: The VM fields IDENTIFY and the survey's inventory both report.
VM_SUMMARY_FIELDS = (
    "name",
    "id",
    "state",
    "generation",
    "version",
    "path",
    "configuration_location",
    "snapshot_file_location",
    "smart_paging_file_path",
    "checkpoint_type",
    "computer_name",
    "is_clustered",
)
DISK_SIZE = 32 << 20
VM_DIR = r"C:\Hyper-V\web01"
BASE = VM_DIR + r"\Virtual Hard Disks\web01.vhdx"
CHILD = VM_DIR + rf"\Virtual Hard Disks\web01_{SNAP_ID}.avhdx"


class PSError(Exception):
    """A terminating PowerShell error, as the scripts' trap prints it."""

    def __init__(self, category: str, error_id: str, message: str, exception: str):
        super().__init__(message)
        self.record = {"category": category, "error_id": error_id, "exception": exception, "message": message}


def access_denied(cmdlet: str) -> PSError:
    return PSError(
        "PermissionDenied",
        f"AccessDenied,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
        "You do not have the required permission to complete this task. Contact the administrator of the "
        "authorization policy for the computer 'HV01'.",
        "Microsoft.HyperV.PowerShell.VirtualizationException",
    )


def dotnet_time(moment: dt.datetime) -> str:
    """A time as PowerShell's ``ToString('o')`` prints it (seven fractional digits, ``Z``)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")  # .NET 'o': 7 digits


def build_lab(root: Path) -> dict[str, Any]:
    r"""Create the C: drive under ``root`` and return facts for the tests (raw disk states)."""
    drive = root / "C"
    work = root / "work"
    work.mkdir(parents=True)
    v1, v2 = work / "v1.raw", work / "v2.raw"
    subprocess.run(["truncate", "-s", str(DISK_SIZE), str(v1)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "web01", str(v1)], check=True)
    (work / "hello.txt").write_text("hello from before the checkpoint\n")
    _debugfs(v1, f"write {work / 'hello.txt'} hello.txt")
    shutil.copyfile(v1, v2)
    (work / "evidence.txt").write_text("written after the user's checkpoint\n" * 100)
    _debugfs(v2, f"write {work / 'evidence.txt'} evidence.txt")

    vhd_dir = _local(drive, BASE).parent
    vhd_dir.mkdir(parents=True)
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic,block_size=1M",
            str(v1),
            str(_local(drive, BASE)),
        ],
        check=True,
    )
    old, new = v1.read_bytes(), v2.read_bytes()
    changes = {i: new[i : i + 512] for i in range(0, len(old), 512) if old[i : i + 512] != new[i : i + 512]}
    write_differencing(
        _local(drive, CHILD),
        size=DISK_SIZE,
        parent=_local(drive, BASE),
        parent_absolute_path=BASE,
        changes=changes,
    )
    for name, size in (("web01.rct", 4096), ("web01.mrt", 8192)):
        (vhd_dir / name).write_bytes(os.urandom(size))
    vm_files = _local(drive, VM_DIR + r"\Virtual Machines")
    vm_files.mkdir(parents=True)
    for vm_id in (VM_ID, OTHER_VM_ID):
        (vm_files / f"{vm_id}.vmcx").write_bytes(b"\x00\x01vmcx" + os.urandom(40_000))
        (vm_files / f"{vm_id}.vmgs").write_bytes(os.urandom(65_536))
        (vm_files / f"{vm_id}.VMRS").write_bytes(os.urandom(24_576))
    snapshots = _local(drive, VM_DIR + r"\Snapshots")
    snapshots.mkdir(parents=True)
    (snapshots / f"{SNAP_ID}.vmcx").write_bytes(os.urandom(30_000))
    (snapshots / f"{SNAP_ID}.VMRS").write_bytes(os.urandom(1 << 20))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"drive": drive, "v1": v1, "v2": v2}


def _debugfs(image: Path, command: str) -> None:
    subprocess.run(["debugfs", "-w", "-R", command, str(image)], check=True, capture_output=True)


def _local(drive: Path, windows_path: str) -> Path:
    assert windows_path[:3].upper() == "C:\\", windows_path
    return drive.joinpath(*[p for p in windows_path[3:].split("\\") if p])


class FakeHyperV:
    """The Hyper-V host's state and its answers to the library's scripts."""

    def __init__(self, drive: Path, *, admins: set[str], clock_skew: float = 0.0):
        self.drive = drive
        self.admins = admins  # members of Hyper-V Administrators
        self.clock_skew = clock_skew
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.unknown_scripts: list[str] = []
        self.failures: dict[str, PSError] = {}  # script name -> error to raise mid-way
        self.locked: set[str] = set()  # host paths Get-FileHash cannot open
        self.by_hash = {script.sha256: script for script in scripts.ALL.values()}
        self.vhd_parent: dict[str, str | None] = {BASE.lower(): None, CHILD.lower(): BASE}
        self.vms: dict[str, dict[str, Any]] = {
            VM_ID: self._vm(VM_ID, "web01", "Running", [CHILD]),
            OTHER_VM_ID: self._vm(OTHER_VM_ID, "db02", "Off", []),
        }
        self.vms[VM_ID]["snapshots"] = [
            {
                "id": SNAP_ID,
                "name": "before patching",
                "snapshot_type": "Standard",
                "creation_time": dotnet_time(dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)),
                "parent_snapshot_id": None,
                "path": VM_DIR,
                "hard_drives": [BASE],
                "created_disks": {},
            }
        ]
        self.vms[VM_ID]["events"] = [
            {
                "log": "Microsoft-Windows-Hyper-V-VMMS-Admin",
                "time_created": dotnet_time(dt.datetime(2026, 1, 4, 8, tzinfo=dt.UTC)),
                "event_id": 20417,
                "level": "Information",
                "message": f"'web01' was moved from host HV02 (Virtual machine ID {VM_ID}).",
            }
        ]

    @staticmethod
    def _vm(vm_id: str, name: str, state: str, drives: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "id": vm_id,
            "state": state,
            "generation": 2,
            "version": "10.0",
            "path": VM_DIR,
            "configuration_location": VM_DIR,
            "snapshot_file_location": VM_DIR,
            "smart_paging_file_path": VM_DIR,
            "checkpoint_type": "Standard",
            "computer_name": "HV01",
            "is_clustered": False,
            "adapters": [
                {
                    "name": "Network Adapter",
                    "mac_address": MAC,
                    "switch_name": "External",
                    "dynamic_mac_address_enabled": False,
                    "connected": True,
                    "ip_addresses": ["192.0.2.10", "fe80::215:5dff:fe0a:b0c"],
                }
            ],
            "drives": list(drives),
            "snapshots": [],
            "events": [],
        }

    # -- the WinRM app --------------------------------------------------------------------------

    def __call__(self, text: str, environment: dict[str, str], user: str) -> tuple[bytes, bytes, int]:
        script = self.by_hash.get(hashlib.sha256(text.encode("utf-8")).hexdigest())
        if script is None:
            self.unknown_scripts.append(text)
            return b"", b"this endpoint runs only the library's reviewed scripts", 1
        arguments = json.loads(base64.b64decode(environment["VMFORENSICS_ARGS"]).decode("utf-8"))
        self.calls.append((script.name, arguments, user))
        try:
            if script.name != "clock" and user.split("\\")[-1] not in self.admins:
                raise access_denied("Get-VM")
            if script.name in self.failures:
                raise self.failures[script.name]
            result = getattr(self, "_" + script.name.replace("-", "_"))(arguments)
        except PSError as error:
            return json.dumps({"vmforensics_error": error.record}).encode(), b"", 1
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), b"", 0

    def local(self, windows_path: str) -> Path:
        return _local(self.drive, windows_path)

    def _get_vm(self, vm_id: str) -> dict[str, Any]:
        for key, vm in self.vms.items():
            if key.lower() == str(vm_id).lower():
                return vm
        raise PSError(
            "InvalidArgument",
            "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
            f'Hyper-V was unable to find a virtual machine with id "{vm_id}".',
            "Microsoft.HyperV.PowerShell.VirtualizationException",
        )

    def _get_vhd(self, path: str) -> dict[str, Any]:
        local = self.local(path)
        if path.lower() not in self.vhd_parent or not local.exists():
            raise PSError(
                "ObjectNotFound",
                "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD",
                f"The system cannot find the file specified. ({path})",
                "System.IO.FileNotFoundException",
            )
        parent = self.vhd_parent[path.lower()]
        return {
            "path": path,
            "vhd_format": "VHDX",
            "vhd_type": "Differencing" if parent else "Dynamic",
            "size": DISK_SIZE,
            "file_size": local.stat().st_size,
            "parent_path": parent,
            "disk_identifier": str(uuid.uuid5(uuid.NAMESPACE_URL, path.lower())).upper(),
        }

    # -- one method per script ------------------------------------------------------------------

    def _host(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "computer_name": "HV01",
            "fqdn": "hv01.lab.example",
            "os_caption": "Microsoft Windows Server 2022 Datacenter",
            "os_version": "10.0.20348",
            "os_build": "20348",
            "hyperv_version": "10.0.20348.1",
            "virtual_machine_path": r"C:\ProgramData\Microsoft\Windows\Hyper-V",
            "virtual_hard_disk_path": r"C:\ProgramData\Microsoft\Windows\Virtual Hard Disks",
            "utc_now": self._now(),
        }

    def _clock(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"utc_now": self._now()}

    def _now(self) -> str:
        return dotnet_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_skew))

    def _identify(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments.get("id"):
            found = [self._get_vm(arguments["id"])]
        else:
            found = [
                vm for vm in self.vms.values() if vm["name"].lower() == str(arguments.get("name")).lower()
            ]
        if len(found) != 1:
            return {
                "vm": None,
                "candidates": [{"id": v["id"], "name": v["name"], "state": v["state"]} for v in found],
            }
        vm = found[0]
        summary = {k: vm[k] for k in VM_SUMMARY_FIELDS}
        drives = [
            {
                "controller_type": "SCSI",
                "controller_number": 0,
                "controller_location": i,
                "path": p,
                "chain": self._chain(p),
            }
            for i, p in enumerate(vm["drives"])
        ]
        snapshots = [
            {
                k: s[k]
                for k in (
                    "id",
                    "name",
                    "snapshot_type",
                    "creation_time",
                    "parent_snapshot_id",
                    "path",
                    "hard_drives",
                )
            }
            for s in vm["snapshots"]
        ]
        adapters = [dict(a) for a in vm["adapters"]]
        return {
            "candidates": [],
            "vm": summary,
            "network_adapters": adapters,
            "hard_drives": drives,
            "snapshots": snapshots,
        }

    def _chain(self, path: str | None) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        while path:
            try:
                vhd = self._get_vhd(path)
            except PSError as error:  # the script records the broken link and stops there
                chain.append({"path": path, "error": error.record["message"]})
                break
            chain.append(vhd)
            path = vhd["parent_path"]
        return chain

    def _events(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"events": list(self._get_vm(arguments["id"])["events"])}

    def _set_checkpoint_type(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        if arguments["checkpoint_type"] not in ("Disabled", "Production", "ProductionOnly", "Standard"):
            raise PSError(
                "InvalidArgument",
                "ParameterArgumentValidationError,Microsoft.HyperV.PowerShell.Commands.SetVM",
                "Cannot bind parameter 'CheckpointType'.",
                "System.Management.Automation.ParameterBindingException",
            )
        before = vm["checkpoint_type"]
        vm["checkpoint_type"] = arguments["checkpoint_type"]
        return {"before": before, "after": vm["checkpoint_type"]}

    def _checkpoint(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        snap_id = str(uuid.uuid4()).upper()
        created: dict[str, str] = {}
        for index, parent in enumerate(vm["drives"]):
            stem = ntpath.splitext(ntpath.basename(BASE if parent.lower().endswith(".avhdx") else parent))[0]
            child = ntpath.join(ntpath.dirname(parent), f"{stem}_{snap_id}.avhdx")
            write_differencing(
                self.local(child), size=DISK_SIZE, parent=self.local(parent), parent_absolute_path=parent
            )
            self.local(child).chmod(0o644)
            self.vhd_parent[child.lower()] = parent
            created[child] = parent
            vm["drives"][index] = child
        snapshots = self.local(vm["snapshot_file_location"] + r"\Snapshots")
        (snapshots / f"{snap_id}.vmcx").write_bytes(b"\x00\x01vmcx" + os.urandom(20_000))
        memory = vm["state"] == "Running" and vm["checkpoint_type"] == "Standard"
        (snapshots / f"{snap_id}.VMRS").write_bytes(os.urandom((2 << 20) if memory else 8192))
        for path in snapshots.iterdir():
            path.chmod(0o644)
        now = self._now()
        vm["snapshots"].append(
            {
                "id": snap_id,
                "name": arguments["name"],
                "snapshot_type": "Standard" if vm["checkpoint_type"] == "Standard" else "Production",
                "creation_time": now,
                "parent_snapshot_id": vm["snapshots"][-1]["id"] if vm["snapshots"] else None,
                "path": vm["snapshot_file_location"],
                "hard_drives": list(created.values()),
                "created_disks": created,
                "memory": memory,
            }
        )
        last = vm["snapshots"][-1]
        return {
            "id": snap_id,
            "name": last["name"],
            "snapshot_type": last["snapshot_type"],
            "creation_time": now,
            "path": last["path"],
            "state": vm["state"],
        }

    def _save(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        state_file = self.local(vm["configuration_location"] + rf"\Virtual Machines\{vm['id']}.VMRS")
        state_file.write_bytes(os.urandom(3 << 20))
        vm["state"] = "Saved"
        return {"state": vm["state"]}

    def _start(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        vm["state"] = "Running"
        return {"state": vm["state"]}

    def _isolate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        was = [
            {"name": a["name"], "mac_address": a["mac_address"], "switch_name": a["switch_name"]}
            for a in vm["adapters"]
        ]
        for adapter in vm["adapters"]:
            adapter.update(switch_name=None, connected=False)
        return {"disconnected": was}

    def _remove_checkpoint(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        matching = [s for s in vm["snapshots"] if s["id"].lower() == str(arguments["snapshot_id"]).lower()]
        if len(matching) != 1:
            raise PSError(
                "ObjectNotFound",
                "VMForensicsCheckpointNotFound",
                "the checkpoint to remove is gone",
                "Microsoft.PowerShell.Commands.WriteErrorException",
            )
        snapshot = matching[0]
        for child, parent in snapshot["created_disks"].items():  # merge: the child holds no writes
            self.local(child).unlink()
            del self.vhd_parent[child.lower()]
            vm["drives"] = [parent if d == child else d for d in vm["drives"]]
        for suffix in (".vmcx", ".VMRS"):
            self.local(vm["snapshot_file_location"] + rf"\Snapshots\{snapshot['id']}{suffix}").unlink()
        vm["snapshots"].remove(snapshot)
        return {"removed": snapshot["id"], "state": vm["state"]}

    def _enumerate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vm = self._get_vm(arguments["id"])
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(path: str, kind: str, by: str | None = None, reference: str | None = None) -> None:
            if path.lower() in seen:
                return
            seen.add(path.lower())
            named = {"named_by": by, "reference": reference}
            local = self.local(ntpath.normpath(path))
            if local.is_file():
                path = ntpath.normpath(path)  # Get-Item's FullName: '..' folded
                stamp = dt.datetime.fromtimestamp(local.stat().st_mtime, dt.UTC)
                out.append(
                    {
                        "path": path,
                        "kind": kind,
                        "size": local.stat().st_size,
                        "last_write_utc": dotnet_time(stamp),
                        "missing": None,
                        **named,
                    }
                )
            else:
                out.append(
                    {
                        "path": path,
                        "kind": kind,
                        "size": None,
                        "last_write_utc": None,
                        "missing": f"Cannot find path '{path}' because it does not exist.",
                        **named,
                    }
                )

        def owned(folder: str, prefix: str, kind: str) -> None:
            local = self.local(folder)
            if not local.is_dir():
                return
            for entry in sorted(local.iterdir()):
                if entry.is_file() and entry.name.lower().startswith(prefix.lower()):
                    add(ntpath.join(folder, entry.name), kind)
            sub = local / prefix
            if sub.is_dir():
                for entry in sorted(sub.rglob("*")):
                    if entry.is_file():
                        add(ntpath.join(folder, prefix, *entry.relative_to(sub).parts), kind)

        owned(vm["configuration_location"] + r"\Virtual Machines", vm["id"], "configuration")
        for snapshot in vm["snapshots"]:
            owned(vm["snapshot_file_location"] + r"\Snapshots", snapshot["id"], "checkpoint")
        disks = list(vm["drives"]) + [p for s in vm["snapshots"] for p in s["hard_drives"]]
        for disk in disks:
            path: str | None = disk
            by: str | None = None
            while path:
                add(path, "disk", by, path if by else None)
                for ext in (".rct", ".mrt"):
                    for candidate in (path + ext, ntpath.splitext(path)[0] + ext):
                        if self.local(candidate).is_file():
                            add(candidate, "change-tracking", path)
                by, path = path, self.vhd_parent.get(path.lower())
        owned(vm["smart_paging_file_path"], vm["id"], "smart-paging")
        roots = {
            "configuration_location": vm["configuration_location"],
            "snapshot_file_location": vm["snapshot_file_location"],
            "smart_paging_file_path": vm["smart_paging_file_path"],
            "disks": disks,
        }
        return {"files": out, "roots": roots}

    def _file_hash(self, arguments: dict[str, Any]) -> dict[str, Any]:
        path = arguments["path"]
        if path.lower() in self.locked:
            raise PSError(
                "ReadError",
                "FileReadError,Microsoft.PowerShell.Commands.GetFileHashCommand",
                f"The process cannot access the file '{path}' because it is being used by another process.",
                "System.IO.IOException",
            )
        digest = hashlib.sha256(self.local(path).read_bytes()).hexdigest().upper()
        return {"path": path, "algorithm": "SHA256", "hash": digest}
