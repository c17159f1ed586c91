"""Disk-image read speed: vmforensics vs libyal bindings vs dissect.hypervisor vs qemu vs the raw file.

    python benchmarks/images.py [--size 2048] [--random 20000] [--repeat 3] [--workdir DIR] [--formats qcow2,vhdx]

Builds (once; kept in --workdir) a raw disk of the given size in MiB -- half incompressible data,
a quarter compressible text, a quarter holes, in 1 MiB pieces -- and converts it with qemu-img to
a monolithicSparse VMDK, a streamOptimized VMDK, a dynamic VHDX, a dynamic and a fixed VHD, a
qcow2 and a zlib-compressed qcow2 (qemu-img convert -c), a dynamic and a static VDI, a Parallels
expanding image, a QED and a qcow (version 1) image; an Apple ASIF image (which qemu cannot
write) is laid out by tests/images/asif_builders.py. Each reader then reads the whole disk
sequentially in 4 MiB requests and makes N random 4 KiB reads (same offsets for all), best of
--repeat runs. The files sit in the page cache after the first pass, so this measures the readers'
CPU cost. Each reader runs in a process of its own: the C allocator's state left by one reader
(glibc raises its mmap and trim thresholds after large frees) changed another's sequential figure
by up to 10x when they shared one. Readers that are not installed (pyvmdk, pyvhdi, pyqcow,
dissect.hypervisor) are reported as skipped, and so is a reader whose bytes differ from the raw
file's. qemu's own figure is ``qemu-img bench`` (sequential 4 MiB reads through QEMU's block
layer, one in flight; no random figure). Ratios are vmforensics / other.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmforensics.images import open_image

MiB = 1 << 20
CHUNK = 4 * MiB
Read = Callable[[int, int], bytes]

#: name -> (qemu-img format, qemu-img -o options, vmforensics module, libyal module)
FORMATS = {
    "vmdk-sparse": ("vmdk", "subformat=monolithicSparse", "vmdk", "pyvmdk"),
    "vmdk-stream": ("vmdk", "subformat=streamOptimized", "vmdk", "pyvmdk"),
    "vhdx": ("vhdx", "subformat=dynamic", "vhdx", "pyvhdi"),
    "vhd-dynamic": ("vpc", "subformat=dynamic,force_size=on", "vhd", "pyvhdi"),
    "vhd-fixed": ("vpc", "subformat=fixed,force_size=on", "vhd", "pyvhdi"),
    "qcow2": ("qcow2", "", "qcow2", "pyqcow"),
    "qcow2-zlib": ("qcow2", "compression_type=zlib", "qcow2", "pyqcow"),  # converted with -c
    "vdi": ("vdi", "", "vdi", None),
    "vdi-static": ("vdi", "static=on", "vdi", None),
    "parallels": ("parallels", "", "parallels", None),
    "qed": ("qed", "", "qed", None),
    "qcow1": ("qcow", "", "qcow1", "pyqcow"),
    "asif": (None, "", "asif", None),  # built from the public layout, not by qemu-img
}


def build_raw(path: Path, size: int) -> None:
    rng = random.Random(42)
    text = b"".join(f"line {i} of a log file that compresses well\n".encode() for i in range(30000))[:MiB]
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.truncate(size)
        for start in range(0, size, MiB):
            pick = rng.random()
            if pick < 0.5:
                f.seek(start)
                f.write(rng.randbytes(MiB))
            elif pick < 0.75:
                f.seek(start)
                f.write(text)
    partial.rename(path)


def build_images(workdir: Path, size_mib: int, names: list[str]) -> tuple[Path, dict[str, Path]]:
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"disk-{size_mib}M.raw"
    if not raw.exists():
        print(f"building {raw} ...", file=sys.stderr)
        build_raw(raw, size_mib * MiB)
    images = {}
    for name in names:
        qemu_fmt, options, _, _ = FORMATS[name]
        image = workdir / f"disk-{size_mib}M.{name}"
        if not image.exists():
            print(f"building {image} ...", file=sys.stderr)
            partial = image.with_name(image.name + ".partial")
            if qemu_fmt is None:
                build_asif_image(raw, partial)
                partial.rename(image)
                images[name] = image
                continue
            command = ["qemu-img", "convert", "-O", qemu_fmt, *(["-o", options] if options else [])]
            if name.endswith("-zlib"):
                command.append("-c")
            subprocess.run([*command, str(raw), str(partial)], check=True)
            partial.rename(image)
        images[name] = image
    return raw, images


class _RawChunks(Mapping[int, bytes]):
    """The raw disk's non-zero 1 MiB chunks, read when the ASIF builder asks for one."""

    def __init__(self, raw: Path):
        self.raw = raw
        with raw.open("rb") as f:
            self.keys = [
                i for i, piece in enumerate(iter(lambda: f.read(MiB), b"")) if piece.count(0) != len(piece)
            ]

    def __getitem__(self, index: int) -> bytes:
        with self.raw.open("rb") as f:
            f.seek(index * MiB)
            return f.read(MiB)

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def build_asif_image(raw: Path, out: Path) -> None:
    from tests.images.asif_builders import build_asif

    build_asif(out, raw.stat().st_size, _RawChunks(raw))


