"""A small Linux guest as ESXi leaves it: ext4 in a descriptor + flat extent, a .vmx naming the disk,
and after a snapshot the sparse delta holding the guest's later writes.

The guest tree has what dissect.target looks for to recognise Linux (/etc, /var, /opt, /run,
/etc/hostname, /etc/os-release, /etc/passwd). The delta is written cluster by cluster with
qemu-io from a copy of the guest changed with debugfs, so a file added after the snapshot can
only be seen by a reader that follows the whole chain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HOSTNAME = "web02"
USER = "deploy"
EVIDENCE_TEXT = b"the intruder was here\n"
AFTER_SNAPSHOT_TEXT = b"written by the guest after the snapshot\n"
CLUSTER = 64 * 1024

GUEST_FILES = {
    "etc/hostname": f"{HOSTNAME}\n".encode(),
    "etc/os-release": b'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n',
    "etc/debian_version": b"12.5\n",
    "etc/passwd": f"root:x:0:0:root:/root:/bin/bash\n{USER}:x:1000:1000:Deploy:/home/{USER}:/bin/bash\n".encode(),
    "etc/sysctl.conf": b"",
    f"home/{USER}/evidence.txt": EVIDENCE_TEXT,
    "var/log/kern.log": b"",
}
EMPTY_DIRS = ("opt", "run", "tmp", "root")


def write_guest_disk(vm_dir: Path, work: Path, *, name: str = "disk1", size_mb: int = 16) -> Path:
    """Write ``name.vmdk`` + ``name-flat.vmdk`` (ext4) into ``vm_dir``; returns the raw image."""
    tree = work / "guest-root"
    for relative, content in GUEST_FILES.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(content)
    for relative in EMPTY_DIRS:
        (tree / relative).mkdir(parents=True, exist_ok=True)
    raw = work / f"{name}.raw"
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(raw)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", HOSTNAME, "-d", str(tree), str(raw)], check=True, capture_output=True
    )
    for stale in (vm_dir / f"{name}.vmdk", vm_dir / f"{name}-flat.vmdk"):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            str(raw),
            str(vm_dir / f"{name}.vmdk"),
        ],
        check=True,
    )
    return raw


def write_guest_delta(vm_dir: Path, base_raw: Path, work: Path, *, parent: str = "disk1") -> Path:
    """``parent-000001.vmdk`` over ``parent.vmdk`` with /home/USER/after-snapshot.txt added in it."""
    changed = work / "after-snapshot.raw"
    changed.write_bytes(base_raw.read_bytes())
    (work / "after.txt").write_bytes(AFTER_SNAPSHOT_TEXT)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {work / 'after.txt'} /home/{USER}/after-snapshot.txt", str(changed)],
        check=True,
        capture_output=True,
    )
    delta = vm_dir / f"{parent}-000001.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-b", f"{parent}.vmdk", "-F", "vmdk", str(delta)],
        check=True,
        cwd=vm_dir,
    )
    before, after = base_raw.read_bytes(), changed.read_bytes()
    commands = []
    for offset in range(0, len(after), CLUSTER):
        if before[offset : offset + CLUSTER] != after[offset : offset + CLUSTER]:
            chunk = work / f"cluster-{offset}"
            chunk.write_bytes(after[offset : offset + CLUSTER])
            commands += ["-c", f"write -s {chunk} {offset} {CLUSTER}"]
    subprocess.run(["qemu-io", *commands, str(delta)], check=True, capture_output=True, cwd=vm_dir)
    return delta


def write_vmx(vmx: Path, *, display_name: str, disk: str) -> None:
    """The lines of an ESXi .vmx that name the VM and its disk (ESXi points it at the delta after a snapshot)."""
    entries = {
        ".encoding": "UTF-8",
        "config.version": "8",
        "virtualHW.version": "19",
        "displayName": display_name,
        "guestOS": "debian12-64",
        "memSize": "4",
        "scsi0.present": "TRUE",
        "scsi0.virtualDev": "pvscsi",
        "scsi0:0.present": "TRUE",
        "scsi0:0.deviceType": "scsi-hardDisk",
        "scsi0:0.fileName": disk,
        "ethernet0.present": "TRUE",
        "ethernet0.virtualDev": "vmxnet3",
    }
    vmx.write_text("".join(f'{key} = "{value}"\n' for key, value in entries.items()))
