"""Memory-image conversion: throughput and peak RSS, with reference tools in the same run.

Cases (files built here, in a temporary folder on the same file system):
- VMware: a .vmss + a .vmem of --vmem-mib MiB (random pages). Converted to raw and ELF, against
  ``cp`` of the .vmem (the same bytes) and Volatility 3's VMware layer reading every page.
- QEMU: a QEVM stream of a --qevm-gib GiB guest with --data-percent of its pages stored (the rest
  zero pages), converted to raw and ELF, against ``cp`` of the stream.
- Large: a QEVM stream of a --large-gib GiB guest, almost all zero pages: open + ELF conversion,
  to show the index stays small (peak RSS) whatever the guest size.
- Fragmented: a QEVM stream of a --fragmented-gib GiB guest, every 4th page stored: open only
  (the index's peak RSS and its cost per run: it grows with the number of runs), then raw; and
  the same stream with every --resend-every-th page sent again at its end (a live save).

Each conversion is also set against ``cp`` of its own output (the same bytes, holes kept, synced):
the disk-speed floor for writing that image.

Each conversion runs in a child process so that its peak RSS (ru_maxrss) is its own. Files live
in the page cache after the first read, so these are in-memory speeds; ratios within one run are
what to compare.

    .venv/bin/python benchmarks/memory.py --vmem-mib 1024 --qevm-gib 4 --large-gib 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE = 4096
CHILD = """
import json, resource, sys, time
from vmforensics.memory import convert, open_memory
source, out, fmt = sys.argv[1:4]
began = time.perf_counter()
with open_memory(source) as memory:
    opened = time.perf_counter() - began
    result = convert(memory, out, fmt, progress=False)
