"""Real QEMU guests (TCG) with a QMP unix socket, and a Proxmox VE layout written around them.

No Proxmox packages exist for Debian here, so the Proxmox side is what a node keeps on disk,
written by the test: ``etc/pve/qemu-server/<vmid>.conf``, ``etc/pve/storage.cfg`` with a ``dir:``
storage, ``var/lib/vz/images/<vmid>/vm-<vmid>-disk-N.qcow2`` and the QMP socket at
``var/run/qemu-server/<vmid>.qmp`` — all under one short root (unix socket paths are limited to
107 bytes). The guest runs no OS (SeaBIOS idles); a Linux banner is put in its RAM by QEMU's
generic loader so that Volatility finds it in a memory image.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.interop.vmware_state import BANNER

QEMU = "/usr/bin/qemu-system-x86_64"
#: Guest-physical address of the planted banner (inside 64 MiB of RAM, above what SeaBIOS uses).
BANNER_ADDRESS = 0x2000000 + 0x10
DISK_SIZE = 16 << 20
RAW_SIZE = 8 << 20


def available() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    for tool in (QEMU, "/usr/bin/qemu-img", "/usr/bin/socat"):
        if not Path(tool).exists():
            return f"{tool} is missing: apt-get install qemu-system-x86 qemu-utils socat"
    return None


def short_root(prefix: str) -> Path:
    """A new folder with a short path (unix socket paths are limited), removed when the run ends."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def qemu_img(*args: str) -> str:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"qemu-img {' '.join(args)}: {done.stderr}")
    return done.stdout


class QMP:
    """A test-side QMP connection (the oracle's view of the VM), independent of the library."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        for _ in range(100):
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")
            return reply["return"]

    def hmp(self, line: str) -> None:
        """A monitor command that prints nothing when it works (qemu-io writes); else raise."""
        said = self.execute("human-monitor-command", **{"command-line": line})
        if said.strip():
            raise RuntimeError(f"{line}: {said.strip()}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Guest:
    """One QEMU process: a qcow2 disk (drive-scsi0), a raw disk (drive-scsi1), a NIC with a fixed MAC."""

    def __init__(
        self,
        root: Path,
        *,
        name: str = "web01",
        uuid: str = "6f1c3a52-1d2e-4b7a-9c11-0a1b2c3d4e5f",
        mac: str = "bc:24:11:5e:a0:01",
        qmp: Path | None = None,
        disk: Path | None = None,
        raw: Path | None = None,
        extra_drives: tuple[tuple[str, str, str], ...] = (),
        lab: Path | None = None,
        blockdev: bool = False,
    ):
        self.root = root
        self.blockdev = blockdev  # the qcow2 disk as -blockdev nodes (no drive id), as libvirt and PVE 9 do
        self.lab = lab or root  # the banner and pid file (not beside the disks of a Proxmox node)
        self.name = name
        self.uuid = uuid
        self.mac = mac
        self.qmp_path = qmp or root / "qmp.sock"
        self.disk = disk or root / "disk0.qcow2"
        self.raw = raw or root / "disk1.raw"
        self.extra_drives = extra_drives
        self.pid_file = self.lab / f"{name}.pid"
        self.pid: int | None = None

    def create_disks(self) -> None:
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        if not self.disk.exists():
            qemu_img("create", "-q", "-f", "qcow2", str(self.disk), str(DISK_SIZE))
            subprocess.run(
                ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 256k", str(self.disk)],
                check=True,
                capture_output=True,
            )
        if not self.raw.exists():
            with open(self.raw, "wb") as f:
                f.truncate(RAW_SIZE)
                f.seek(4096)
                f.write(b"raw disk evidence\n" * 100)

    def start(self) -> Guest:
        self.create_disks()
        self.qmp_path.parent.mkdir(parents=True, exist_ok=True)
        self.lab.mkdir(parents=True, exist_ok=True)
        banner = self.lab / "banner.bin"
        banner.write_bytes(BANNER + b"\0")
        drives = [
            ("drive-scsi0", str(self.disk), "qcow2"),
            ("drive-scsi1", str(self.raw), "raw"),
            *self.extra_drives,
        ]
        argv = [
            QEMU,
            "-accel", "tcg",
            "-m", "64",
            "-display", "none",
            "-nodefaults",
            "-no-user-config",
            "-name", self.name,
            "-uuid", self.uuid,
            "-qmp", f"unix:{self.qmp_path},server,wait=off",
            "-nic", f"user,mac={self.mac},model=virtio-net-pci",
            "-device", f"loader,file={banner},addr={BANNER_ADDRESS:#x},force-raw=on",
            "-pidfile", str(self.pid_file),
            "-daemonize",
        ]  # fmt: skip
        if self.blockdev:
            ident, path, fmt = drives.pop(0)
            argv += [
                "-blockdev", f"driver=file,filename={path},node-name=file-{ident}",
                "-blockdev", f"driver={fmt},file=file-{ident},node-name={ident}",
                "-device", "virtio-scsi-pci,id=scsihw0",
                "-device", f"scsi-hd,bus=scsihw0.0,drive={ident},id=hd-{ident}",
            ]  # fmt: skip
        for ident, path, fmt in drives:
            argv += [
                "-drive",
                f"file={path},if=none,id={ident},format={fmt}",
                "-device",
                f"virtio-blk-pci,drive={ident}",
            ]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        self.pid = int(self.pid_file.read_text())
        self.write("drive-scsi0", "write -P 0x41 0 64k")  # written while running
        return self

    def write(self, drive: str, command: str) -> None:
        """A qemu-io command on a drive of the running guest (-d: by guest device for -blockdev)."""
        with self.qmp() as qmp:
            if self.blockdev and drive == "drive-scsi0":
                qmp.hmp(f'qemu-io -d hd-{drive} "{command}"')
            else:
                qmp.hmp(f'qemu-io {drive} "{command}"')

    def qmp(self) -> QMP:
        return QMP(self.qmp_path)

    def status(self) -> str:
        with self.qmp() as qmp:
            return qmp.execute("query-status")["status"]

    def tops(self) -> dict[str, str]:
        """Each drive's active image, by drive id (by the guest device for -blockdev drives)."""
        with self.qmp() as qmp:
            return {
                b["device"] or b["qdev"]: b["inserted"]["file"]
                for b in qmp.execute("query-block")
                if "inserted" in b
            }

    def node_files(self) -> list[str]:
        with self.qmp() as qmp:
            return [n["file"] for n in qmp.execute("query-named-block-nodes", flat=True)]

    def stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def convert_to_raw(image: Path, out: Path, *, fmt: str | None = None) -> bytes:
    """The oracle: ``qemu-img convert -U -O raw`` (force-share: the guest may hold it open)."""
    args = ["convert", "-U", *(["-f", fmt] if fmt else []), "-O", "raw", str(image), str(out)]
    qemu_img(*args)
    return out.read_bytes()


