"""A real QEMU (TCG) guest driven over QMP: 64 MiB, no OS (SeaBIOS idles), a Linux banner put
into guest RAM at a known guest-physical address by QEMU's generic loader device. It can be
paused, dumped as an ELF core by QEMU itself (dump-guest-memory, the oracle) and migrated into a
file (the raw QEVM stream, as Proxmox stores vmstate volumes)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"
BANNER = (
    b"Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) "
    b"#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\n"
)
BANNER_ADDRESS = 0x2000000


def bios_shadowed(mtree: str) -> bool:
    """Whether HMP ``info mtree -f`` shows guest RAM, not the BIOS ROM, at 0xc0000-0xfffff.

    At reset those addresses read the ROM (PAM registers); SeaBIOS copies itself into RAM and
    switches them over. A guest paused before that has RAM there that differs from what a dump
    (which reads the address space) shows, so the oracles wait for it instead of a fixed sleep."""
    legacy = [line for line in mtree.splitlines() if line.strip().startswith(("00000000000c", "00000000000d",
              "00000000000e", "00000000000f"))]  # fmt: skip
    return bool(legacy) and not any("pc.bios" in line or "isa-bios" in line for line in legacy)


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def available() -> str | None:
    return None if shutil.which(QEMU) else f"{QEMU} is missing: apt-get install qemu-system-x86"


def loader_args(folder: Path, address: int = BANNER_ADDRESS) -> list[str]:
    """QEMU arguments that put BANNER into guest RAM at guest-physical ``address``."""
    banner = folder / "banner.bin"
    banner.write_bytes(BANNER + b"\0")
    return ["-device", f"loader,file={banner},addr={address:#x},force-raw=on"]


class Guest:
    def __init__(
        self, folder: Path, memory_mib: int = 64, machine: str = "pc", banner_address: int = BANNER_ADDRESS
    ):
        self.folder = folder
        self.socket_path = folder / "qmp.sock"
        argv = [QEMU, "-accel", "tcg", "-machine", machine, "-m", str(memory_mib), "-display", "none"]
        argv += [
            "-nodefaults",
            *loader_args(folder, banner_address),
            "-qmp",
            f"unix:{self.socket_path},server,wait=off",
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not self.socket_path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(
                    f"qemu did not start: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.socket_path))
        self.stream = self.sock.makefile("rw")
        json.loads(self.stream.readline())  # greeting
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: object) -> object:
        self.stream.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self.stream.flush()
        while True:
            answer = json.loads(self.stream.readline())
            if "error" in answer:
                raise RuntimeError(f"{name}: {answer['error']}")
            if "return" in answer:
                return answer["return"]

    def pause(self) -> None:
        wait_until(
            lambda: bios_shadowed(
                str(self.command("human-monitor-command", **{"command-line": "info mtree -f"}))
            ),
            "SeaBIOS to shadow itself into RAM",
        )
        time.sleep(0.2)  # and to reach its idle loop
        self.command("stop")

    def dump_elf(self, path: Path) -> None:
        self.command("dump-guest-memory", paging=False, protocol=f"file:{path}")

    def migrate_to(self, path: Path) -> None:
        self.command("migrate", uri=f"exec:cat > {path}")
        deadline = time.monotonic() + 120
        while True:
            status = self.command("query-migrate")
            state = status.get("status") if isinstance(status, dict) else None
            if state == "completed":
                return
            if state == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"migration did not complete: {status}")
            time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            self.command("quit")
        self.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
