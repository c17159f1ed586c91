"""Block-device disks (LVM-thin, ZFS, mapped RBD) over SSH against the OpenSSH client, same run.

    python benchmarks/qemu_blockdev.py [--size-mib 512] [--rounds 3]   (needs root: losetup)

A loop device over a random file stands in for a logical volume. Measured in interleaved rounds
(medians; the machine is shared):
  reference  `ssh host dd if=DEV bs=4M | openssl dgst -sha256`  (what a careful examiner types)
  ours       copy_file through BlockDeviceTransport (dd on a paramiko exec channel, hash + write)
  ours       the same bytes as a regular file through the SSH transport's chosen plane (copy_file)
Every digest is checked against hashlib over the backing file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.transport.sshd import SSHServer
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.hypervisors.qemu.blockdev import BlockDeviceTransport
from vmforensics.hypervisors.qemu.host import QemuHost

MiB = 1 << 20


def copy_seconds(transport, path: str, expected: str, scratch: Path) -> float:
    case = Path(tempfile.mkdtemp(dir=scratch))
    started = time.perf_counter()
    record = copy_file(transport, path, EvidenceDirectory(case / "case"), "disk.raw")
    elapsed = time.perf_counter() - started
    if record.hashes["sha256"] != expected:
        raise SystemExit(f"WRONG DIGEST for {path}")
    subprocess.run(["rm", "-rf", str(case)], check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    scratch = Path(tempfile.mkdtemp(prefix="vmf-bench-blk-"))
    backing = scratch / "lv.img"
    digest = hashlib.sha256()
    with backing.open("wb") as f:
        for _ in range(args.size_mib):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            f.write(chunk)
    want = digest.hexdigest()
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    results: dict[str, list[float]] = {}
    try:
        with SSHServer(scratch / "sshd") as server:
            options = {"identity": server.client_key, "known_hosts": server.known_hosts}
            host = QemuHost(server.host, user=server.user, port=server.port, ssh_options=options)
            blocks = BlockDeviceTransport(host, {device: host.block_size(device)})
            ssh = [
                "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
                "-i", str(server.client_key), "-p", str(server.port), f"{server.user}@{server.host}",
            ]  # fmt: skip
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds}", file=sys.stderr)
                started = time.perf_counter()
                done = subprocess.run(
                    " ".join([*ssh, f"dd if={device} bs=4M status=none", "| openssl dgst -sha256"]),
                    shell=True, check=True, capture_output=True,
                )  # fmt: skip
                results.setdefault("ref: ssh dd | openssl dgst", []).append(time.perf_counter() - started)
                if done.stdout.split()[-1].decode() != want:
                    raise SystemExit("WRONG DIGEST from the reference")
                results.setdefault("ours: block device (dd, exec channel), copy_file", []).append(
                    copy_seconds(blocks, device, want, scratch)
                )
                results.setdefault("ours: same bytes as a file, copy_file", []).append(
                    copy_seconds(host.files, str(backing), want, scratch)
                )
            host.close()
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        subprocess.run(["rm", "-rf", str(scratch)], check=True)
    print(f"\nblock device over SSH, {args.size_mib} MiB, {args.rounds} rounds (MB/s, median [min-max])")
    rates = {name: [size / s / 1e6 for s in values] for name, values in results.items()}
    for name, values in rates.items():
        print(f"  {name:52s} {statistics.median(values):7.0f}  [{min(values):.0f}-{max(values):.0f}]")
    reference = statistics.median(rates["ref: ssh dd | openssl dgst"])
    for name, values in rates.items():
        if not name.startswith("ref"):
            print(f"  {name:52s} {statistics.median(values) / reference:5.2f}x the reference")


if __name__ == "__main__":
    main()