print(json.dumps({"open": opened, "seconds": time.perf_counter() - began, "size": result.size,
                  "stored": result.stored, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
INDEX_CHILD = """
import json, resource, sys, time
from vmforensics.memory import open_memory
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
before = peak()
began = time.perf_counter()
with open_memory(sys.argv[1]) as memory:
    runs = len(memory.extents)
print(json.dumps({"seconds": time.perf_counter() - began, "runs": runs, "grown_mib": peak() - before,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
VOLATILITY = """
import json, resource, sys, time
from volatility3.framework import contexts
from volatility3.framework.layers import physical, vmware
vmem = sys.argv[1]
context = contexts.Context()
context.config["base.location"] = "file://" + vmem
context.layers.add_layer(physical.FileLayer(context, "base", "base"))
began = time.perf_counter()
layer = vmware.VmwareStacker.stack(context, "base")
total = 0
for start, _mapped, length, _ in layer._segments:
    for address in range(start, start + length, 1 << 20):
        total += len(layer.read(address, min(1 << 20, start + length - address)))
print(json.dumps({"seconds": time.perf_counter() - began, "bytes": total,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_cp(source: Path, target: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    os.sync()
    seconds = time.perf_counter() - began
    target.unlink()
    return seconds


def output_floor(path: Path) -> str:
    """``cp`` of a converted image (holes kept, synced): writing the same bytes at disk speed."""
    return f"cp of that output {timed_cp(path, path.with_name(path.name + '.copy')):.2f} s"


def timed_sha256(path: Path) -> float:
    """openssl hashing the converted image: the same bytes our converter hashes as it writes."""
    began = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def build_vmware(folder: Path, mib: int) -> Path:
    from tests.memory import builders as b
    from vmforensics.memory.vmware_layout import MAGICS

    pages = mib * 256
    low = pages // 2
    regions = ((0, 0, low), (0x100000, low, pages - low))
    state = folder / "bench.vmss"
    state.write_bytes(b.vmware_state(MAGICS[2], [("memory", b.regions_tags(regions))]))
    with (folder / "bench.vmem").open("wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(mib):
            handle.write(block)
    return state


def build_qevm(path: Path, guest_bytes: int, data_percent: int, resend_every: int = 0) -> int:
    """A QEVM stream of one pc.ram block: every page sent, ``data_percent`` of them stored; with
    ``resend_every``, every such page is sent again afterwards (as a live save resends dirty pages)."""
    with path.open("wb") as out:
        machine = b"pc-i440fx-7.2"
        out.write(b"QEVM" + struct.pack(">I", 3) + b"\x07" + struct.pack(">I", len(machine)) + machine)
        out.write(b"\x01" + struct.pack(">I", 2) + b"\x03ram" + struct.pack(">II", 0, 4))
        out.write(struct.pack(">Q", guest_bytes | 0x04) + b"\x06pc.ram" + struct.pack(">Q", guest_bytes))
        out.write(struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2))
        out.write(b"\x02" + struct.pack(">I", 2))
        page = bytes(range(256)) * 16
        stored = 0
        parts: list[bytes] = []
        every = max(1, round(100 / data_percent)) if data_percent else 0
        for number in range(guest_bytes // PAGE):
            flags = 0x20 if number else 0
            name = b"" if number else b"\x06pc.ram"
            if every and number % every == 0:
                parts.append(struct.pack(">Q", number * PAGE | 0x08 | flags) + name + page)
                stored += PAGE
            else:
                parts.append(struct.pack(">Q", number * PAGE | 0x02 | flags) + name + b"\0")
            if len(parts) >= 4096:
                out.write(b"".join(parts))
                parts.clear()
        out.write(b"".join(parts))
        parts.clear()
        for number in range(0, guest_bytes // PAGE, resend_every or guest_bytes):
            parts.append(struct.pack(">Q", number * PAGE | 0x08 | 0x20) + page)
            if len(parts) >= 4096:
                out.write(b"".join(parts))
                parts.clear()
        out.write(b"".join(parts))
        out.write(struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2))
        out.write(
            b"\x03"
            + struct.pack(">I", 2)
            + struct.pack(">Q", 0x10)
            + b"\x7e"
            + struct.pack(">I", 2)
            + b"\x00"
        )
    return stored


def report(name: str, result: dict, reference: float | None, label: str) -> None:
    rate = result["stored"] / result["seconds"] / 2**20
    line = f"  {name:<22} {result['seconds']:7.2f} s  {rate:8.0f} MiB/s of stored pages  peak RSS {result['rss_mib']:6.0f} MiB"
    if reference:
        line += f"  ({result['seconds'] / reference:.2f}x {label})"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vmem-mib", type=int, default=1024)
    parser.add_argument("--qevm-gib", type=int, default=4)
    parser.add_argument("--data-percent", type=int, default=25)
    parser.add_argument("--large-gib", type=int, default=64)
    parser.add_argument("--fragmented-gib", type=int, default=8)
    parser.add_argument("--resend-every", type=int, default=64)
    parser.add_argument("--workdir", help="where to build the files (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="vmf-membench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        state = build_vmware(folder, args.vmem_mib)
        vmem = folder / "bench.vmem"
        subprocess.run(["cat", str(vmem)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        cp = timed_cp(vmem, folder / "copy.vmem")
        print(f"VMware .vmss + {args.vmem_mib} MiB .vmem")
        print(f"  {'cp of the .vmem':<22} {cp:7.2f} s  {args.vmem_mib / cp:8.0f} MiB/s")
        for fmt in ("raw", "elf"):
            result = run_child(CHILD, str(state), str(folder / f"vmware.{fmt}"), fmt)
            report(f"convert to {fmt}", result, cp, "cp")
            hashed = timed_sha256(folder / f"vmware.{fmt}")
            print(
                f"  {'':<22} (openssl sha256 of that output alone: {hashed:.2f} s; ours {result['seconds'] / hashed:.2f}x;"
                f" {output_floor(folder / f'vmware.{fmt}')})"
            )
            (folder / f"vmware.{fmt}").unlink()
        try:
            vol = run_child(VOLATILITY, str(vmem))
            print(
                f"  {'Volatility VMware layer':<22} {vol['seconds']:7.2f} s  "
                f"{vol['bytes'] / vol['seconds'] / 2**20:8.0f} MiB/s of stored pages  peak RSS {vol['rss_mib']:6.0f} MiB"
            )
        except subprocess.CalledProcessError as exc:
            print(f"  Volatility not run: {exc.stderr.strip()[-200:]}")

        stream = folder / "bench.qevm"
        stored = build_qevm(stream, args.qevm_gib << 30, args.data_percent)
        cp = timed_cp(stream, folder / "copy.qevm")
        print(
            f"QEMU stream of a {args.qevm_gib} GiB guest, {stored >> 20} MiB stored ({stream.stat().st_size >> 20} MiB stream)"
        )
        print(f"  {'cp of the stream':<22} {cp:7.2f} s  {stream.stat().st_size / cp / 2**20:8.0f} MiB/s")
        for fmt in ("raw", "elf"):
            result = run_child(CHILD, str(stream), str(folder / f"qemu.{fmt}"), fmt)
            report(f"convert to {fmt}", result, cp, "cp")
            hashed = timed_sha256(folder / f"qemu.{fmt}")
            print(
                f"  {'':<22} (open/index {result['open']:.2f} s; openssl sha256 of that output alone: "
                f"{hashed:.2f} s; ours {result['seconds'] / hashed:.2f}x; {output_floor(folder / f'qemu.{fmt}')})"
            )
            (folder / f"qemu.{fmt}").unlink()
        stream.unlink()

        large = folder / "large.qevm"
        build_qevm(large, args.large_gib << 30, 0)
        result = run_child(CHILD, str(large), str(folder / "large.elf"), "elf")
        print(
            f"QEMU stream of a {args.large_gib} GiB guest, all zero pages ({large.stat().st_size >> 20} MiB stream)"
        )
        print(
            f"  open/index {result['open']:.2f} s, ELF {result['size']} bytes in {result['seconds']:.2f} s, peak RSS {result['rss_mib']:.0f} MiB"
        )
        (folder / "large.elf").unlink()  # a --workdir can be used again (outputs are never overwritten)
        large.unlink()

        fragmented = folder / "fragmented.qevm"
        build_qevm(fragmented, args.fragmented_gib << 30, 25)
        result = run_child(INDEX_CHILD, str(fragmented))
        print(f"QEMU stream of a {args.fragmented_gib} GiB guest, every 4th page stored")
        print(
            f"  open/index only: {result['runs']} stored runs in {result['seconds']:.2f} s, peak RSS "
            f"{result['rss_mib']:.0f} MiB ({result['grown_mib'] * 2**20 / result['runs']:.0f} bytes a run "
            "above the interpreter's)"
        )
        result = run_child(CHILD, str(fragmented), str(folder / "fragmented.raw"), "raw")
        report("convert to raw", result, None, "")
        print(f"  {'':<22} ({output_floor(folder / 'fragmented.raw')})")
        (folder / "fragmented.raw").unlink()
        fragmented.unlink()

        resent = folder / "resent.qevm"
        build_qevm(resent, args.fragmented_gib << 30, 25, resend_every=args.resend_every)
        result = run_child(INDEX_CHILD, str(resent))
        print(
            f"the same guest with every {args.resend_every}th page sent again afterwards (a live save): "
            f"open/index only: {result['runs']} stored runs in {result['seconds']:.2f} s, "
            f"peak RSS {result['rss_mib']:.0f} MiB"
        )
        resent.unlink()
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
