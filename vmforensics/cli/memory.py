"""``vmforensics memory info|convert SRC``: guest memory from hypervisor saved states."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vmforensics.errors import UsageError
from vmforensics.memory import FORMATS, GuestMemory, convert, hyperv_state, open_memory
from vmforensics.memory.open import detect


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="guest memory from saved states (VMware, libvirt, QEMU, Hyper-V, ELF, LiME): info or convert",
        description=(
            "Read guest-physical memory from a hypervisor's saved state (format found by content) "
            "and convert it to a raw, ELF or LiME image for Volatility, MemProcFS and the like "
            "(docs/memory.md)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    info = commands.add_parser("info", help="format, ranges, size, CPUs and registers of a saved state")
    _add_source(info)
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(handler=_info)

    conv = commands.add_parser("convert", help="write the guest's memory as a raw, ELF or LiME image")
    _add_source(conv)
    conv.add_argument("--format", choices=FORMATS, default="raw", help="output format (default raw, sparse)")
    conv.add_argument("--out", required=True, help="new output file (never overwritten)")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument("--json", action="store_true", help="print the result as JSON")
    conv.set_defaults(handler=_convert)


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help=".vmss/.vmsn/.vmem, libvirt save, QEMU migration stream, Hyper-V .vmrs, ELF core or LiME file",
    )
    parser.add_argument(
        "--vmem", help="the VMware .vmem when it is not the same-named file beside the state file"
    )


def _open(args: argparse.Namespace) -> GuestMemory:
    if not os.path.isfile(args.source):
        raise UsageError(f"{args.source}: no such file")
    if args.vmem and not os.path.isfile(args.vmem):
        raise UsageError(f"{args.vmem}: no such file")
    return open_memory(args.source, vmem=args.vmem)


def _info(args: argparse.Namespace) -> int:
    if os.path.isfile(args.source) and detect(args.source) == "hyperv":
        facts, keys, refused = hyperv_state.inspect(Path(args.source))
        if refused is not None:
            return _container_info(args, facts, keys, refused)
    with _open(args) as memory:
        info = memory.info()
        stored = memory.extents.stored
    if args.json:
        print(json.dumps({**info.as_dict(), "stored": stored}, indent=2, sort_keys=True, default=str))
        return 0
    print(f"format:      {info.format}")
    print(f"memory:      {info.memory_size} bytes ({info.memory_size / 2**20:.1f} MiB), {stored} stored")
    print(f"page size:   {info.page_size}")
    print(f"CPUs:        {info.cpu_count if info.cpu_count is not None else 'not recorded'}")
    for start, length, name in ([r.start, r.length, r.name] for r in info.ranges):
        print(f"range:       0x{start:012x}-0x{start + length - 1:012x} {name}")
    for cpu, registers in sorted(info.registers.items()):
        shown = ", ".join(f"{k}=0x{v:x}" for k, v in sorted(registers.items())[:24])
        print(f"cpu {cpu}:       {shown}")
    for key, value in sorted(info.details.items()):
        print(f"{key + ':':<13}{value}")
    return 0


def _container_info(args: argparse.Namespace, facts: dict, keys: list, refused: str) -> int:
    """A Hyper-V container whose memory is refused: what it holds, and why no memory is read."""
    if args.json:
        print(json.dumps({"format": "hyperv", "memory": None, "memory_refused": refused,
                          "container": facts, "keys": [list(k) for k in keys]}, indent=2, sort_keys=True))  # fmt: skip
        return 0
    print("format:      hyperv (HyperVStorage container)")
    print(f"memory:      not read: {refused}")
    for key, value in sorted(facts.items()):
        print(f"{key + ':':<13}{value}")
    for path, kind, size in keys:
        print(f"key:         {path} ({kind}, {size} bytes)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out):
        raise UsageError(f"{args.out} exists; choose a new output file")
    with _open(args) as memory:
        result = convert(memory, args.out, args.format, progress=not args.no_progress)
    if args.json:
        print(
            json.dumps(
                {
                    "out": args.out,
                    **{k: getattr(result, k) for k in ("format", "size", "sha256", "stored", "segments")},
                },
                indent=2,
            )
        )
    else:
        print(
            f"{args.out}: {result.format}, {result.size} bytes ({result.stored} non-zero), sha256 {result.sha256}"
        )
    return 0
