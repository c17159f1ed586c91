"""vSphere datastore HTTPS download: HTTPSDatastoreTransport through copy_file (hash + evidence write)
vs `curl | openssl dgst -sha256` of the same /folder URL, against govmomi's vcsim on loopback.

    python benchmarks/transport_https.py [--size-mib 1024] [--trials 3]

Needs what the VMware tests need (Debian golang-go, golang-github-vmware-govmomi-dev; the test
fixture builds vcsim on first use). Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyVim.connect import Connect, Disconnect

from tests.acquire.vcsim.server import VCSim
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.transport.https import HTTPSDatastoreTransport


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmf-bench-https-"))
    with VCSim(work / "vcsim") as server:
        target = server.datastore_dir() / "bench-flat.vmdk"
        with target.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        subprocess.run(["cat", str(target)], stdout=subprocess.DEVNULL, check=True)
        context = ssl.create_default_context(cafile=str(server.cert))
        si = Connect(
            host=server.host, port=server.port, user=server.user, pwd=server.password, sslContext=context
        )
        cookie = si._stub.cookie
        url = f"https://{server.host}:{server.port}/folder/bench-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"
        mb = target.stat().st_size / 1e6
        best = {"curl": float("inf"), "curl_disk": float("inf"), "ours": float("inf")}
        for trial in range(args.trials):
            start = time.perf_counter()
            subprocess.run(
                f"curl -sS --cacert {server.cert} -b '{cookie.split(';')[0]}' '{url}' | openssl dgst -sha256",
                shell=True,
                check=True,
                capture_output=True,
            )
            best["curl"] = min(best["curl"], time.perf_counter() - start)
            start = time.perf_counter()
            copy = work / f"curl-copy-{trial}"
            subprocess.run(
                f"curl -sS --cacert {server.cert} -b '{cookie.split(';')[0]}' '{url}' | tee {copy} "
                f"| openssl dgst -sha256 && sync {copy}",
                shell=True,
                check=True,
                capture_output=True,
            )
            best["curl_disk"] = min(best["curl_disk"], time.perf_counter() - start)
            transport = HTTPSDatastoreTransport(
                server.host,
                port=server.port,
                cookie=cookie,
                datacenter="DC0",
                datastore="LocalDS_0",
                tls_ca=str(server.cert),
            )
            start = time.perf_counter()
            copy_file(transport, "bench-flat.vmdk", EvidenceDirectory(work / f"ev{trial}"), "bench-flat.vmdk")
            best["ours"] = min(best["ours"], time.perf_counter() - start)
            transport.close()
        Disconnect(si)
    print(f"{args.size_mib} MiB from vcsim /folder over TLS, best of {args.trials}")
    print(f"curl | openssl dgst -sha256           {mb / best['curl']:7.0f} MB/s")
    print(
        f"curl | tee FILE | openssl; sync FILE  {mb / best['curl_disk']:7.0f} MB/s  (the same work as ours)"
    )
    print(f"HTTPSDatastoreTransport + copy_file   {mb / best['ours']:7.0f} MB/s  (hash + write + fsync)")
    print(
        f"ratio vs curl|openssl: {best['curl'] / best['ours']:.2f}; vs curl|tee|openssl+sync: "
        f"{best['curl_disk'] / best['ours']:.2f}"
    )
    subprocess.run(["chmod", "-R", "u+w", str(work)], check=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
