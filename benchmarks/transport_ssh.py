"""SSH transport throughput against the OpenSSH client, same machine, same run, ratios printed.

    python benchmarks/transport_ssh.py [--size-mib 1024] [--rounds 3] [--dir /tmp]

Starts a private sshd on 127.0.0.1 (tests/transport/sshd.py), writes a random file and a file
that is 90% zeros, then measures in interleaved rounds (the machine is shared: medians of rounds):
  reference  `ssh host cat f > /dev/null`           (the link's limit)
  reference  `ssh host cat f | openssl dgst -sha256` (what a careful examiner would type)
  ours       SSHTransport.open_read, consumer hashing SHA-256 on a worker thread (as EvidenceWriter)
             for each data plane, and for the zero-heavy file with on-the-fly compression
  ours       copy_file into an evidence directory (hash + write + fsync): what acquisition does
Every digest is checked against hashlib over the local file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.transport.sshd import SSHServer
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.transport.ssh import SSHTransport

MiB = 1 << 20


def write_files(directory: Path, size: int) -> tuple[Path, Path]:
    random_file, sparse_file = directory / "random.bin", directory / "zeros90.bin"
    with random_file.open("wb") as r, sparse_file.open("wb") as z:
        for _ in range(size // MiB):
            r.write(os.urandom(MiB))
            z.write(os.urandom(MiB // 10) + bytes(MiB - MiB // 10))
    return random_file, sparse_file


def local_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def ssh_argv(server: SSHServer) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-i", str(server.client_key), "-p", str(server.port),
        f"{server.user}@{server.host}",
    ]  # fmt: skip


def reference(server: SSHServer, path: Path, sink: str, options: str = "") -> float:
    """Seconds for the OpenSSH client pipeline (default options, as a user would type it)."""
    argv = ssh_argv(server)
    command = " ".join([*argv[:1], options, *argv[1:], f"cat {path}", sink])
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    if "openssl" in sink:
        reference.digest = done.stdout.split()[-1].decode()  # type: ignore[attr-defined]
    return elapsed


def ours(transport: SSHTransport, path: Path, expected: str) -> float:
    """Seconds to stream ``path`` with hashing on a worker thread; checks the digest."""
    free: queue.Queue[bytearray] = queue.Queue()
    work: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    for _ in range(4):
        free.put(bytearray(8 * MiB))
    digest = hashlib.sha256()

    def hasher() -> None:
        while (item := work.get()) is not None:
            buffer, count = item
            digest.update(memoryview(buffer)[:count])
            free.put(buffer)

    started = time.perf_counter()
    worker = threading.Thread(target=hasher)
    worker.start()
    stream = transport.open_read(str(path))
    try:
        while True:
            buffer = free.get()
            count = stream.readinto(memoryview(buffer))
            if not count:
                break
            work.put((buffer, count))
    finally:
        stream.close()
        work.put(None)
        worker.join()
    elapsed = time.perf_counter() - started
    if digest.hexdigest() != expected:
        raise SystemExit(f"WRONG DIGEST for {path} via {transport.describe()['data_plane']}")
    return elapsed


def through_copier(transport: SSHTransport, path: Path, expected: str, scratch: Path) -> float:
    case = Path(tempfile.mkdtemp(dir=scratch))
    started = time.perf_counter()
    record = copy_file(transport, str(path), EvidenceDirectory(case / "case"), path.name)
    elapsed = time.perf_counter() - started
    if record.hashes["sha256"] != expected:
        raise SystemExit("WRONG DIGEST through copy_file")
    subprocess.run(["rm", "-rf", str(case)], check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--skip-slow-planes", action="store_true", help="only the openssh data plane")
    args = parser.parse_args()
    size = args.size_mib * MiB
    scratch = Path(tempfile.mkdtemp(prefix="vmf-bench-ssh-", dir=args.dir))
    results: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        results.setdefault(name, []).append(size / seconds / 1e6)

    try:
        random_file, sparse_file = write_files(scratch, size)
        want = {random_file: local_sha256(random_file), sparse_file: local_sha256(sparse_file)}
        with SSHServer(scratch / "sshd") as server:

            def open_transport(**options: object) -> SSHTransport:
                return SSHTransport(
                    server.host,
                    port=server.port,
                    user=server.user,
                    identity=server.client_key,
                    known_hosts=server.known_hosts,
                    **options,
                )

            planes = ["openssh"] if args.skip_slow_planes else ["openssh", "exec"]
            transports = {plane: open_transport(data_plane=plane) for plane in planes}
            compressed = {codec: open_transport(compress=codec) for codec in ("zstd", "gzip")}
            for round_number in range(args.rounds):
                print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr)
                record("ref: ssh cat > /dev/null", reference(server, random_file, "> /dev/null"))
                record(
                    "ref: ssh cat | openssl dgst", reference(server, random_file, "| openssl dgst -sha256")
                )
                assert reference.digest == want[random_file]  # type: ignore[attr-defined]
                record(
                    "ref: ssh -c aes128-gcm cat | openssl dgst",
                    reference(server, random_file, "| openssl dgst -sha256", "-c aes128-gcm@openssh.com"),
                )
                assert reference.digest == want[random_file]  # type: ignore[attr-defined]
                for plane, transport in transports.items():
                    record(f"ours: {plane} + hash thread", ours(transport, random_file, want[random_file]))
                record(
                    "ours: copy_file (hash+write+fsync)",
                    through_copier(transports["openssh"], random_file, want[random_file], scratch),
                )
                record(
                    "zeros ref: ssh cat | openssl dgst",
                    reference(server, sparse_file, "| openssl dgst -sha256"),
                )
                for codec, transport in compressed.items():
                    record(
                        f"zeros ours: {codec} + hash thread", ours(transport, sparse_file, want[sparse_file])
                    )
                record(
                    "zeros ours: zstd copy_file (hash+write)",
                    through_copier(compressed["zstd"], sparse_file, want[sparse_file], scratch),
                )
                record(
                    "zeros ours: uncompressed", ours(transports["openssh"], sparse_file, want[sparse_file])
                )
            for transport in [*transports.values(), *compressed.values()]:
                transport.close()
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"\nSSH transport, {args.size_mib} MiB files over loopback, {args.rounds} rounds (MB/s, median [min-max])"
    )
    for name, values in results.items():
        print(f"  {name:40s} {median[name]:7.0f}  [{min(values):.0f}-{max(values):.0f}]")
    openssl, null = median["ref: ssh cat | openssl dgst"], median["ref: ssh cat > /dev/null"]
    zeros_ref = median["zeros ref: ssh cat | openssl dgst"]
    fair = median["ref: ssh -c aes128-gcm cat | openssl dgst"]
    print("\nratios (goal)")
    for name in median:
        if name.startswith("ours"):
            print(f"  {name:40s} {median[name] / openssl:5.2f}x openssl pipeline (>=1.0)  "
                  f"{median[name] / null:5.2f}x cat>/dev/null (>=0.8)  "
                  f"{median[name] / fair:5.2f}x same-cipher openssl pipeline")  # fmt: skip
        elif name.startswith("zeros ours"):
            print(f"  {name:40s} {median[name] / zeros_ref:5.2f}x openssl pipeline on the same file (>=3.0)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
