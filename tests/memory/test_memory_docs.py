"""docs/memory.md's recipes run as written on a real VMware state pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.interop.vmware_state import BANNER, BANNER_PHYSICAL, write_memory_state
from tests.test_docs import RECIPE
from vmforensics.memory import open_memory

PAGE = Path(__file__).resolve().parents[2] / "docs" / "memory.md"


def recipes() -> dict[str, str]:
    return {name: body for name, _, body in RECIPE.findall(PAGE.read_text())}


def test_python_recipe_converts_a_vmware_pair(tmp_path: Path) -> None:
    state = tmp_path / "web01.vmss"
    write_memory_state(state, tmp_path / "web01.vmem")
    out = tmp_path / "web01.elf"
    exec(recipes()["memory-python"], {"STATE": state, "OUT": out})
    with open_memory(out) as image:
        assert image.read(BANNER_PHYSICAL, len(BANNER)) == BANNER


def test_shell_recipe_runs_as_written(tmp_path: Path) -> None:
    state = tmp_path / "web01-Snapshot1.vmsn"
    write_memory_state(state, tmp_path / "web01-Snapshot1.vmem")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "vmforensics"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmforensics "$@"\n')
    launcher.chmod(0o755)
    env = {**os.environ, "STATE": str(state), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", "-e", "-c", recipes()["memory-cli"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "facts.json").read_text())["format"] == "vmware"
    with (tmp_path / "guest.raw").open("rb") as raw:
        raw.seek(BANNER_PHYSICAL)
        assert raw.read(len(BANNER)) == BANNER
    with open_memory(tmp_path / "guest.elf") as image:
        assert image.read(BANNER_PHYSICAL, len(BANNER)) == BANNER
