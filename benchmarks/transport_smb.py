"""SMB acquisition speed: vmforensics' SMBTransport vs Samba's smbclient piped into OpenSSL.

    python benchmarks/transport_smb.py [--size 1024] [--rounds 3] [--workdir DIR] [--encrypt]

Starts a private smbd on 127.0.0.1 (tests/transport/smbd.py) sharing one random file of --size MiB,
then, round after round so that load from other processes hits all of them alike, measures:

- reference: ``smbclient -p N //127.0.0.1/evidence -U … -c 'get f -' | openssl dgst -sha256``
- transport: SMBTransport.open_read + hashlib.sha256 on the same thread
- copy_file: the streaming copier into an evidence directory (SHA-256 on the writer's thread, fsync)

Every run's SHA-256 is checked against the file's. Prints MB/s (best and median of the rounds),
the ratio of each vmforensics path to the reference, and the client's CPU seconds per GiB (user +
system, all threads; for the reference the smbclient and openssl processes) -- a figure that
other load on the machine does not distort the way wall-clock speed is distorted. ``--encrypt`` makes the server require
SMB 3 encryption (smbclient is then run with ``--client-protection=encrypt``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.transport.smbd import SmbServer  # noqa: E402
from vmforensics.acquire.copier import copy_file  # noqa: E402
from vmforensics.custody.evidence import EvidenceDirectory  # noqa: E402
from vmforensics.transport.smb import SMBTransport  # noqa: E402

MiB = 1 << 20


def make_source(directory: Path, size_mib: int) -> tuple[Path, str]:
    path = directory / "random.bin"
    if not path.exists() or path.stat().st_size != size_mib * MiB:
        with path.open("wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(MiB))
    path.chmod(0o644)
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(8 * MiB):
            digest.update(block)
    return path, digest.hexdigest()


def reference(server: SmbServer, name: str, encrypt: bool) -> str:
    protection = " --client-protection=encrypt" if encrypt else ""
    command = (
        f"smbclient -p {server.port}{protection} //127.0.0.1/evidence -U '{server.user}%{server.password}' "
        f"-c 'get {name} -' 2>/dev/null | openssl dgst -sha256"
    )
    out = subprocess.run(command, shell=True, check=True, capture_output=True, text=True).stdout
    return out.split("=")[-1].strip()


def transport_hash(server: SmbServer, name: str, encrypt: bool) -> str:
    with SMBTransport(
        "127.0.0.1",
        "evidence",
        user=server.user,
        password=server.password,
        port=server.port,
        encrypt=True if encrypt else None,
    ) as transport:
        digest = hashlib.sha256()
        view = memoryview(bytearray(8 * MiB))
        stream = transport.open_read("/" + name)
        while count := stream.readinto(view):
            digest.update(view[:count])
        stream.close()
        return digest.hexdigest()


def copier_hash(server: SmbServer, name: str, encrypt: bool, workdir: Path) -> str:
    case = workdir / "case"
    shutil.rmtree(case, ignore_errors=True)
    try:
        with SMBTransport(
            "127.0.0.1",
            "evidence",
            user=server.user,
            password=server.password,
            port=server.port,
            encrypt=True if encrypt else None,
        ) as transport:
            record = copy_file(transport, "/" + name, EvidenceDirectory(case), name)
        return record.hashes["sha256"]
    finally:
        shutil.rmtree(case, ignore_errors=True)


def _cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of its finished children (the pipeline)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the source file here between runs")
    parser.add_argument("--encrypt", action="store_true", help="server requires SMB 3 encryption")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmf-bench-smb-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    share = workdir / "share"
    share.mkdir(exist_ok=True)
    share.chmod(0o755)
    source, expected = make_source(share, args.size)
    size = source.stat().st_size
    runs: dict[str, Callable[[], str]] = {}
    with SmbServer({"evidence": share}, encrypt="required" if args.encrypt else "if_required") as server:
        runs = {
            "smbclient | openssl dgst": lambda: reference(server, source.name, args.encrypt),
            "SMBTransport + hashlib": lambda: transport_hash(server, source.name, args.encrypt),
            "copy_file (evidence dir)": lambda: copier_hash(server, source.name, args.encrypt, workdir),
        }
        speeds: dict[str, list[float]] = {label: [] for label in runs}
        cpu: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, run in runs.items():
                cpu_before = _cpu_seconds()
                start = time.perf_counter()
                digest = run()
                elapsed = time.perf_counter() - start
                if digest != expected:
                    raise SystemExit(f"{label}: SHA-256 {digest} != {expected}")
                speeds[label].append(size / elapsed / 1e6)
                cpu[label].append((_cpu_seconds() - cpu_before) / (size / (1 << 30)))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    mode = "encrypted" if args.encrypt else "signed"
    print(f"SMB 3.1.1 ({mode}) on 127.0.0.1, {args.size} MiB random file, {args.rounds} rounds, MB/s")
    reference_label = next(iter(speeds))
    base_best = max(speeds[reference_label])
    base_median = statistics.median(speeds[reference_label])
    for label, values in speeds.items():
        best, median = max(values), statistics.median(values)
        ratio = (
            ""
            if label == reference_label
            else f"  ratio best {best / base_best:.2f}, median {median / base_median:.2f}"
        )
        cpu_per_gib = statistics.median(cpu[label])
        print(f"  {label:26s} best {best:5.0f}  median {median:5.0f}  CPU {cpu_per_gib:4.1f} s/GiB{ratio}")


if __name__ == "__main__":
    main()
