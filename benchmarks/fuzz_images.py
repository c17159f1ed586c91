"""Mutation fuzzing of every image reader, beside the hypothesis suites.

    python benchmarks/fuzz_images.py [--cases 100000] [--seed 1] [--workers 2] [--json OUT]

Small valid seeds of every format are built with qemu-img/qemu-io and the tests' independent
builders (VMDK sparse, streamOptimized, twoGbMaxExtentSparse, monolithicFlat, COWD, SESparse;
qcow2 v2, v3 zlib, zstd, extended L2, backing; VHD fixed, dynamic, differencing; VHDX dynamic,
differencing, dirty log). Each case copies one seed, applies one mutation (bit flips, a field set
to an extreme, a truncation, a splice, a descriptor token replaced) and, usually, fixes the
checksums that cover what changed (VHD footer/dynamic header, VHDX CRC-32C), then opens,
describes, walks the extents and reads the image in a worker process under a time limit. A case
passes when it ends normally or with a VMForensicsError, within 2 s, with its peak memory (VmHWM,
reset before each case) under 64 MiB above the worker's baseline. Files are served from memory
through ``open_image``'s opener. Cases are reproducible from ``--seed`` and the case number.
"""

from __future__ import annotations

import argparse
import io
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

KiB, MiB = 1024, 1 << 20
TIME_LIMIT = 2.0
MEMORY_LIMIT = 64 * MiB
EXTREMES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1,
            (1 << 64) - 1, 512, 4096, 1 << 20)  # fmt: skip
HOSTILE_NAMES = ('"../../etc/passwd"', '"/dev/zero"', '"a' + "b" * 5000 + '"', '"\xff\xfe"', '""', '"x.vmdk"')


class Seed(NamedTuple):
    name: str
    entry: str  # the file open_image is given
    files: dict[str, bytes]  # every file of the image, by name
    checksums: tuple[tuple[str, str, int, int], ...]  # (file, kind, offset, length)


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

    def add(name: str, entry: Path, *others: Path, checksums: list | None = None) -> None:
        files = {p.name: p.read_bytes() for p in (entry, *others)}
        seeds.append(Seed(name, entry.name, files, tuple(checksums or ())))

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
    for seed in seeds:  # every seed must open as it is, or the fuzzing proves nothing
        outcome = exercise(seed.entry, seed.files)
        if outcome != "ok":
            raise SystemExit(f"seed {seed.name} does not open cleanly: {outcome}")
    return seeds


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


def exercise(entry: str, files: dict[str, bytes]) -> str:
    """'ok', 'error' (a VMForensicsError) or what went wrong."""

    def opener(path: str) -> io.BytesIO:
        key = os.path.basename(path.replace("\\", "/"))
        if key not in files:
            raise FileNotFoundError(path)
        return io.BytesIO(files[key])

    try:
        for strict in (False, True):
            with open_image(entry, opener=opener, strict=strict) as disk:
                disk.info()
                list(itertools.islice(disk.extents(), 10000))
                size = disk.size
                for at in (0, size // 2, max(0, size - 4096), random.randrange(max(1, size))):
                    disk.read_at(at, 64 * KiB)
                disk.seek(0)
                for _ in range(8):
                    if not disk.read(256 * KiB):
                        break
    except VMForensicsError:
        return "error"
    return "ok"


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


def _init(work: str) -> None:
    global _SEEDS, _BASELINE
    logging.disable(logging.WARNING)  # every damaged image warns; the outcome is what counts
    _SEEDS = build_seeds(Path(tempfile.mkdtemp(dir=work)))
    signal.signal(signal.SIGALRM, _alarm)
    _reset_hwm()
    _BASELINE = _vm_hwm()
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = 4 << 30  # a runaway allocation fails in this worker instead of taking the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_batch(args: tuple[int, int, int]) -> dict[str, object]:
    """Cases ``start .. start+count`` of run ``seed``: counts and the first failures."""
    master, start, count = args
    counts = {"ok": 0, "error": 0}
    failures: list[dict[str, object]] = []
    slowest = 0.0
    peak = 0
    for number in range(start, start + count):
        rng = random.Random(master * 1_000_003 + number)
        seed = rng.choice(_SEEDS)
        files, what = mutate(seed, rng, _SEEDS)
        random.seed(number)
        _reset_hwm()
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT * 3)  # hard stop well past the limit
        try:
            outcome = exercise(seed.entry, files)
        except CaseTimeoutError:
            outcome = "timeout"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:300] + " | " + traceback.format_exc(limit=-3)[-600:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - began
        grew = _vm_hwm() - _BASELINE
        slowest, peak = max(slowest, took), max(peak, grew)
        if outcome in ("ok", "error") and took > TIME_LIMIT:
            outcome = f"slow: {took:.2f} s"
        if outcome in ("ok", "error") and grew > MEMORY_LIMIT:
            outcome = f"memory: {grew >> 20} MiB above baseline"
        if outcome in counts:
            counts[outcome] += 1
        elif len(failures) < 50:
            failures.append({"case": number, "seed": seed.name, "mutation": what, "outcome": outcome})
        else:
            failures.append({"case": number})
    return {"counts": counts, "failures": failures, "slowest": slowest, "peak": peak}


def fuzz(
    cases: int, master: int, workers: int, batch: int = 200, progress: Path | None = None
) -> dict[str, object]:
    """Run ``cases`` cases; with ``progress``, the summary so far is rewritten there after every
    batch (a run stopped early still leaves its figures). Ctrl-C stops early with the summary."""
    work = tempfile.mkdtemp(prefix="vmf-fuzz-")
    began = time.monotonic()
    totals = {"ok": 0, "error": 0}
    failures: list[dict[str, object]] = []
    slowest, peak, done = 0.0, 0, 0
    seeds: list[str] = []

    def summary() -> dict[str, object]:
        return {
            "cases": done,
            "cases_asked": cases,
            "seed": master,
            "seeds": seeds,
            "opened_cleanly": totals["ok"],
            "refused_with_vmforensics_error": totals["error"],
            "failures": len(failures),
            "failure_samples": [f for f in failures if "outcome" in f][:50],
            "slowest_case_s": round(slowest, 3),
            "peak_memory_above_baseline_mib": round(peak / MiB, 1),
            "seconds": round(time.monotonic() - began, 1),
        }

    try:
        seeds = [s.name for s in build_seeds(Path(tempfile.mkdtemp(dir=work)))]  # each opens cleanly
        jobs = [(master, start, min(batch, cases - start)) for start in range(0, cases, batch)]
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(work,)) as pool:
            for result in pool.map(run_batch, jobs):
                for key in totals:
                    totals[key] += result["counts"][key]  # type: ignore[index]
                failures += result["failures"]  # type: ignore[arg-type]
                slowest = max(slowest, result["slowest"])  # type: ignore[type-var]
                peak = max(peak, result["peak"])  # type: ignore[type-var]
                done += sum(result["counts"].values()) + len(result["failures"])  # type: ignore[union-attr, arg-type]
                if progress is not None:
                    progress.write_text(json.dumps(summary(), indent=2) + "\n")
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the summary here (updated after every batch)")
    args = parser.parse_args()
    summary = fuzz(args.cases, args.seed, args.workers, progress=args.json)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
