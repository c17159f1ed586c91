"""A real libvirt daemon with QEMU (TCG) for tests, prepared the way ../shared/LAB.md describes.

Without systemd the daemon needs, once (idempotent, needs root): the kvm and libvirt-qemu groups
and user, /var/log/libvirt and /var/run/libvirt, and in /etc/libvirt/qemu.conf ``user = "root"``,
``group = "root"``, ``dynamic_ownership = 0``, ``security_driver = "none"``. Then ``virtlogd -d``
and ``libvirtd -d``; the lab stops only the daemons it started (by pid).

Guests are tiny: 64 MiB, no OS (SeaBIOS finds nothing to boot and idles), a qcow2 disk whose
backing file (in another folder) holds a real ext4 file system, a ``user`` interface with a fixed
MAC and a VNC display with a password (for the secret-removal checks).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SETTINGS = {"user": '"root"', "group": '"root"', "dynamic_ownership": "0", "security_driver": '"none"'}
VNC_PASSWORD = "Vnc8pw!x"  # VNC allows 8 characters
FILE_CONTENT = b"evidence from a libvirt guest\n"
DISK_SIZE = 16 << 20


def available() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the libvirt lab needs root (CI runs as root)"
    for tool in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh", "/usr/bin/qemu-system-x86_64"):
        if not Path(tool).exists():
            return f"{tool} is missing: apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86"
    return None


def run(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, input=None if input is None else input.decode()
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    return done


def virsh(*args: str, check: bool = True) -> str:
    return run("virsh", "-c", URI, *args, check=check).stdout


def prepare_host() -> None:
    """Groups, user, directories and qemu.conf as the daemon needs them here (idempotent)."""
    for group in ("kvm", "libvirt-qemu"):
        if run("getent", "group", group, check=False).returncode != 0:
            run("groupadd", "-r", group)
    if run("id", "libvirt-qemu", check=False).returncode != 0:
        run("useradd", "-r", "-g", "libvirt-qemu", "-M", "-s", "/usr/sbin/nologin", "libvirt-qemu")
    for folder in ("/var/log/libvirt", "/var/run/libvirt", "/etc/libvirt"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    text = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    lines = [line for line in text.splitlines() if not re.match(rf"\s*({'|'.join(QEMU_SETTINGS)})\s*=", line)]
    lines += [f"{key} = {value}" for key, value in QEMU_SETTINGS.items()]
    wanted = "\n".join(lines) + "\n"
    if wanted != text:
        QEMU_CONF.write_text(wanted)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def _pid(path: str) -> int | None:
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


#: Domain names the test modules use; such domains found at start are leftovers of a crashed run.
STALE_PREFIXES = ("vmf-", "svy-")
#: Pools the lab creates (transient: gone with the daemon too); the survey module names its own.
STALE_POOL_PREFIX = "vmf-pool-"


#: One lab at a time on this machine: the system libvirtd is shared, and a lab removes leftover
#: vmf-* domains at start and stops the daemons it started, which would break a second test run.
LOCK_FILE = Path("/run/lock/vmforensics-libvirt-lab.lock")


class LibvirtLab:
    """libvirtd + virtlogd on this machine, and helpers to build and run small domains."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.started: list[int] = []
        self.domains: list[str] = []
        self.pools: list[str] = []
        self._lock: int | None = None

    def start(self) -> LibvirtLab:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # waits while another test run holds the lab
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LibvirtLab:
        prepare_host()
        for daemon, pid_file in (
            ("virtlogd", "/var/run/virtlogd.pid"),
            ("libvirtd", "/var/run/libvirtd.pid"),
        ):
            if _pid(pid_file) is None:
                run(f"/usr/sbin/{daemon}", "-d")
                deadline = time.monotonic() + 15
                while (pid := _pid(pid_file)) is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid is None:
                    raise RuntimeError(f"{daemon} did not start")
                self.started.append(pid)
        deadline = time.monotonic() + 20
        while run("virsh", "-c", URI, "version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd does not answer on qemu:///system")
            time.sleep(0.1)
        for name in virsh("list", "--all", "--name").split():  # left by an earlier run that crashed
            if name.startswith(STALE_PREFIXES):
                self.remove_domain(name)
        for name in virsh("pool-list", "--all", "--name").split():
            if name.startswith(STALE_POOL_PREFIX):
                self.remove_pool(name)
        return self

    def stop(self) -> None:
        for name in list(self.domains):
            self.remove_domain(name)
        for name in list(self.pools):
            self.remove_pool(name)
        for pid in reversed(self.started):
            # gone for good before the next lab starts: a dying daemon that still answers the pid
            # check would be reused by the next test module and drop its connections
            for signum, patience in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + patience
                while time.monotonic() < deadline and _alive(pid):
                    time.sleep(0.05)
                if not _alive(pid):
                    break
        for pid_file in ("/var/run/libvirtd.pid", "/var/run/virtlogd.pid"):
            if _pid(pid_file) is None:
                Path(pid_file).unlink(missing_ok=True)
        self.started.clear()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> LibvirtLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- disks -----------------------------------------------------------------------------------

    def make_chain(self, folder: Path, *, pool: bool = True) -> tuple[Path, Path]:
        """base/base.qcow2 (ext4 holding hello.txt) <- vm/top.qcow2 (one extra write); returns both.

        ``base/`` is a (transient) directory storage pool, as golden images are on a real host: that
        is what lets an acquisition read the backing file, which lies outside the disk's own folder.
        ``pool=False`` leaves it a plain folder (then only ``allowed_roots`` reaches it).
        """
        base_dir, vm_dir = folder / "base", folder / "vm"
        base_dir.mkdir(parents=True)
        vm_dir.mkdir(parents=True)
        if pool:
            self.pool(base_dir)
        content = folder / "content"
        content.mkdir()
        (content / "hello.txt").write_bytes(FILE_CONTENT)
        raw = folder / "fs.raw"
        with raw.open("wb") as handle:
            handle.truncate(DISK_SIZE)
        run("mkfs.ext4", "-q", "-F", "-d", str(content), str(raw))
        base = base_dir / "base.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(base))
        raw.unlink()
        top = vm_dir / "top.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 15M 64k", str(top))
        return base, top

    def pool(self, folder: Path) -> str:
        """A transient directory pool on ``folder`` (removed at stop); returns its name."""
        name = f"{STALE_POOL_PREFIX}{uuid.uuid4().hex[:12]}"
        virsh("pool-create-as", name, "dir", "--target", str(folder))
        self.pools.append(name)
        return name

    def remove_pool(self, name: str) -> None:
        virsh("pool-destroy", name, check=False)
        virsh("pool-undefine", name, check=False)
        if name in self.pools:
            self.pools.remove(name)

    # -- domains ---------------------------------------------------------------------------------

    def domain_xml(self, name: str, disk: Path | None, mac: str, extra_devices: str = "") -> str:
        disk_xml = (
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            if disk is not None
            else ""
        )
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk_xml}
    {extra_devices}
    <interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='{VNC_PASSWORD}'/>
  </devices>
