"""Local datastores for survey tests: demo VMs (vmforensics.demo.vm) copied, renamed and edited
the way ESXi would leave them, with snapshot deltas made by qemu-img."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

from vmforensics.demo.vm import VM_NAME, build_demo_vm

NOW = dt.datetime.now(dt.UTC)


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def add_vm(
    datastore: Path,
    name: str,
    *,
    mac: str,
    address_type: str = "vpx",
    last_run: dt.datetime | None = None,
    staging: Path,
) -> Path:
    """A powered-off demo VM called ``name`` in ``datastore/name``; returns its folder."""
    built = build_demo_vm(staging / name).parent
    folder = datastore / name
    datastore.mkdir(parents=True, exist_ok=True)
    shutil.move(built, folder)
    for path in list(folder.iterdir()):
        if path.name.startswith(VM_NAME + "."):
            path.rename(folder / (name + path.name[len(VM_NAME) :]))
    vmx = folder / f"{name}.vmx"
    vmx.write_text(vmx.read_text().replace(VM_NAME, name))
    key = "ethernet0.address" if address_type == "static" else "ethernet0.generatedAddress"
    set_vmx(folder, {"ethernet0.addressType": address_type, key: mac}, remove=("ethernet0.generatedAddress",))
    run = last_run or NOW - dt.timedelta(days=1)
    start = run - dt.timedelta(hours=3)
    (folder / "vmware.log").write_text(
        f"{stamp(start)} In(05) vmx - Log for VMware ESX pid=1234 version=8.0.2\n"
        f"{stamp(start)} In(05) vmx - Ethernet0 MAC Address: {mac}\n"
        f"{stamp(run)} In(05) vmx - Guest: toolbox: Shutdown requested\n"
    )
    return folder


def set_vmx(folder: Path, entries: dict[str, str], *, remove: tuple[str, ...] = ()) -> None:
    """Replace (or add) .vmx entries, and drop the keys in ``remove``."""
    vmx = next(folder.glob("*.vmx"))
    gone = {k.lower() for k in (*entries, *remove)}
    kept = [
        line for line in vmx.read_text().splitlines() if line.split("=", 1)[0].strip().lower() not in gone
    ]
    vmx.write_text("\n".join(kept + [f'{k} = "{v}"' for k, v in entries.items()]) + "\n")


def take_snapshots(folder: Path, times: list[dt.datetime], *, memory: bool = False) -> list[Path]:
    """A linear chain of len(times) snapshots: qemu-img deltas, .vmsn (+ .vmem) and the .vmsd."""
    name = folder.name
    base = folder / f"{name}.vmdk"
    parent = base
    deltas = []
    vmsd = [
        '.encoding = "UTF-8"',
        f'snapshot.lastUID = "{len(times)}"',
        f'snapshot.numSnapshots = "{len(times)}"',
    ]
    for index, moment in enumerate(times, start=1):
        delta = folder / f"{name}-{index:06d}.vmdk"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "vmdk", "-b", parent.name, "-F", "vmdk", str(delta)],
            cwd=folder,
            check=True,
        )
        micros = int(moment.timestamp() * 1_000_000)
        high, low = micros >> 32, micros & 0xFFFFFFFF
        low = low - (1 << 32) if low >= 1 << 31 else low  # VMware writes the halves as signed
        state = folder / f"{name}-Snapshot{index}.vmsn"
        state.write_bytes(b"\xd2\xbe\xd2\xbe" + bytes(60))
        if memory:
            state.with_suffix(".vmem").write_bytes(bytes(4096))
        n = index - 1
        vmsd += [
            f'snapshot{n}.uid = "{index}"',
            f'snapshot{n}.filename = "{state.name}"',
            f'snapshot{n}.displayName = "snap-{index}"',
            f'snapshot{n}.createTimeHigh = "{high}"',
            f'snapshot{n}.createTimeLow = "{low}"',
            f'snapshot{n}.numDisks = "1"',
            f'snapshot{n}.disk0.fileName = "{parent.name}"',
            f'snapshot{n}.disk0.node = "scsi0:0"',
        ]
        if index > 1:
            vmsd.append(f'snapshot{n}.parent = "{index - 1}"')
        deltas.append(delta)
        parent = delta
    vmsd.append(f'snapshot.current = "{len(times)}"')
    (folder / f"{name}.vmsd").write_text("\n".join(vmsd) + "\n")
    set_vmx(folder, {"scsi0:0.fileName": parent.name})
    return deltas


def age(path: Path, days: float) -> None:
    """Set a file's modification time ``days`` in the past."""
    moment = (NOW - dt.timedelta(days=days)).timestamp()
    os.utime(path, (moment, moment))
