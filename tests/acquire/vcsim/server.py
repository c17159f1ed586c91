"""govmomi's vcsim on loopback for tests: built once per machine from Debian's source, served over TLS.

The launcher (main.go beside this file) is compiled offline against golang-github-vmware-govmomi-dev
(``GO111MODULE=off``; the Go module proxy is not reachable) and cached under
``$XDG_CACHE_HOME/vmforensics-tests/vcsim-<hash of main.go>/vcsim``. Each server gets its own
certificate and its own TMPDIR, where vcsim keeps its datastores as real directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import shutil
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

LAUNCHER = Path(__file__).with_name("main.go")
GOPATH_SYSTEM = "/usr/share/gocode"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(LAUNCHER.read_bytes()).hexdigest()[:16]
    return base / "vmforensics-tests" / f"vcsim-{digest}"


def build() -> Path:
    """The launcher binary, compiled on first use (about 20 s) and reused afterwards."""
    target = cache_dir() / "vcsim"
    if target.exists():
        return target
    if shutil.which("go") is None or not Path(GOPATH_SYSTEM, "src/github.com/vmware/govmomi").is_dir():
        raise RuntimeError("vcsim needs Debian's golang-go and golang-github-vmware-govmomi-dev")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test processes: one builds, the others wait
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="vcsim-build-") as work:
            source = Path(work, "src", "vcsimlauncher")
            source.mkdir(parents=True)
            shutil.copy(LAUNCHER, source / "main.go")
            env = dict(
                os.environ,
                GO111MODULE="off",
                GOPATH=f"{work}:{GOPATH_SYSTEM}",
                GOCACHE=str(target.parent / "gocache"),
            )
            partial = target.with_suffix(".partial")
            subprocess.run(["go", "build", "-o", str(partial), "."], cwd=source, env=env, check=True)
            partial.rename(target)
    return target


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """An RSA-2048 self-signed certificate for 127.0.0.1, 127.0.0.2 and localhost."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "30",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class VCSim:
    """A running vcsim in ``workdir``: the vCenter model (DC0, hosts, a cluster, LocalDS_0, VMs
    DC0_H0_VM0/1...) or with ``esx=True`` a standalone ESXi host (ha-datacenter, LocalDS_0, VMs
    ha-host_VM0/1)."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        user: str = "ir-examiner",
        password: str = "s3cret!",
        esx: bool = False,
    ):
        self.workdir = Path(workdir)
        self.host = host
        self.user = user
        self.password = password
        self.esx = esx
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.datastores = self.workdir / "datastores"

    def start(self) -> VCSim:
        binary = build()
        self.datastores.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = make_certificate(self.workdir)
        command = [
            str(binary),
            "-listen",
            f"{self.host}:0",
            "-cert",
            str(self.cert),
            "-key",
            str(self.key),
            "-user",
            self.user,
            "-password",
            self.password,
        ]
        if self.esx:
            command.append("-esx")
        self.log = open(self.workdir / "vcsim.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=dict(os.environ, TMPDIR=str(self.datastores)),
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("https://"):
            self.stop()
            raise RuntimeError(f"vcsim did not start: {line!r}; see {self.workdir / 'vcsim.log'}")
        self.port = urlsplit(line).port or 443
        return self

    @property
    def kind(self) -> str:
        """``"esx"`` (a standalone host: HostAgent API, ``ha-datacenter``) or ``"vcenter"``."""
        return "esx" if self.esx else "vcenter"

    @property
    def vms(self) -> tuple[str, str]:
        """The two VMs of the first host (the ESX inventory names them after its ``ha-host``)."""
        return ("ha-host_VM0", "ha-host_VM1") if self.esx else ("DC0_H0_VM0", "DC0_H0_VM1")

    @property
    def vm(self) -> str:
        return self.vms[0]

    @property
    def datacenter(self) -> str:
        return "ha-datacenter" if self.esx else "DC0"

    @property
    def thumbprint_sha256(self) -> str:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.cert.read_text())).hexdigest()

    def datastore_dir(self, name: str = "LocalDS_0") -> Path:
        found = sorted(self.datastores.glob(f"govcsim-*-{name}-*"))
        if len(found) != 1:
            raise RuntimeError(f"expected one directory for datastore {name}, found {found}")
        return found[0]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(AttributeError):
            self.log.close()

    def __enter__(self) -> VCSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
