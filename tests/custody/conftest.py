"""A sealed evidence directory of the demo VM, acquired fresh for each test that tampers with it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmforensics import CaseInfo, LocalAcquirer, SigningKey
from vmforensics.demo.vm import build_demo_vm


def make_writable(root: Path) -> None:
    """Undo the seal's read-only bits so a test can play the attacker (root ignores them anyway)."""
    for directory, _, names in os.walk(root):
        os.chmod(directory, 0o755)
        for name in names:
            path = Path(directory, name)
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def vm_folder(tmp_path: Path) -> Path:
    return build_demo_vm(tmp_path / "datastore").parent


@pytest.fixture
def sealed(tmp_path: Path, vm_folder: Path, signing_key: SigningKey):
    case = CaseInfo(case_id="T-1", examiner="Test Examiner")
    return LocalAcquirer().acquire(
        str(vm_folder), tmp_path / "evidence", case=case, signer=signing_key, progress=False
    )
