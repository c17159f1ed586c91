"""Mutation fuzzing of every image and saved-memory reader, beside the hypothesis suites.

    python benchmarks/fuzz_images.py [--cases 100000] [--seed 1] [--workers 2] [--json OUT]
    python benchmarks/fuzz_images.py --seed 1 --replay CASE   # one case again, in this process

Small valid seeds of every format are built with qemu-img/qemu-io and the tests' independent
builders (VMDK sparse, streamOptimized, twoGbMaxExtentSparse, monolithicFlat, COWD, SESparse;
qcow2 v2, v3 zlib, zstd, extended L2, backing; VHD fixed, dynamic, differencing; VHDX dynamic,
differencing, dirty log; VDI normal and differencing; QED with and without backing; Parallels
image and .hdd bundle; qcow1 plain and compressed; ASIF; VMware .vmss + .vmem and old .vmsn, QEMU
migration stream (paused, live and mapped-ram), libvirt save, ELF core, LiME, Hyper-V .vmrs). Each case copies one seed, applies one mutation
(bit flips, a field set to an extreme, a truncation, a splice, a descriptor token replaced) and,
usually, fixes the checksums that cover what changed (VHD footer/dynamic header, VHDX CRC-32C),
then writes its files into a fresh folder on tmpfs and opens, describes, walks the extents and
reads it (``open_image``, or ``open_memory`` and a digest for saved states) in a worker process
under a time limit. A case passes when it ends normally or with a VMForensicsError, within 2 s,
with its peak memory (VmHWM, reset before each case) under 64 MiB above the worker's baseline.
Cases are reproducible from ``--seed`` and the case number.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import google_crc32c

from vmforensics.errors import VMForensicsError
from vmforensics.images.open import open_image
from vmforensics.memory import digest, open_memory

KiB, MiB = 1024, 1 << 20
TIME_LIMIT = 2.0
MEMORY_LIMIT = 64 * MiB
EXTREMES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1,
            (1 << 64) - 1, 512, 4096, 1 << 20)  # fmt: skip
HOSTILE_NAMES = ('"../../etc/passwd"', '"/dev/zero"', '"a' + "b" * 5000 + '"', '"\xff\xfe"', '""', '"x.vmdk"')


class Seed(NamedTuple):
    name: str
    entry: str  # the file open_image (or open_memory) is given
    files: dict[str, bytes]  # every file of the image, by name
    checksums: tuple[tuple[str, str, int, int], ...]  # (file, kind, offset, length)
    memory: bool = False  # a saved memory state, not a disk image


# --- seeds ------------------------------------------------------------------------------------


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def _qemu_image(work: Path, name: str, fmt: str, size: str, *options: str, writes: bool = True) -> Path:
    path = work / name
    _run("qemu-img", "create", "-q", "-f", fmt, *options, path, size)
    if writes:
        _run("qemu-io", "-f", fmt, "-c", "write -P 0x41 0 64k", "-c", "write -P 0x42 1M 8k", "-c",
             "write -z 2M 64k", path)  # fmt: skip
    return path


def _converted(work: Path, name: str, fmt: str, *options: str, compress: bool = False) -> Path:
    raw = _qemu_image(work, f"{name}.src.qcow2", "qcow2", "4M")
    out = work / name
    _run("qemu-img", "convert", "-q", "-O", fmt, *(["-c"] if compress else []), *options, raw, out)
    return out


def _vhd_checksums(name: str, blob: bytes) -> list[tuple[str, str, int, int]]:
    found = [(name, "vhd", len(blob) - 512, 512)]
    if blob.startswith(b"conectix"):
        found += [(name, "vhd", 0, 512), (name, "vhd-dynamic", 512, 1024)]
    return found


def _vhdx_checksums(name: str, blob: bytes) -> list[tuple[str, str, int, int]]:
    found = [(name, "crc", at, 4 * KiB) for at in (64 * KiB, 128 * KiB)]
    found += [(name, "crc", at, 64 * KiB) for at in (192 * KiB, 256 * KiB)]
    log_offset = struct.unpack_from("<Q", blob, 64 * KiB + 72)[0]
    at = 0
    while log_offset and blob[log_offset + at : log_offset + at + 4] == b"loge":
        length = struct.unpack_from("<I", blob, log_offset + at + 8)[0]
        found.append((name, "crc", log_offset + at, length))
        at += length
    return found


def build_seeds(work: Path) -> list[Seed]:
    """Small valid images of every format, read from ``work`` into memory."""
    from tests.images.vhd_builders import build_differencing_vhd
    from tests.images.vhdx_builders import (
        FULLY_PRESENT,
        VhdxBuilder,
        active_data_write_guid,
        build_dirty_vhdx,
    )
    from tests.images.vmdk_builders import build_cowd, build_sesparse, write_descriptor

    seeds: list[Seed] = []

    def add(
        name: str, entry: Path, *others: Path, checksums: list | None = None, memory: bool = False
    ) -> None:
        files = {p.name: p.read_bytes() for p in (entry, *others)}
        seeds.append(Seed(name, entry.name, files, tuple(checksums or ()), memory))

    for sub in ("monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", "monolithicFlat"):
        path = _converted(work, f"{sub}.vmdk", "vmdk", "-o", f"subformat={sub}")
        extents = sorted(p for p in work.iterdir() if p.name.startswith(f"{sub}-") and p.suffix == ".vmdk")
        add(f"vmdk-{sub}", path, *extents)
    cowd = build_cowd(work / "cowd-delta.vmdk", 4 * MiB, 16, {0: b"\x11" * 8192, 100: b"\x22" * 8192})
    add("vmdk-cowd", write_descriptor(work / "cowd.vmdk", ['RW 8192 VMFSSPARSE "cowd-delta.vmdk"'],
                                      create_type="vmfsSparse"), cowd)  # fmt: skip
    ses = build_sesparse(work / "ses-sesparse.vmdk", 4 * MiB, {0: b"\x33" * 4096, 77: b"\x44" * 4096})
    add("vmdk-sesparse", write_descriptor(work / "ses.vmdk", ['RW 8192 SESPARSE "ses-sesparse.vmdk"'],
                                          create_type="seSparse"), ses)  # fmt: skip
    add("qcow2-v2", _qemu_image(work, "v2.qcow2", "qcow2", "4M", "-o", "compat=0.10"))
    add("qcow2-v3-zlib", _converted(work, "zlib.qcow2", "qcow2", compress=True))
    add(
        "qcow2-v3-zstd", _converted(work, "zstd.qcow2", "qcow2", "-o", "compression_type=zstd", compress=True)
    )
    add(
        "qcow2-extended-l2",
        _qemu_image(work, "ext.qcow2", "qcow2", "4M", "-o", "extended_l2=on,cluster_size=64k"),
    )
    base = _qemu_image(work, "base.qcow2", "qcow2", "4M")
    top = _qemu_image(work, "top.qcow2", "qcow2", "4M", "-b", "base.qcow2", "-F", "qcow2", writes=False)
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 512k 4k", top)
    add("qcow2-backing", top, base)
    fixed = _converted(work, "fixed.vhd", "vpc", "-o", "subformat=fixed")
    add("vhd-fixed", fixed, checksums=[("fixed.vhd", "vhd", fixed.stat().st_size - 512, 512)])
    dynamic = _converted(work, "dynamic.vhd", "vpc", "-o", "subformat=dynamic")
    add("vhd-dynamic", dynamic, checksums=_vhd_checksums("dynamic.vhd", dynamic.read_bytes()))
    child = work / "child.vhd"
    build_differencing_vhd(child, dynamic, {0: b"\x01" * 512, 1 << 20: b"\x02" * 4096})
    add("vhd-differencing", child, dynamic, checksums=_vhd_checksums("child.vhd", child.read_bytes()))
    vhdx = _converted(work, "dynamic.vhdx", "vhdx", "-o", "subformat=dynamic")
    add("vhdx-dynamic", vhdx, checksums=_vhdx_checksums("dynamic.vhdx", vhdx.read_bytes()))
    parent = work / "parent.vhdx"
    builder = VhdxBuilder(4 * MiB)
    builder.set_block(0, FULLY_PRESENT, b"\x61" * MiB)
    builder.build(parent)
    diff = VhdxBuilder(4 * MiB)
    diff.locator = {
        "parent_linkage": f"{{{active_data_write_guid(parent)}}}",
        "relative_path": ".\\parent.vhdx",
    }
    diff.write_sectors({0: b"\x62" * 512, 3 * MiB: b"\x63" * 4096})
    avhdx = work / "child.avhdx"
    diff.build(avhdx)
    add("vhdx-differencing", avhdx, parent, checksums=_vhdx_checksums("child.avhdx", avhdx.read_bytes()))
    dirty, _ = build_dirty_vhdx(work / "dirty.vhdx")
    add("vhdx-dirty-log", dirty, checksums=_vhdx_checksums("dirty.vhdx", dirty.read_bytes()))
    _newer_format_seeds(work, add)
    _memory_seeds(work, add)
    for seed in seeds:  # every seed must open as it is, or the fuzzing proves nothing
        why: list[str] = []
        outcome = exercise(seed, seed.files, work / "check", why)
        if outcome != "ok":
            raise SystemExit(f"seed {seed.name} does not open cleanly: {outcome} ({'; '.join(why)})")
    return seeds


def _newer_format_seeds(work: Path, add) -> None:
    """VDI, QED, Parallels, qcow1 and ASIF seeds (qemu-img where it writes the format)."""
    import uuid

    from tests.images.asif_builders import build_asif
    from tests.images.parallels_builders import NULL, descriptor
    from tests.images.vdi_builders import ZERO, build_vdi, header_of
    from vmforensics.images import parallels_layout, vdi_layout

    vdi = _converted(work, "normal.vdi", "vdi")
    add("vdi", vdi)
    parent = work / "parent.vdi"
    shutil.copyfile(vdi, parent)
    h = header_of(parent)
    child = work / "child.vdi"
    build_vdi(child, h.disk_size, {0: b"\x11" * 4096, 2: ZERO}, image_type=vdi_layout.ImageType.DIFF,
              uuid_linkage=h.uuid_create, uuid_parent_modify=h.uuid_modify)  # fmt: skip
    add("vdi-differencing", child, parent)
    qed = _converted(work, "base.qed", "qed", "-o", "cluster_size=4k")
    add("qed", qed)
    top = work / "top.qed"
    _run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4k", "-b", "base.qed", "-F", "qed", top)
    _run("qemu-io", "-f", "qed", "-c", "write -P 0x45 8k 8k", top)
    add("qed-backing", top, qed)
    hds = _converted(work, "plain.hds", "parallels", "-o", "cluster_size=64k")
    add("parallels", hds)
    bundle = work / "bundle"
    bundle.mkdir()
    part = "disk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"
    shutil.copyfile(hds, bundle / part)
    (bundle / "DiskDescriptor.xml").write_text(
        descriptor(
            [(0, 8192, [(parallels_layout.DEFAULT_TOP_GUID, "Compressed", part)])],
            [(parallels_layout.DEFAULT_TOP_GUID, NULL)],
        )
    )
    add("parallels-bundle", bundle / "DiskDescriptor.xml", bundle / part)
    add("qcow1", _converted(work, "plain.qcow", "qcow"))
    compressed = work / "compressed.qcow"
    _run("qemu-img", "create", "-q", "-f", "qcow", compressed, "1M")
    _run("qemu-io", "-f", "qcow", *[a for i in range(8) for a in ("-c", f"write -c -P {i + 1} {i * 8}k 4k")],
         compressed)  # fmt: skip
    add("qcow1-compressed", compressed)
    asif = work / "d.asif"
    build_asif(asif, 8 * MiB, {0: b"a" * 4096, 3: b"b" * 4096, 200: b"z"}, chunk_size=32 * KiB,
               max_size=256 * MiB, metadata={"internal metadata": {"stable uuid": str(uuid.UUID(int=7))}})  # fmt: skip
    add("asif", asif)


def _memory_seeds(work: Path, add) -> None:
    """Saved states of every format vmforensics.memory reads."""
    from tests.interop.vmware_state import write_memory_state
    from tests.memory import builders, hyperv_builder
    from vmforensics.memory import convert, open_memory
    from vmforensics.memory.libvirt_save import HEADER, MAGIC
    from vmforensics.memory.vmware_layout import MAGICS

    page = 4096
    write_memory_state(work / "vm.vmss", work / "vm.vmem", ((0, 0, 16), (0x600, 16, 16)))
    vmem = work / "vm.vmem"  # random pages: made reproducible, so a case is replayed from its number
    vmem.write_bytes(random.Random(3).randbytes(vmem.stat().st_size))
    add("memory-vmss", work / "vm.vmss", work / "vm.vmem", memory=True)
    old = work / "old.vmsn"
    old.write_bytes(
        builders.vmware_state(
            MAGICS[0],
            [
                (
                    "memory",
                    builders.regions_tags([(0, 0, 2), (4, 2, 2)])
                    + builders.long_tag("Memory", bytes(4 * page), 0, 0, version=0),
                )
            ],
        )
    )
    add("memory-vmsn-embedded", old, memory=True)
    records = [("pc.ram", 0, b"A" * page), ("pc.ram", page, None), ("pc.ram", 2 * page, b"B" * page)]
    stream = builders.qevm([("pc.ram", 64 * page), ("pc.bios", 4 * page)], records,
                           subsections=builders.capabilities("events"),
                           description={"page_size": page, "devices": [{"name": "cpu"}]})  # fmt: skip
    (work / "vm.qevm").write_bytes(stream)
    add("memory-qevm", work / "vm.qevm", memory=True)
    (work / "live.qevm").write_bytes(builders.live_qevm())
    add("memory-qevm-live", work / "live.qevm", memory=True)
    mapped = builders.mapped_ram_qevm(
        [("pc.ram", 64 * page), ("pc.bios", 4 * page)], {("pc.ram", 1): bytes([7]) * page}
    )
    (work / "mapped.qevm").write_bytes(mapped)
    add("memory-qevm-mapped-ram", work / "mapped.qevm", memory=True)
    xml = b"<domain><name>d</name><vcpu>1</vcpu><memory unit='KiB'>256</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os></domain>\0"
    (work / "vm.save").write_bytes(HEADER.pack(MAGIC, 2, len(xml), 1, 0, 0, *([0] * 14)) + xml + stream)
    add("memory-libvirt-save", work / "vm.save", memory=True)
    with open_memory(work / "vm.vmss") as memory:
        convert(memory, work / "vm.elf", "elf", progress=False)
        convert(memory, work / "vm.lime", "lime", progress=False)
    add("memory-elf", work / "vm.elf", memory=True)
    add("memory-lime", work / "vm.lime", memory=True)
    vmrs = work / "vm.vmrs"  # openvmm's layout, built by the memory tests' independent writer
    vmrs.write_bytes(bytes(hyperv_builder.saved_state([(0, bytes(range(256)) * 4096)]).data))
    add("memory-hyperv", vmrs, memory=True)


# --- mutations --------------------------------------------------------------------------------


def mutate(seed: Seed, rng: random.Random, seeds: list[Seed]) -> tuple[dict[str, bytes], str]:
    """One mutated copy of the seed's files and a description of what was done."""
    files = dict(seed.files)
    name = rng.choice(sorted(files))
    blob = bytearray(files[name])
    kind = rng.choice(("flip", "flip", "extreme", "extreme", "truncate", "splice", "text"))
    header_span = min(len(blob), 64 * KiB) or 1

    def offset() -> int:
        if rng.random() < 0.7:
            return rng.randrange(header_span)
        return rng.randrange(len(blob)) if blob else 0

    if kind == "flip" and blob:
        spots = [offset() for _ in range(rng.randint(1, 16))]
        for at in spots:
            blob[at] ^= 1 << rng.randrange(8)
        what = f"flip bits at {spots[:4]}"
    elif kind == "extreme" and len(blob) >= 8:
        width = rng.choice((1, 2, 4, 8))
        at = min(offset() & ~(width - 1), len(blob) - width)
        value = rng.choice((*EXTREMES, len(blob), len(blob) + 1, rng.getrandbits(64))) & (
            (1 << (8 * width)) - 1
        )
        order = rng.choice(("little", "big"))
        blob[at : at + width] = value.to_bytes(width, order)
        what = f"set {width} bytes at {at} to {value} ({order})"
    elif kind == "truncate":
        cut = rng.choice((rng.randrange(len(blob) + 1), rng.randrange(header_span + 1), len(blob) - 1))
        del blob[max(0, cut) :]
        what = f"truncate to {len(blob)}"
    elif kind == "splice" and blob:
        donor = rng.choice(seeds)
        donor_blob = rng.choice(list(donor.files.values()))
        length = rng.randint(1, 4096)
        src = rng.randrange(max(1, len(donor_blob) - length))
        at = offset()
        piece = donor_blob[src : src + length]
        blob[at : at + len(piece)] = piece
        what = f"splice {len(piece)} bytes of {donor.name} at {at}"
    else:
        text = blob[:header_span].decode("latin-1")
        tokens = list(re.finditer(r'"[^"\n]*"|\b\d+\b', text))
        if not tokens:
            blob[offset()] ^= 0xFF
            what = "flip a byte (no text tokens)"
        else:
            token = rng.choice(tokens)
            if token.group().startswith('"'):
                replacement = rng.choice(HOSTILE_NAMES)
            else:
                replacement = str(rng.choice((*EXTREMES, rng.getrandbits(64))))
            encoded = replacement.encode("latin-1", "replace")
            blob[token.start() : token.end()] = encoded
            what = f"replace token {token.group()[:20]!r} with {replacement[:20]!r}"
    if rng.random() < 0.7:
        fix_checksums(name, blob, seed.checksums)
        what += " +checksums"
    files[name] = bytes(blob)
    return files, f"{name}: {kind}: {what}"