PROXMOX_CONF = """\
#Web server%20moved from ESXi
#second line
boot: order=scsi0
cores: 1
memory: 64
meta: creation-qemu=7.2.0,ctime=1700000000
name: {name}
net0: virtio={mac},bridge=vmbr0,firewall=1
net1: e1000=BC:24:11:5E:A0:02,bridge=vmbr1
ostype: l26
parent: before-upgrade
scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,size=16M
scsi1: local:{vmid}/vm-{vmid}-disk-1.raw,size=8M
ide2: none,media=cdrom
scsihw: virtio-scsi-pci
smbios1: uuid={uuid}
vmgenid: 2b4f6c1e-0000-4000-8000-000000000001

[before-upgrade]
boot: order=scsi0
cores: 1
memory: 64
name: {name}
net0: virtio={mac},bridge=vmbr0,firewall=1
scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,size=16M
smbios1: uuid={uuid}
snaptime: 1700000100
vmstate: local:{vmid}/vm-{vmid}-state-before-upgrade.raw
"""

STORAGE_CFG = """\
dir: local
\tpath {root}/var/lib/vz
\tcontent iso,vztmpl,backup,images

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images

rbd: ceph
\tpool vms
\tcontent images
"""


class ProxmoxNode:
    """A Proxmox VE node's files under ``root`` and its VMs' QEMU processes."""

    def __init__(self, root: Path):
        self.root = root
        self.config_root = root / "etc/pve"
        self.run_root = root / "var/run/qemu-server"
        self.images = root / "var/lib/vz/images"
        self.guests: list[Guest] = []
        (self.config_root / "qemu-server").mkdir(parents=True, exist_ok=True)
        self.run_root.mkdir(parents=True, exist_ok=True)
        (self.config_root / "storage.cfg").write_text(STORAGE_CFG.format(root=root))

    def write_vm(self, vmid: int, *, name: str, uuid: str, mac: str, conf: str = PROXMOX_CONF) -> Path:
        folder = self.images / str(vmid)
        folder.mkdir(parents=True, exist_ok=True)
        state = folder / f"vm-{vmid}-state-before-upgrade.raw"
        if not state.exists():
            state.write_bytes(b"QEVM" + os.urandom(60000))
        path = self.config_root / "qemu-server" / f"{vmid}.conf"
        path.write_text(conf.format(vmid=vmid, name=name, uuid=uuid, mac=mac.upper()))
        return path

    def start_vm(self, vmid: int, *, name: str, uuid: str, mac: str) -> Guest:
        self.write_vm(vmid, name=name, uuid=uuid, mac=mac)
        folder = self.images / str(vmid)
        guest = Guest(
            folder,
            name=name,
            uuid=uuid,
            mac=mac,
            qmp=self.run_root / f"{vmid}.qmp",
            disk=folder / f"vm-{vmid}-disk-0.qcow2",
            raw=folder / f"vm-{vmid}-disk-1.raw",
            lab=self.root / "lab",
        )
        self.guests.append(guest.start())
        return guest

    def stop(self) -> None:
        for guest in self.guests:
            guest.stop()
        shutil.rmtree(self.root, ignore_errors=True)
