"""Survey of a vcsim inventory with 1,000 VMs (VPX model: 4 hosts, 1 cluster, 500 VMs per pool).

Prints the full survey's time (inventory, events, datastore search), the single PropertyCollector
retrieval alone, and, as the reference in the same run, reading the same properties per VM (one
round trip each, as a naive client does). Run: ``python benchmarks/survey_vmware.py [VMS_PER_POOL]``.
"""

from __future__ import annotations

import os
import select
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyVim.connect import Connect, Disconnect
from pyVmomi import vim

from tests.acquire.vcsim.server import build, make_certificate
from vmforensics.hypervisors.vmware.api import properties, retrieve
from vmforensics.hypervisors.vmware.survey import VM_PATHS, retrieve_inventory, survey_vmware

USER, PASSWORD = "bench", "bench-pass"


def start(workdir: Path, per_pool: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    cert, key = make_certificate(workdir)
    (workdir / "datastores").mkdir()
    process = subprocess.Popen(
        [
            str(build()),
            "-listen",
            "127.0.0.1:0",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-user",
            USER,
            "-password",
            PASSWORD,
            "-vm",
            str(per_pool),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TMPDIR=str(workdir / "datastores")),
    )
    ready, _, _ = select.select([process.stdout], [], [], 600)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("https://"):
        process.kill()
        raise SystemExit(f"vcsim did not start: {line!r}")
    return process, urlsplit(line).port, cert


def main() -> None:
    per_pool = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory(prefix="survey-bench-") as work:
        began = time.perf_counter()
        process, port, cert = start(Path(work), per_pool)
        print(f"vcsim with {2 * per_pool} VMs ready in {time.perf_counter() - began:.1f} s")
        try:
            si = Connect(
                "127.0.0.1", port, USER, PASSWORD, sslContext=ssl.create_default_context(cafile=str(cert))
            )
            t0 = time.perf_counter()
            objects = retrieve_inventory(si)
            single = time.perf_counter() - t0
            vms = [obj for obj, _ in objects.values() if isinstance(obj, vim.VirtualMachine)]
            t0 = time.perf_counter()
            for vm in vms:
                properties(si, vm, VM_PATHS)
            per_vm = time.perf_counter() - t0
            t0 = time.perf_counter()
            retrieve(si, [], vim.VirtualMachine, ["name"], container=si.content.rootFolder)
            names_only = time.perf_counter() - t0
            Disconnect(si)

            t0 = time.perf_counter()
            report = survey_vmware("127.0.0.1", port=port, user=USER, password=PASSWORD, tls_ca=str(cert))
            full = time.perf_counter() - t0
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    print(f"VMs surveyed: {len(report.vms)}, hosts: {len(report.hosts)}, findings: {len(report.findings)}")
    print(f"full survey (inventory + events + datastore search + findings): {full:.2f} s")
    print(f"one PropertyCollector retrieval of {len(VM_PATHS)} paths for all VMs: {single:.2f} s")
    print(f"reference, the same paths one VM per round trip: {per_vm:.2f} s ({per_vm / single:.1f}x slower)")
    print(f"names only, one retrieval: {names_only:.2f} s")


if __name__ == "__main__":
    main()
