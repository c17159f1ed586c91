"""Oracles for the image readers: qemu-img/qemu-io build images and say what their bytes are."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from vmforensics.images.base import DiskImage

if shutil.which("qemu-img") is None:  # .ci/run installs qemu-utils; a dev machine may not have it
    pytest.skip("qemu-img (Debian qemu-utils) is required for the image tests", allow_module_level=True)


def qemu_img(*args: str | Path) -> str:
    """Run qemu-img and return its stdout; fail the test with its stderr."""
    done = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, f"qemu-img {args}: {done.stderr}"
    return done.stdout


def qemu_io(image: Path, *commands: str, fmt: str) -> None:
    """Write into an image through QEMU's own block layer (e.g. ``write -P 0x41 0 64k``)."""
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run([*args, str(image)], capture_output=True, text=True)
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout + done.stderr


def oracle_raw(image: Path, fmt: str, out: Path) -> Path:
    """The guest bytes of ``image`` according to qemu-img convert."""
    qemu_img("convert", "-f", fmt, "-O", "raw", image, out)
    return out


def assert_same_bytes(disk: DiskImage, raw: Path, chunk: int = 1 << 20) -> None:
    """Compare a reader's bytes with an oracle's raw file, reporting the first differing offset."""
    assert disk.size == raw.stat().st_size, f"size {disk.size} != oracle {raw.stat().st_size}"
    disk.seek(0)
    with raw.open("rb") as expected:
        offset = 0
        while True:
            want = expected.read(chunk)
            got = disk.read(chunk)
            if want != got:
                first = next(i for i in range(min(len(want), len(got))) if want[i] != got[i]) if got else 0
                pytest.fail(f"bytes differ from the oracle at offset {offset + first}")
            if not want:
                break
            offset += len(want)


def sha256_of(path: Path) -> str:
    return hashlib.file_digest(path.open("rb"), "sha256").hexdigest()


@pytest.fixture
def ext4_raw(tmp_path: Path) -> Path:
    """A 64 MiB raw disk holding an ext4 file system with known files (built with mkfs/debugfs)."""
    raw = tmp_path / "fs.raw"
    with raw.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "evidence", str(raw)], check=True)
    payload = tmp_path / "secret.txt"
    payload.write_text("the quick brown fox\n" * 100)
    big = tmp_path / "big.bin"
    big.write_bytes(hashlib.sha256(b"seed").digest() * 40000)
    for command in ("mkdir docs", f"write {payload} docs/secret.txt", f"write {big} big.bin"):
        subprocess.run(["debugfs", "-w", "-R", command, str(raw)], check=True, capture_output=True)
    return raw


# the mixed data/text/holes disk, shared by the VDI, Parallels, QED and qcow1 tests (imported last:
# that module imports the helpers above)
from tests.images.test_read_paths import base_raw  # noqa: E402, F401
