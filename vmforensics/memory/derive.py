"""Memory images derived after the seal: which sealed files are saved memory states, and the
producer that converts them (registered as "memory-image" in custody/derived.py's PRODUCERS).

Saved states that analysts' tools read badly (VMware .vmss/.vmsn + .vmem, libvirt saves, QEMU
migration streams, Hyper-V saved state) are converted; ELF cores and LiME files already are
what those tools read, and are left alone. The conversion's parameters (output format, source
format) are recorded, so ``verify`` can run it again and compare byte for byte.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmforensics.custody.derived import DerivedResult, Sink, derive
from vmforensics.custody.models import Manifest
from vmforensics.errors import MemoryFormatError, VMForensicsError
from vmforensics.memory.base import GuestMemory
from vmforensics.memory.convert import write
from vmforensics.memory.open import detect, open_memory

log = logging.getLogger(__name__)

KIND = "memory-image"
#: Roles of sealed files that can hold saved guest memory (acquire/filesets.py and the acquirers).
STATE_ROLES = {"snapshot-state", "suspend-state", "memory", "saved-state", "memory-state", "vm-state"}
CONVERTED = {"vmware", "libvirt", "qemu", "hyperv"}
SUFFIXES = {"raw": ".raw", "elf": ".elf", "lime": ".lime"}
AUTO = "auto"


def produce(inputs: Sequence[Path], params: Mapping[str, Any], sink: Sink) -> dict[str, Any]:
    """Convert the saved state ``inputs[0]`` (``inputs[1]``: its VMware .vmem) to ``params["format"]``."""
    vmem = inputs[1] if len(inputs) > 1 else None
    with open_memory(inputs[0], vmem=vmem) as memory:
        if memory.info().format != params.get("source_format", memory.info().format):
            raise MemoryFormatError(
                f"the input now reads as {memory.info().format}, not {params['source_format']}",
                path=str(inputs[0]),
            )
        result = write(memory, sink, str(params.get("format", "raw")))
        info = memory.info()
    return {
        "ranges": [[r.start, r.length, r.name] for r in info.ranges],
        "memory_size": info.memory_size,
        "stored": result.stored,
        "segments": result.segments,
    }


def candidates(root: Path, manifest: Manifest) -> list[tuple[str, list[str]]]:
    """(source format, input local paths) of each sealed saved state worth converting."""
    files = {f.local_path: f for f in manifest.files}
    found: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for path, entry in sorted(files.items()):
        if entry.role not in STATE_ROLES or path in used:
            continue
        try:
            kind = detect(root / path)
        except (VMForensicsError, OSError):
            continue
        if kind not in CONVERTED:
            continue
        inputs = [path]
        if kind == "vmware":
            if path.lower().endswith(".vmem"):
                continue
            vmem = posixpath.splitext(path)[0] + ".vmem"
            if vmem in files:
                inputs.append(vmem)
                used.add(vmem)
            elif not _embeds_memory(root / path):
                continue  # a snapshot taken without memory
        found.append((kind, inputs))
    return found


def _embeds_memory(state: Path) -> bool:
    try:
        with open_memory(state):
            return True
    except (VMForensicsError, OSError):
        return False


def chosen_format(memory: GuestMemory) -> str:
    """ "auto": raw unless its holes would outweigh the memory (a small x86 guest's firmware sits
    just below 4 GiB, so its raw image is 4 GiB whatever its RAM); then ELF, which skips holes."""
    return "raw" if memory.size <= 2 * memory.info().memory_size else "elf"


def derive_memory_images(
    root: str | Path, manifest: Manifest, format: str = "raw"
) -> tuple[DerivedResult, ...]:
    """After the seal: one derived memory image per sealed saved state (failures recorded, never raised).

    ``format``: raw, elf, lime, or "auto" (:func:`chosen_format` per state; the chosen format is
    what the ledger event records, so ``verify`` re-derives exactly that)."""
    root = Path(root)
    if format not in SUFFIXES and format != AUTO:
        raise ValueError(f"unknown memory image format {format!r}")
    results = []
    for kind, inputs in candidates(root, manifest):
        base = posixpath.splitext(inputs[0])[0]
        base = base[len("files/") :] if base.startswith("files/") else base
        try:
            chosen = format if format != AUTO else _auto(root, inputs)
            output = f"memory/{base}{SUFFIXES[chosen]}"
            results.append(
                derive(root, manifest, KIND, inputs, {"format": chosen, "source_format": kind}, output)
            )
        except (VMForensicsError, OSError) as exc:  # the directory could not even be amended
            log.warning("no memory image from %s: %s", inputs[0], exc)
    return tuple(results)


def _auto(root: Path, inputs: list[str]) -> str:
    """The format "auto" picks for a state; one that cannot be opened gets raw (its derivation
    then fails and is recorded as such)."""
    try:
        with open_memory(root / inputs[0], vmem=root / inputs[1] if len(inputs) > 1 else None) as memory:
            return chosen_format(memory)
    except VMForensicsError:
        return "raw"
