"""The README's examples run as written: its placeholder paths are mapped onto a real demo VM folder
and a temporary case folder, nothing else is changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from vmforensics.demo.vm import build_demo_vm

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)


def test_the_readme_python_example_acquires_verifies_and_opens_the_disk(tmp_path: Path) -> None:
    datastore = tmp_path / "datastore1"
    build_demo_vm(datastore)
    code = blocks("python")[0]
    assert "LocalAcquirer" in code
    code = code.replace("/mnt/datastore1", str(datastore)).replace("/cases/2026-117", str(tmp_path / "cases"))
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)  # the README's own example
    assert namespace["report"].ok  # type: ignore[attr-defined]
    assert namespace["fs_image"].get_size() > 0  # type: ignore[attr-defined]


def test_the_readme_command_line_example_runs_in_a_shell(tmp_path: Path) -> None:
    datastore = tmp_path / "ds1"
    build_demo_vm(datastore)
    script = next(block for block in blocks("sh") if "vmforensics keygen" in block)
    script = script.replace("/mnt/ds1", str(datastore)).replace("/cases/2026-117", str(tmp_path / "cases"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vmforensics").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vmforensics "$@"\n')
    (bin_dir / "vmforensics").chmod(0o755)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VMFORENSICS_KEY_PASSPHRASE": "correct horse battery staple",
        "VMFORENSICS_CONFIG": str(tmp_path / "no-config.toml"),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED" in done.stdout and "README.TXT" in done.stdout
