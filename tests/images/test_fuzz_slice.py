"""A short, seeded slice of benchmarks/fuzz_images.py: mutated images of every format (and saved
memory states) end normally or with a VMForensicsError, each within 2 s and 64 MiB above the
worker's baseline.

The full run (100,000 cases and more) is the benchmark itself; this slice keeps CI honest about
the same property on the same seeds and mutations.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from vmforensics.images.open import FORMAT_MODULES

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_images.py"


@pytest.fixture(scope="module")
def fuzz_images():
    spec = importlib.util.spec_from_file_location("fuzz_images", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_images"] = module  # its worker processes find the functions they run by name
    spec.loader.exec_module(module)
    return module


def test_a_seeded_slice_of_mutated_images_of_every_format_fails_only_with_vmforensics_errors(
    fuzz_images,
) -> None:
    summary = fuzz_images.fuzz(cases=600, master=20261201, workers=1)
    assert summary["cases"] == 600 and summary["failures"] == 0, summary["failure_samples"]
    readers = {name.split("-")[0] for name in summary["seeds"] if not name.startswith("memory-")}
    assert readers == set(FORMAT_MODULES) - {"raw"}  # every image reader open_image dispatches to
    assert {"memory-vmss", "memory-qevm", "memory-libvirt-save", "memory-elf", "memory-lime"} <= set(
        summary["seeds"]
    )
    assert set(summary["by_seed"]) == set(summary["seeds"])  # each seed was mutated in the slice
    assert summary["opened_cleanly"] > 0 and summary["refused_with_vmforensics_error"] > 0
    assert summary["slowest_case_s"] <= fuzz_images.TIME_LIMIT
    assert summary["peak_memory_above_baseline_mib"] * (1 << 20) <= fuzz_images.MEMORY_LIMIT
