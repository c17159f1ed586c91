"""Evidence directories the interop tests open with other tools' readers.

``vmware_snapshot`` and ``vmware_suspend`` come from VMwareAcquirer against govmomi's vcsim on
loopback. vcsim leaves a VM's files empty and writes no memory state, so after each real API
call ``SimulatedESXi`` writes what ESXi would have: before the acquisition a Linux guest disk
(descriptor + flat extent) and a .vmx naming it; on the snapshot, the delta disk holding the
guest's later writes, the .vmx pointed at it, and the .vmsn/.vmem pair; on suspend the
.vmss/.vmem pair.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.interop.guest import write_guest_delta, write_guest_disk, write_vmx
from tests.interop.vmware_state import write_memory_state
from vmforensics import CaseInfo
from vmforensics.hypervisors.vmware.acquirer import VMwareAcquirer

CASE = CaseInfo(case_id="2026-117", examiner="A. Analyst")
SNAPSHOT_VM, SUSPEND_VM = "DC0_H0_VM0", "DC0_H0_VM1"


@attrs.frozen
class Acquired:
    """An acquisition through vcsim, and the source VM folder it was read from."""

    result: Any
    source: Path

    def evidence(self, name: str) -> Path:
        """The acquired file called ``name`` (its path below the evidence directory's files/)."""
        for record in self.result.files:
            if record.local_path.rsplit("/", 1)[-1] == name:
                return self.result.path / record.local_path
        raise AssertionError(f"{name} was not acquired")


class SimulatedESXi(VMwareAcquirer):
    """The real acquirer; after each (real) preservation call the datastore gets what ESXi writes."""

    def __init__(self, *args: Any, vm_dir: Path, work: Path, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.vm_dir, self.work = vm_dir, work

    def preserve(self, session: Any, mode: str, *, memory: bool, isolate: bool) -> None:
        super().preserve(session, mode, memory=memory, isolate=isolate)
        name = self.vm_dir.name
        if mode == "snapshot":
            write_guest_delta(self.vm_dir, self.work / "disk1.raw", self.work)
            write_vmx(self.vm_dir / f"{name}.vmx", display_name=name, disk="disk1-000001.vmdk")
            if memory:
                write_memory_state(
                    self.vm_dir / f"{name}-Snapshot1.vmsn", self.vm_dir / f"{name}-Snapshot1.vmem"
                )
        elif mode == "suspend":
            write_memory_state(self.vm_dir / f"{name}-4ad1e7f3.vmss", self.vm_dir / f"{name}-4ad1e7f3.vmem")


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir():
        pytest.skip("vcsim needs golang-go and golang-github-vmware-govmomi-dev")
    from tests.acquire.vcsim.server import VCSim

    with VCSim(tmp_path_factory.mktemp("vcsim")) as server:
        yield server


def _acquire(server: Any, vm: str, preserve: str, work: Path) -> Acquired:
    vm_dir = server.datastore_dir() / vm
    write_guest_disk(vm_dir, work)
    write_vmx(vm_dir / f"{vm}.vmx", display_name=vm, disk="disk1.vmdk")
    acquirer = SimulatedESXi(
        server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        tls_thumbprint=server.thumbprint_sha256,
        vm_dir=vm_dir,
        work=work,
    )
    result = acquirer.acquire(vm, work / f"evidence-{vm}", case=CASE, preserve=preserve, progress=False)
    return Acquired(result=result, source=vm_dir)


@pytest.fixture(scope="session")
def vmware_snapshot(vcsim: Any, tmp_path_factory: pytest.TempPathFactory) -> Acquired:
    """DC0_H0_VM0 acquired with ``preserve="snapshot"`` (memory included)."""
    return _acquire(vcsim, SNAPSHOT_VM, "snapshot", tmp_path_factory.mktemp("snapshot"))


@pytest.fixture(scope="session")
def vmware_suspend(vcsim: Any, tmp_path_factory: pytest.TempPathFactory) -> Acquired:
    """DC0_H0_VM1 acquired with ``preserve="suspend"``."""
    return _acquire(vcsim, SUSPEND_VM, "suspend", tmp_path_factory.mktemp("suspend"))