# --- readers: each returns (read_at, close) or raises to be reported as skipped ----------------


def open_ours(name: str, path: Path) -> tuple[Read, Callable[[], None]]:
    module = FORMATS[name][2]
    if importlib.util.find_spec(f"vmforensics.images.{module}") is None:
        raise RuntimeError(f"vmforensics.images.{module} not present yet")
    disk = open_image(path)
    return disk.read_at, disk.close


def open_libyal(name: str, path: Path) -> tuple[Read, Callable[[], None]]:
    if FORMATS[name][3] is None:
        raise RuntimeError("no libyal reader for this format")
    module = importlib.import_module(FORMATS[name][3])
    handle: Any = module.handle() if hasattr(module, "handle") else module.file()
    handle.open(str(path))
    if hasattr(handle, "open_extent_data_files"):
        handle.open_extent_data_files()
    return (lambda offset, length: handle.read_buffer_at_offset(length, offset)), handle.close


def open_dissect(name: str, path: Path) -> tuple[Read, Callable[[], None]]:
    fh = path.open("rb")
    if name.startswith("vmdk"):
        from dissect.hypervisor.disk.vmdk import VMDK

        stream: Any = VMDK(fh)
    elif name == "vhdx":
        from dissect.hypervisor.disk.vhdx import VHDX

        stream = VHDX(fh)
    elif name.startswith("vhd-"):
        from dissect.hypervisor.disk.vhd import VHD

        stream = VHD(fh)
    elif name.startswith("vdi"):
        from dissect.hypervisor.disk.vdi import VDI

        stream = VDI(fh).open()
    elif name == "parallels":
        from dissect.hypervisor.disk.hdd import HDS

        stream = HDS(fh)
    elif name == "asif":
        from dissect.hypervisor.disk.asif import ASIF

        stream = ASIF(fh).open()
    elif name.startswith("qcow2"):
        from dissect.hypervisor.disk.qcow2 import QCow2

        stream = QCow2(fh).open()
    else:
        fh.close()
        raise RuntimeError("dissect.hypervisor has no reader for this format")

    def read_at(offset: int, length: int) -> bytes:
        stream.seek(offset)
        return stream.read(length)

    return read_at, fh.close


def open_raw(path: Path) -> tuple[Read, Callable[[], None]]:
    fd = os.open(path, os.O_RDONLY)
    return (lambda offset, length: os.pread(fd, length, offset)), (lambda: os.close(fd))


# --- measuring --------------------------------------------------------------------------------


def sequential(read: Read, size: int) -> float:
    """MB/s reading the whole disk in 4 MiB requests."""
    began = time.perf_counter()
    for offset in range(0, size, CHUNK):
        read(offset, min(CHUNK, size - offset))
    return size / (time.perf_counter() - began) / 1e6


def random_reads(read: Read, offsets: list[int]) -> float:
    """4 KiB reads per second at the given offsets."""
    began = time.perf_counter()
    for offset in offsets:
        read(offset, 4096)
    return len(offsets) / (time.perf_counter() - began)


