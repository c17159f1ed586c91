"""The tree keeps the project's style: ruff's lint rules and its formatter (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ruff", reason="ruff (test extra)")

ROOT = Path(__file__).resolve().parent.parent
RUFF = [sys.executable, "-m", "ruff"]


def ruff(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUFF, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes_on_sources_tests_benchmarks_and_examples() -> None:
    done = ruff("check", "--no-cache", "vmforensics", "tests", "benchmarks", "examples")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_python_sources_unchanged() -> None:
    done = ruff(
        "format",
        "--check",
        "--no-cache",
        "--config",
        "extend-exclude = ['*.ipynb']",
        "vmforensics",
        "tests",
        "benchmarks",
    )
    assert done.returncode == 0, done.stdout + done.stderr