def fix_checksums(name: str, blob: bytearray, checksums: tuple[tuple[str, str, int, int], ...]) -> None:
    for file, kind, at, length in checksums:
        if file != name or at + length > len(blob) or length <= 8:
            continue
        if kind == "crc":
            blob[at + 4 : at + 8] = b"\0\0\0\0"
            blob[at + 4 : at + 8] = struct.pack("<I", google_crc32c.value(bytes(blob[at : at + length])))
        else:
            field = 64 if kind == "vhd" else 36
            blob[at + field : at + field + 4] = b"\0\0\0\0"
            total = sum(blob[at : at + length]) & 0xFFFFFFFF
            blob[at + field : at + field + 4] = struct.pack(">I", ~total & 0xFFFFFFFF)


# --- running a case ---------------------------------------------------------------------------


class CaseTimeoutError(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeoutError()


def exercise(seed: Seed, files: dict[str, bytes], folder: Path, why: list[str] | None = None) -> str:
    """Write ``files`` into a fresh ``folder`` and use them as an analyst would: 'ok', 'error'
    (a VMForensicsError, its message appended to ``why`` when given) or what went wrong."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    try:
        if seed.memory:
            _exercise_memory(folder / seed.entry)
        else:
            _exercise_image(folder / seed.entry)
    except VMForensicsError as exc:
        if why is not None:
            why.append(str(exc))
        return "error"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return "ok"


def _exercise_image(path: Path) -> None:
    for strict in (False, True):
        with open_image(path, strict=strict) as disk:
            disk.info()
            list(itertools.islice(disk.extents(), 10000))
            size = disk.size
            for at in (0, size // 2, max(0, size - 4096), random.randrange(max(1, size))):
                disk.read_at(at, 64 * KiB)
            disk.seek(0)
            for _ in range(8):
                if not disk.read(256 * KiB):
                    break


def _exercise_memory(path: Path) -> None:
    with open_memory(path) as memory:
        memory.info()
        for start, length in memory.ranges()[:64]:
            memory.read(start, min(length, 64 * KiB))
            memory.read(start + length - min(length, 4096), min(length, 4096))
        if memory.extents.stored < 8 * MiB:
            digest(memory, "elf")
            if memory.size < 64 * MiB:
                digest(memory, "raw")


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


_SEEDS: list[Seed] = []
_BASELINE = 0
_CASE_DIR = Path()


def _init(work: str) -> None:
    global _SEEDS, _BASELINE, _CASE_DIR
    logging.disable(logging.WARNING)  # every damaged image warns; the outcome is what counts
    _SEEDS = build_seeds(Path(tempfile.mkdtemp(dir=work)))
    _CASE_DIR = Path(tempfile.mkdtemp(dir=work)) / "case"
    signal.signal(signal.SIGALRM, _alarm)
    _reset_hwm()
    _BASELINE = _vm_hwm()
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = 4 << 30  # a runaway allocation fails in this worker instead of taking the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _tally() -> dict[str, float]:
    return {
        "cases": 0,
        "ok": 0,
        "error": 0,
        "failures": 0,
        "slowest_s": 0.0,
        "slowest_case": -1,
        "peak_mib": 0.0,
    }


def _merge(tally: dict[str, float], part: dict[str, float]) -> None:
    if part["slowest_s"] > tally["slowest_s"]:
        tally["slowest_s"], tally["slowest_case"] = part["slowest_s"], part["slowest_case"]
    if part["peak_mib"] > tally["peak_mib"]:
        tally["peak_mib"], tally["peak_case"] = part["peak_mib"], part["peak_case"]
    for key in ("cases", "ok", "error", "failures"):
        tally[key] += part[key]


def run_batch(args: tuple[int, int, int]) -> dict[str, object]:
    """Cases ``start .. start+count`` of run ``seed``: counts per seed and the first failures."""
    master, start, count = args
    by_seed: dict[str, dict[str, float]] = {}
    failures: list[dict[str, object]] = []
    for number in range(start, start + count):
        rng = random.Random(master * 1_000_003 + number)
        seed = rng.choice(_SEEDS)
        files, what = mutate(seed, rng, _SEEDS)
        random.seed(number)
        _reset_hwm()
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT * 3)  # hard stop well past the limit
        try:
            outcome = exercise(seed, files, _CASE_DIR)
        except CaseTimeoutError:
            outcome = "timeout"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:300] + " | " + traceback.format_exc(limit=-3)[-600:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - began
        grew = _vm_hwm() - _BASELINE
        tally = by_seed.setdefault(seed.name, _tally())
        tally["cases"] += 1
        if took > tally["slowest_s"]:
            tally["slowest_s"], tally["slowest_case"] = round(took, 3), number
        if grew / MiB > tally["peak_mib"]:
            tally["peak_mib"], tally["peak_case"] = round(grew / MiB, 1), number
        if outcome in ("ok", "error") and took > TIME_LIMIT:
            outcome = f"slow: {took:.2f} s"
        if outcome in ("ok", "error") and grew > MEMORY_LIMIT:
            outcome = f"memory: {grew >> 20} MiB above baseline"
        if outcome in ("ok", "error"):
            tally[outcome] += 1
            continue
        tally["failures"] += 1
        failures.append({"case": number, "seed": seed.name, "mutation": what, "outcome": outcome})
    return {"by_seed": by_seed, "failures": failures[:50]}


def fuzz(
    cases: int, master: int, workers: int, batch: int = 200, progress: Path | None = None
) -> dict[str, object]:
    """Run ``cases`` cases; with ``progress``, the summary so far is rewritten there after every
    batch (a run stopped early still leaves its figures). Ctrl-C stops early with the summary."""
    work = tempfile.mkdtemp(prefix="vmf-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    began = time.monotonic()
    by_seed: dict[str, dict[str, float]] = {}
    samples: list[dict[str, object]] = []
    seeds: list[str] = []

    def summary() -> dict[str, object]:
        def total(key: str) -> float:
            return sum(t[key] for t in by_seed.values())

        return {
            "cases": total("cases"),
            "cases_asked": cases,
            "seed": master,
            "seeds": seeds,
            "opened_cleanly": total("ok"),
            "refused_with_vmforensics_error": total("error"),
            "failures": total("failures"),
            "failure_samples": samples[:50],
            "slowest_case_s": max((t["slowest_s"] for t in by_seed.values()), default=0.0),
            "peak_memory_above_baseline_mib": max((t["peak_mib"] for t in by_seed.values()), default=0.0),
            "seconds": round(time.monotonic() - began, 1),
            "by_seed": {name: by_seed[name] for name in sorted(by_seed)},
        }

    try:
        seeds = [s.name for s in build_seeds(Path(tempfile.mkdtemp(dir=work)))]  # each opens cleanly
        jobs = [(master, start, min(batch, cases - start)) for start in range(0, cases, batch)]
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(work,)) as pool:
            for result in pool.map(run_batch, jobs):
                for name, part in result["by_seed"].items():  # type: ignore[union-attr]
                    _merge(by_seed.setdefault(name, _tally()), part)
                samples += result["failures"]  # type: ignore[arg-type]
                if progress is not None:
                    progress.write_text(json.dumps(summary(), indent=2) + "\n")
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary()


def replay(master: int, number: int) -> dict[str, object]:
    """Run case ``number`` of run ``master`` again, in this process: what it did and how it ended."""
    work = Path(tempfile.mkdtemp(prefix="vmf-fuzz-"))
    try:
        (work / "seeds").mkdir()
        seeds = build_seeds(work / "seeds")
        rng = random.Random(master * 1_000_003 + number)
        seed = rng.choice(seeds)
        files, what = mutate(seed, rng, seeds)
        random.seed(number)
        began = time.perf_counter()
        try:
            outcome = exercise(seed, files, work / "case")
        except BaseException as exc:  # the point is to see it
            outcome = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=-4)}"
        return {"case": number, "seed": seed.name, "mutation": what, "outcome": outcome,
                "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the summary here (updated after every batch)")
    parser.add_argument("--replay", type=int, metavar="CASE", help="run one case of --seed again and show it")
    args = parser.parse_args()
    if args.replay is not None:
        print(json.dumps(replay(args.seed, args.replay), indent=2))
        return 0
    summary = fuzz(args.cases, args.seed, args.workers, progress=args.json)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
