"""Volatility 3 as the oracle: its own layers (VMware, ELF, LiME, raw file) stacked in-process on
a file, and its ``banners`` plugin run through its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("volatility3")
from volatility3.framework import contexts
from volatility3.framework.layers import elf, lime, physical, vmware

VOL = "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; main()"
STACKERS = {"vmware": vmware.VmwareStacker, "elf": elf.Elf64Stacker, "lime": lime.LimeStacker}


def layer(path: Path, kind: str):
    """Volatility's layer for ``path``: ``raw`` is the file itself; others through their stacker."""
    context = contexts.Context()
    context.config["base.location"] = path.as_uri()
    base = physical.FileLayer(context, "base", "base")
    context.layers.add_layer(base)
    if kind == "raw":
        return base
    stacked = STACKERS[kind].stack(context, "base")
    assert stacked is not None, f"Volatility's {kind} stacker did not take {path}"
    context.layers.add_layer(stacked)
    return stacked


def segments(stacked) -> list[tuple[int, int]]:
    """(guest-physical start, length) of a segmented layer's mappings, ascending."""
    return sorted((start, length) for start, _mapped, length, _size in stacked._segments)


def banners(path: Path) -> list[tuple[int, str]]:
    """(offset, banner) that ``vol -r json -f path banners.Banners`` finds."""
    done = subprocess.run(
        [sys.executable, "-c", VOL, "-q", "-r", "json", "-f", str(path), "banners.Banners"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout[done.stdout.index("[") :])
    return [(row["Offset"], row["Banner"]) for row in rows]