</domain>
"""

    def define(self, name: str, xml: str, *, start: bool = True, transient: bool = False) -> None:
        path = self.workdir / f"{name}.xml"
        path.write_text(xml)
        self.domains.append(name)
        if transient:
            virsh("create", str(path))
            return
        virsh("define", str(path))
        if start:
            virsh("start", name)

    def remove_domain(self, name: str) -> None:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--snapshots-metadata", check=False)
        if name in self.domains:
            self.domains.remove(name)

    def state(self, name: str) -> str:
        return virsh("domstate", name).strip()

    def disk_source(self, name: str, target: str = "vda") -> str:
        for line in virsh("domblklist", name, "--details").splitlines():
            fields = line.split(None, 3)
            if len(fields) == 4 and fields[2] == target:
                return fields[3].strip()
        raise AssertionError(f"{name} has no disk {target}")


def guest_write(name: str, pattern: int, offset: str, length: str) -> None:
    """Write through the running guest's own disk device (HMP qemu-io on its virtio backend)."""
    command = f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P {pattern:#x} {offset} {length}"'
    out = virsh("qemu-monitor-command", name, "--hmp", command)
    if out.strip():
        raise RuntimeError(f"guest write failed: {out.strip()}")


def qemu_img_raw(top: Path, out: Path, backing: Path | None = None) -> bytes:
    """The raw content of ``top`` by qemu-img (the oracle); ``backing`` overrides the header's name."""
    if backing is None:
        spec = str(top)
        args = ["qemu-img", "convert", "-U", "-O", "raw", spec, str(out)]
    else:
        spec = "json:" + json.dumps(
            {
                "driver": "qcow2",
                "file": {"driver": "file", "filename": str(top)},
                "backing": {"driver": "qcow2", "file": {"driver": "file", "filename": str(backing)}},
            }
        )
        args = ["qemu-img", "convert", "-U", "-O", "raw", spec, str(out)]
    run(*args)
    data = out.read_bytes()
    out.unlink()
    return data