def check_sample(read: Read, reference: Read, size: int) -> None:
    """A reader that returns wrong bytes must not win a speed contest."""
    rng = random.Random(11)
    samples = [(0, 65536), (size - 4096, 4096), *((rng.randrange(0, size - 65536), 65536) for _ in range(20))]
    samples += [
        (offset, CHUNK) for offset in range(0, size - CHUNK + 1, max(CHUNK, size // 8 // CHUNK * CHUNK))
    ]
    for offset, length in samples:  # the sequential requests' size too: some readers err only there
        length = min(length, size - offset)
        if read(offset, length) != reference(offset, length):
            raise RuntimeError(f"returned different bytes than the raw file at offset {offset} (+{length})")


def measure(
    opener: Callable[[], tuple[Read, Callable[[], None]]],
    reference: Read,
    size: int,
    offsets: list[int],
    repeat: int,
) -> tuple[float, float]:
    """Best of ``repeat`` runs (the machine is shared: the best run is the least disturbed one)."""
    read, close = opener()
    try:
        check_sample(read, reference, size)
        return (
            max(sequential(read, size) for _ in range(repeat)),
            max(random_reads(read, offsets) for _ in range(repeat)),
        )
    finally:
        close()


def qemu_bench(name: str, image: Path, size: int, repeat: int) -> float | str:
    """MB/s of ``qemu-img bench``: sequential 4 MiB reads, one in flight, best of ``repeat``."""
    qemu_fmt = FORMATS[name][0]
    if qemu_fmt is None:
        return "skipped: qemu has no reader for this format"
    count = size // CHUNK
    best = 0.0
    for _ in range(repeat):
        done = subprocess.run(
            [
                "qemu-img",
                "bench",
                "-f",
                qemu_fmt,
                "-c",
                str(count),
                "-s",
                "4M",
                "-S",
                "4M",
                "-d",
                "1",
                str(image),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return f"skipped: qemu-img bench exit {done.returncode}: {done.stderr.strip()[-200:]}"
        seconds = float(done.stdout.split("Run completed in ")[1].split()[0])
        best = max(best, count * CHUNK / seconds / 1e6)
    return best


READERS = {
    "vmforensics": open_ours,
    "libyal": open_libyal,
    "dissect.hypervisor": open_dissect,
}


def measure_here(args: argparse.Namespace, size: int, offsets: list[int]) -> dict[str, Any]:
    """One reader on one format (or the raw file), in this process; the result as JSON-able dict."""
    name, reader = args.measure
    raw_read, raw_close = open_raw(args.workdir / f"disk-{args.size}M.raw")
    try:
        if name == "raw":
            sequential(raw_read, size)  # warm the page cache
            seq = max(sequential(raw_read, size) for _ in range(args.repeat))
            return {"seq": seq, "rand": max(random_reads(raw_read, offsets) for _ in range(args.repeat))}
        image = args.workdir / f"disk-{args.size}M.{name}"
        warm, done = open_raw(image)  # bring the image file into the page cache
        sequential(warm, image.stat().st_size)
        done()
        seq, rand = measure(lambda: READERS[reader](name, image), raw_read, size, offsets, args.repeat)
        return {"seq": seq, "rand": rand}
    except Exception as exc:  # a missing or failing reader is reported, not fatal
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    finally:
        raw_close()


def measure_apart(args: argparse.Namespace, name: str, reader: str) -> tuple[float, float] | str:
    """Run :func:`measure_here` in a fresh interpreter, so no reader inherits another's heap."""
    command = [
        sys.executable,
        __file__,
        f"--size={args.size}",
        f"--random={args.random}",
        f"--repeat={args.repeat}",
        f"--workdir={args.workdir}",
        "--measure",
        name,
        reader,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return f"skipped: exit {done.returncode}: {done.stderr.strip()[-300:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return result["seq"], result["rand"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="virtual disk size in MiB (default 2048)")
    parser.add_argument(
        "--random", type=int, default=20000, help="number of random 4 KiB reads (default 20000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vmforensics-bench-images",
        help="where the images are built once and kept",
    )
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help=f"comma-separated, of: {', '.join(FORMATS)}"
    )
    parser.add_argument("--measure", nargs=2, metavar=("FORMAT", "READER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size * MiB
    rng = random.Random(7)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(args.random)]
    if args.measure:
        print(json.dumps(measure_here(args, size, offsets)))
        return
    names = [n for n in args.formats.split(",") if n]
    unknown = set(names) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats: {', '.join(sorted(unknown))}")

    build_images(args.workdir, args.size, names)
    raw = measure_apart(args, "raw", "os.pread")
    if isinstance(raw, str):
        raise SystemExit(f"the raw file could not be read: {raw}")
    raw_seq, raw_rand = raw

    print(
        f"\n{args.size} MiB disk, sequential 4 MiB reads (MB/s) and {args.random} random 4 KiB reads (/s), "
        f"best of {args.repeat}, each reader in its own process"
    )
    print(
        f"{'format':<12} {'reader':<20} {'seq MB/s':>9} {'rand/s':>9} {'ours/it seq':>12} {'ours/it rand':>13}"
    )
    print(f"{'raw file':<12} {'os.pread':<20} {raw_seq:>9.0f} {raw_rand:>9.0f}")
    for name in names:
        results = {reader: measure_apart(args, name, reader) for reader in READERS}
        ours = results["vmforensics"]
        for reader, result in results.items():
            label = (FORMATS[name][3] or "libyal") if reader == "libyal" else reader
            if isinstance(result, str):
                print(f"{name:<12} {label:<20} {result}")
                continue
            seq, rand = result
            ratios = ""
            if reader != "vmforensics" and not isinstance(ours, str):
                ratios = f"{ours[0] / seq:>11.2f}x {ours[1] / rand:>12.2f}x"
            print(f"{name:<12} {label:<20} {seq:>9.0f} {rand:>9.0f} {ratios}", flush=True)
        bench = qemu_bench(name, args.workdir / f"disk-{args.size}M.{name}", size, args.repeat)
        if isinstance(bench, str):
            print(f"{name:<12} {'qemu-img bench':<20} {bench}")
        else:
            ratio = f"{ours[0] / bench:>11.2f}x" if not isinstance(ours, str) else ""
            print(f"{name:<12} {'qemu-img bench':<20} {bench:>9.0f} {'-':>9} {ratio}", flush=True)
        if not isinstance(ours, str):
            print(
                f"{name:<12} {'(vs raw file)':<20} {'':>9} {'':>9} {ours[0] / raw_seq:>11.2f}x {ours[1] / raw_rand:>12.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
