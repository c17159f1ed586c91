"""Volatility 3 finds an acquired .vmem's metadata: the .vmsn/.vmss stays beside it, same base name.

Volatility's VmwareStacker looks for ``X.vmss``, then ``X.vmsn``, in the .vmem's own folder; without
it the .vmem is read as flat memory and every address above the first region is wrong. The state
files here are well formed (tests/interop/vmware_state.py) with a kernel banner planted in the
second region, so the banner's guest-physical address proves the metadata was used: through
Volatility's stacker in-process and through its ``vol`` command line on the evidence directory.
A .vmem copied away from its state file is the control: there the stacker finds nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.vmware_state import BANNER, BANNER_PHYSICAL, BANNER_VMEM_OFFSET, PAGE, REGIONS
from vmforensics import verify

pytest.importorskip("volatility3")
from volatility3.framework import contexts
from volatility3.framework.layers import physical, vmware

VOL = "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; main()"


def stack(vmem: Path) -> vmware.VmwareLayer | None:
    """What Volatility's automagic does first with ``-f X.vmem``: a file layer, then the VMware stacker."""
    context = contexts.Context()
    context.config["base.location"] = vmem.as_uri()
    context.layers.add_layer(physical.FileLayer(context, "base", "base"))
    layer = vmware.VmwareStacker.stack(context, "base")
    if layer is not None:
        context.layers.add_layer(layer)
    return layer


def banners(vmem: Path) -> list[dict]:
    """``vol -r json -f vmem banners.Banners`` through the test interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", VOL, "-q", "-r", "json", "-f", str(vmem), "banners.Banners"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout[done.stdout.index("[") :])


@pytest.mark.parametrize("preserve", ["snapshot", "suspend"])
def test_vmem_keeps_its_state_file_and_base_name(preserve: str, request: pytest.FixtureRequest) -> None:
    acquired = request.getfixturevalue(f"vmware_{preserve}")
    base = (
        f"{acquired.source.name}-Snapshot1" if preserve == "snapshot" else f"{acquired.source.name}-4ad1e7f3"
    )
    state = ".vmsn" if preserve == "snapshot" else ".vmss"

    vmem, metadata = acquired.evidence(base + ".vmem"), acquired.evidence(base + state)

    assert vmem.parent == metadata.parent
    assert vmem.read_bytes() == (acquired.source / vmem.name).read_bytes()
    assert metadata.read_bytes() == (acquired.source / metadata.name).read_bytes()
    roles = {Path(f.local_path).name: f.role for f in acquired.result.files}
    assert roles[vmem.name] == "memory"


@pytest.mark.parametrize("preserve", ["snapshot", "suspend"])
def test_volatility_stacks_the_vmware_layer_on_the_acquired_vmem(
    preserve: str, request: pytest.FixtureRequest
) -> None:
    acquired = request.getfixturevalue(f"vmware_{preserve}")
    vmem = next(
        acquired.result.path / f.local_path for f in acquired.result.files if f.local_path.endswith(".vmem")
    )
    flat = (acquired.source / vmem.name).read_bytes()

    layer = stack(vmem)

    assert isinstance(layer, vmware.VmwareLayer)
    for guest_page, vmem_page, pages in REGIONS:
        start, end = vmem_page * PAGE, (vmem_page + pages) * PAGE
        assert layer.read(guest_page * PAGE, end - start) == flat[start:end]
    assert layer.read(BANNER_PHYSICAL, len(BANNER)) == BANNER == flat[BANNER_VMEM_OFFSET:][: len(BANNER)]


def test_vol_command_line_finds_the_banner_at_its_guest_physical_address(
    vmware_snapshot, tmp_path: Path
) -> None:
    vmem = vmware_snapshot.evidence(f"{vmware_snapshot.source.name}-Snapshot1.vmem")

    found = banners(vmem)

    assert [(b["Offset"], b["Banner"]) for b in found] == [(BANNER_PHYSICAL, BANNER.decode())]
    assert verify(vmware_snapshot.result.path).ok  # Volatility wrote nothing into the evidence

    alone = tmp_path / vmem.name
    shutil.copyfile(vmem, alone)
    assert stack(alone) is None
    assert [b["Offset"] for b in banners(alone)] == [BANNER_VMEM_OFFSET]
