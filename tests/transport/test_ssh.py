"""SSHTransport against a real OpenSSH sshd on loopback; the oracle is the file on local disk."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.transport.conftest import SSH_TEST_USER
from tests.transport.sshd import SSHServer, fingerprint, keygen
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    SourceChangedError,
    SourceError,
    UsageError,
)
from vmforensics.transport.ssh import SSHTransport
from vmforensics.transport.ssh_streams import ProcessSource

PLANES = ["openssh", "exec", "sftp"]


def connect(server: SSHServer, **options) -> SSHTransport:
    options.setdefault("known_hosts", server.known_hosts)
    return SSHTransport(
        server.host, port=server.port, user=server.user, identity=server.client_key, **options
    )


def read_all(transport: SSHTransport, path: str, offset: int = 0) -> bytes:
    stream = transport.open_read(path, offset)
    buffer = memoryview(bytearray(1 << 20))
    parts = []
    try:
        while count := stream.readinto(buffer):
            parts.append(bytes(buffer[:count]))
    finally:
        stream.close()
    return b"".join(parts)


def sha256_resuming(transport: SSHTransport, path: str, max_failures: int = 20) -> tuple[str, int]:
    """Stream ``path`` to the end, reconnecting and reopening at the offset reached after each drop."""
    digest = hashlib.sha256()
    done = failures = 0
    buffer = memoryview(bytearray(1 << 20))
    while True:
        try:
            stream = transport.open_read(path, done)
            try:
                while count := stream.readinto(buffer):
                    digest.update(buffer[:count])
                    done += count
            finally:
                stream.close()
            return digest.hexdigest(), failures
        except ConnectionError_:
            failures += 1
            assert failures <= max_failures, "too many failures"
            transport.reconnect()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int, seed: int = 1) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as f:
        for start in range(0, size, 1 << 20):
            f.write(rng.randbytes(min(1 << 20, size - start)))
    return path


@pytest.fixture(scope="module")
def public_dir() -> Iterator[Path]:
    """A directory the unprivileged password-test user can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vmf-ssh-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def sample(public_dir: Path) -> Path:
    path = write_random(public_dir / "sample.bin", 3 * 1024 * 1024 + 12345)
    path.chmod(0o644)
    return path


# -- host-key verification ------------------------------------------------------------------------


def test_known_host_key_is_accepted_and_recorded(sshd: SSHServer) -> None:
    with connect(sshd) as transport:
        facts = transport.describe()
    assert facts["host_verification"] == "known_hosts"
    assert facts["host_key_fingerprint"] == sshd.host_key_fingerprint
    assert (facts["host"], facts["port"], facts["user"]) == (sshd.host, sshd.port, sshd.user)
    assert "password" not in str(facts).lower().replace("'auth': 'publickey'", "")


def test_unknown_host_key_is_refused_naming_the_key_seen(sshd: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostVerificationError) as caught:
        connect(sshd, known_hosts=empty)
    assert caught.value.fingerprint == sshd.host_key_fingerprint
    assert sshd.host_key_fingerprint in str(caught.value)


def test_changed_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {' '.join(other.split()[:2])}\n")
    with pytest.raises(HostVerificationError, match="CHANGED") as caught:
        connect(sshd, known_hosts=known)
    assert caught.value.fingerprint == sshd.host_key_fingerprint
    assert fingerprint(other) in str(caught.value)


def test_pinned_fingerprint_is_accepted(sshd: SSHServer) -> None:
    with connect(sshd, known_hosts=None, host_key_fingerprint=sshd.host_key_fingerprint) as transport:
        assert transport.describe()["host_verification"] == "pinned"


def test_wrong_pinned_fingerprint_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    wrong = fingerprint(keygen(tmp_path / "other"))
    with pytest.raises(HostVerificationError, match="not the pinned") as caught:
        connect(sshd, known_hosts=None, host_key_fingerprint=wrong)
    assert caught.value.fingerprint == sshd.host_key_fingerprint


@pytest.mark.parametrize("pin", ["MD5:aa:bb", "SHA256:short", "ab" * 32])
def test_malformed_pin_is_a_usage_error(sshd: SSHServer, pin: str) -> None:
    with pytest.raises(UsageError):
        connect(sshd, known_hosts=None, host_key_fingerprint=pin)


def test_insecure_opt_out_is_visible_in_describe(sshd: SSHServer) -> None:
    with connect(sshd, known_hosts=None, insecure_accept_any_host_key=True) as transport:
        facts = transport.describe()
    assert facts["host_verification"] == "insecure-opt-out"
    assert facts["host_key_fingerprint"] == sshd.host_key_fingerprint


def test_reconnect_refuses_a_host_key_that_changed_since_the_first_connection(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "srv").start()
    try:
        transport = SSHTransport(
            server.host,
            port=server.port,
            user=server.user,
            identity=server.client_key,
            insecure_accept_any_host_key=True,
        )
        server.stop()
        replacement = SSHServer(tmp_path / "impostor", port=server.port).start()
        try:
            with pytest.raises(HostVerificationError, match="CHANGED"):
                transport.reconnect()
        finally:
            replacement.stop()
    finally:
        server.stop()


# -- authentication -------------------------------------------------------------------------------


def test_password_authentication_reads_the_file(sshd_password: SSHServer, sample: Path) -> None:
    user, password = SSH_TEST_USER
    with SSHTransport(
        sshd_password.host,
        port=sshd_password.port,
        user=user,
        password=password,
        known_hosts=sshd_password.known_hosts,
    ) as transport:
        assert read_all(transport, str(sample)) == sample.read_bytes()
        facts = transport.describe()
    assert facts["auth"] == "password"
    assert facts["data_plane"] == "exec"  # the system ssh client would prompt for a password
    assert password not in repr(facts)


def test_agent_authentication_feeds_both_control_and_data_plane(
    sshd: SSHServer, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.run(
        ["ssh-agent", "-a", str(socket_path), "-s"], capture_output=True, text=True, check=True
    )
    agent_pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], check=True, capture_output=True)
        with SSHTransport(
            sshd.host, port=sshd.port, user=sshd.user, known_hosts=sshd.known_hosts
        ) as transport:
            assert read_all(transport, str(sample), 7) == sample.read_bytes()[7:]
            facts = transport.describe()
        assert (facts["auth"], facts["data_plane"]) == ("agent", "openssh")
    finally:
        os.kill(agent_pid, signal.SIGTERM)


def test_wrong_password_is_refused(sshd_password: SSHServer) -> None:
    with pytest.raises(AuthenticationError):
        SSHTransport(
            sshd_password.host,
            port=sshd_password.port,
            user=SSH_TEST_USER[0],
            password="not the password",
            known_hosts=sshd_password.known_hosts,
        )


def test_unreadable_file_is_a_source_error(sshd_password: SSHServer, public_dir: Path) -> None:
    secret = public_dir / "secret.bin"
    secret.write_bytes(b"x" * 100)
    secret.chmod(0o600)
    user, password = SSH_TEST_USER
    with (
        SSHTransport(
            sshd_password.host,
            port=sshd_password.port,
            user=user,
            password=password,
            known_hosts=sshd_password.known_hosts,
        ) as transport,
        pytest.raises(SourceError),
    ):
        transport.open_read(str(secret))


# -- reading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("plane", PLANES)
def test_open_read_at_offsets_matches_the_file(sshd: SSHServer, sample: Path, plane: str) -> None:
    data = sample.read_bytes()
    with connect(sshd, data_plane=plane) as transport:
        for offset in (0, 1, 65537, len(data) // 2, len(data) - 1, len(data)):
            assert read_all(transport, str(sample), offset) == data[offset:], offset
        assert transport.describe()["data_plane"] == plane


def test_auto_data_plane_uses_the_system_ssh_client_for_every_file(sshd: SSHServer, sample: Path) -> None:
    with connect(sshd) as transport:
        stream = transport.open_read(str(sample), 1)
        assert isinstance(stream._source, ProcessSource)
        stream.close()
        assert read_all(transport, str(sample), 1) == sample.read_bytes()[1:]
        assert transport.describe()["data_plane"] == "openssh"


def test_exec_disabled_falls_back_to_sftp_with_identical_bytes(
    sshd_sftp_only: SSHServer, sample: Path
) -> None:
    with connect(sshd_sftp_only) as transport:
        assert read_all(transport, str(sample)) == sample.read_bytes()
        assert read_all(transport, str(sample), 1000) == sample.read_bytes()[1000:]
        assert transport.describe()["data_plane"] == "sftp"
        assert transport.remote_hash(str(sample)) is None


@pytest.mark.parametrize("compress", [True, "gzip", "zstd", "ssh"])
@pytest.mark.parametrize("plane", ["openssh", "exec"])
def test_compressed_transfer_stores_the_original_bytes(
    sshd: SSHServer, tmp_path: Path, compress: str | bool, plane: str
) -> None:
    mostly_zeros = tmp_path / "thin.raw"
    rng = random.Random(5)
    mostly_zeros.write_bytes(b"".join(rng.randbytes(4096) + bytes(60000) for _ in range(40)))
    data = mostly_zeros.read_bytes()
    with connect(sshd, data_plane=plane, compress=compress) as transport:
        assert read_all(transport, str(mostly_zeros)) == data
        assert read_all(transport, str(mostly_zeros), 70001) == data[70001:]
        expected = {True: "zstd", "gzip": "gzip", "zstd": "zstd", "ssh": "ssh"}[compress]
        assert transport.describe()["compression"] == expected


def test_remote_hash_matches_the_local_digest(sshd: SSHServer, sample: Path) -> None:
    with connect(sshd) as transport:
        assert transport.remote_hash(str(sample)) == sha256_file(sample)
        assert transport.remote_hash(str(sample), "md5") == hashlib.md5(sample.read_bytes()).hexdigest()
        assert transport.remote_hash(str(sample), "whirlpool") is None


def test_untrusted_path_is_never_interpreted_by_the_remote_shell(sshd: SSHServer, tmp_path: Path) -> None:
    canary = Path.home() / "vmf-pwned"  # the remote shell's working directory is the user's home
    canary.unlink(missing_ok=True)
    hostile = tmp_path / "-a b;touch vmf-pwned;$(touch vmf-pwned)'\"`touch vmf-pwned`\n>x"
    hostile.write_bytes(b"evidence\n" * 1000)
    for plane in ("openssh", "exec"):
        with connect(sshd, data_plane=plane) as transport:
            assert read_all(transport, str(hostile), 3) == hostile.read_bytes()[3:]
            assert transport.remote_hash(str(hostile)) == sha256_file(hostile)
    assert not canary.exists()


def test_missing_file_and_directory_are_source_errors(sshd: SSHServer, tmp_path: Path) -> None:
    with connect(sshd) as transport:
        with pytest.raises(SourceError):
            transport.stat(str(tmp_path / "absent"))
        with pytest.raises(SourceError):
            transport.open_read(str(tmp_path / "absent"))
        with pytest.raises(SourceError):
            transport.open_read(str(tmp_path))
        with pytest.raises(SourceError):
            transport.listdir(str(tmp_path / "absent"))


def test_stat_listdir_and_walk_report_symlinks_without_following(sshd: SSHServer, tmp_path: Path) -> None:
    root = tmp_path / "datastore"
    (root / "vm" / "deep").mkdir(parents=True)
    (root / "vm" / "disk-flat.vmdk").write_bytes(b"d" * 4096)
    (root / "vm" / "deep" / "vmware.log").write_bytes(b"log\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "not-evidence").write_bytes(b"o")
    (root / "vm" / "link-to-disk").symlink_to(root / "vm" / "disk-flat.vmdk")
    (root / "vm" / "link-to-dir").symlink_to(outside)
    with connect(sshd) as transport:
        entries = {Path(e.path).name: e for e in transport.listdir(str(root / "vm"))}
        assert set(entries) == {"deep", "disk-flat.vmdk", "link-to-disk", "link-to-dir"}
        assert entries["disk-flat.vmdk"].path == str(root / "vm" / "disk-flat.vmdk")
        assert entries["disk-flat.vmdk"].size == 4096 and not entries["disk-flat.vmdk"].is_symlink
        assert entries["deep"].is_dir
        assert entries["link-to-dir"].is_symlink and entries["link-to-disk"].is_symlink
        walked = sorted(e.path for e in transport.walk(str(root)))
        info = transport.stat(str(root / "vm" / "link-to-disk"))
        assert transport.stat(str(root / "vm" / "disk-flat.vmdk")).mtime == pytest.approx(
            (root / "vm" / "disk-flat.vmdk").stat().st_mtime, abs=1
        )
    assert walked == sorted(
        str(root / "vm" / name)
        for name in ("deep/vmware.log", "disk-flat.vmdk", "link-to-disk", "link-to-dir")
    )
    assert info.is_symlink and info.size == 4096


@pytest.mark.parametrize("plane", PLANES)
def test_file_truncated_mid_transfer_raises_instead_of_a_short_read(
    sshd: SSHServer, tmp_path: Path, plane: str
) -> None:
    victim = write_random(tmp_path / "shrinking.bin", 48 * 1024 * 1024)
    with connect(sshd, data_plane=plane) as transport:
        before = transport.stat(str(victim))
        stream = transport.open_read(str(victim))
        buffer = memoryview(bytearray(1 << 20))
        assert stream.readinto(buffer) > 0
        os.truncate(victim, 4 * 1024 * 1024)
        with pytest.raises(ConnectionError_):
            while stream.readinto(buffer):
                pass
        stream.close()
        after = transport.stat(str(victim))
        assert after.size != before.size
        with pytest.raises(SourceChangedError):
            transport.open_read(str(victim), before.size // 2)


def test_file_growing_mid_transfer_yields_the_stated_size_and_a_changed_stat(
    sshd: SSHServer, tmp_path: Path
) -> None:
    log = write_random(tmp_path / "vmware.log", 8 * 1024 * 1024)
    original = log.read_bytes()
    with connect(sshd) as transport:
        before = transport.stat(str(log))
        stream = transport.open_read(str(log))
        buffer = memoryview(bytearray(1 << 20))
        got = bytearray(buffer[: stream.readinto(buffer)])
        with log.open("ab") as f:
            f.write(b"appended during acquisition\n" * 1000)
        while count := stream.readinto(buffer):
            got += buffer[:count]
        stream.close()
        after = transport.stat(str(log))
    assert bytes(got) == original
    assert (after.size, after.mtime) != (before.size, before.mtime) or after.size > before.size


# -- URL and jump host ----------------------------------------------------------------------------


def test_from_url_opens_the_transport_and_path(sshd: SSHServer, sample: Path) -> None:
    url = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{sample}"
    transport, path = SSHTransport.from_url(
        url, identity=sshd.client_key, known_hosts=sshd.known_hosts, port=1
    )
    with transport:
        assert path == str(sample)
        assert transport.stat(path).size == sample.stat().st_size
    bare = f"ssh://{sshd.host}{sample}"  # user and port from the keywords
    transport, _ = SSHTransport.from_url(
        bare, user=sshd.user, port=sshd.port, identity=sshd.client_key, known_hosts=sshd.known_hosts
    )
    with transport:
        assert transport.describe()["port"] == sshd.port


def test_password_in_url_is_refused() -> None:
    with pytest.raises(UsageError, match="passwords never go in URLs"):
        SSHTransport.from_url("ssh://root:hunter2@127.0.0.1:22/etc/hostname")


def test_jump_host_reaches_the_target(sshd: SSHServer, sample: Path) -> None:
    with connect(sshd) as bastion, connect(sshd, jump=bastion) as target:
        assert read_all(target, str(sample), 5) == sample.read_bytes()[5:]
        facts = target.describe()
    assert facts["data_plane"] == "exec"
    assert facts["jump"]["host_key_fingerprint"] == sshd.host_key_fingerprint


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("plane", ["openssh", "exec"])
def test_cut_connections_resume_to_the_exact_digest(
    sshd: SSHServer, fault_proxy, tmp_path: Path, plane: str
) -> None:
    """10 copies per data plane through copy_file, each with the link cut at a random byte."""
    source = write_random(tmp_path / "disk.raw", 3 * 1024 * 1024 + 777, seed=7)
    expected = sha256_file(source)
    proxy = fault_proxy((sshd.host, sshd.port))
    rng = random.Random(2026)
    with SSHTransport(
        proxy.host,
        port=proxy.port,
        user=sshd.user,
        identity=sshd.client_key,
        host_key_fingerprint=sshd.host_key_fingerprint,
        data_plane=plane,
    ) as transport:
        read_all(transport, str(source), source.stat().st_size - 10)  # settle the data plane first
        for trial in range(10):
            cuts_before = proxy.cuts
            cut = rng.randrange(20_000, 3_000_000)
            # reconnect() dials paramiko's connection (it carries the exec plane's bytes), then the
            # OpenSSH master connection whose sessions carry the openssh plane's streams
            if plane == "exec":
                proxy.cut_after(cut)
            else:
                proxy.cut_after(None, cut)
            transport.reconnect()
            evidence = EvidenceDirectory(tmp_path / f"case-{plane}-{trial}")
            record = copy_file(transport, str(source), evidence, "disk.raw", retries=10, backoff=0.01)
            assert record.hashes["sha256"] == expected
            assert record.size == source.stat().st_size
            assert record.reconnections >= 1 and proxy.cuts > cuts_before
            assert not record.changed_during_acquisition


def test_openssh_streams_share_one_master_connection_and_survive_its_loss(
    sshd: SSHServer, fault_proxy, sample: Path
) -> None:
    """Streams are sessions on the master connection (no new TCP connection); a cut master is redialled."""
    proxy = fault_proxy((sshd.host, sshd.port))
    expected = sample.read_bytes()
    with SSHTransport(
        proxy.host,
        port=proxy.port,
        user=sshd.user,
        identity=sshd.client_key,
        host_key_fingerprint=sshd.host_key_fingerprint,
        data_plane="openssh",
        compress="zstd",
    ) as transport:
        assert read_all(transport, str(sample)) == expected
        dialled = proxy.connections
        for offset in (0, 1, 4097):
            assert read_all(transport, str(sample), offset) == expected[offset:]
        assert proxy.connections == dialled
        proxy.cut_after(None, 0)  # reconnect: paramiko lives, the new master dies at once
        transport.reconnect()
        assert read_all(transport, str(sample), 3) == expected[3:]  # its own connection, or a new master
        assert proxy.connections > dialled + 2


def test_killed_sshd_sessions_resume_to_the_exact_digest(sshd: SSHServer, tmp_path: Path) -> None:
    source = write_random(tmp_path / "memory.vmem", 24 * 1024 * 1024, seed=9)
    expected = sha256_file(source)
    with connect(sshd) as transport:
        for trial in range(3):
            killer = threading.Timer(0.05 + 0.05 * trial, sshd.kill_sessions)
            killer.start()
            evidence = EvidenceDirectory(tmp_path / f"case-{trial}")
            record = copy_file(transport, str(source), evidence, "memory.vmem", retries=10, backoff=0.01)
            killer.join()
            assert record.hashes["sha256"] == expected


def test_a_link_dropped_before_the_first_stat_reconnects_and_copies(sshd: SSHServer, tmp_path: Path) -> None:
    """The opening stat is retried like the reads: a connection killed before the copy begins."""
    source = write_random(tmp_path / "disk.vmdk", 1024 * 1024, seed=4)
    with connect(sshd) as transport:
        transport.stat(str(source))  # the SFTP session is up ...
        assert sshd.kill_sessions() >= 1  # ... and dies before copy_file's first request
        record = copy_file(
            transport, str(source), EvidenceDirectory(tmp_path / "case"), "disk.vmdk", retries=3, backoff=0.01
        )
    assert record.hashes["sha256"] == sha256_file(source)


def test_copy_records_a_matching_remote_hash(sshd: SSHServer, sample: Path, tmp_path: Path) -> None:
    with connect(sshd) as transport:
        record = copy_file(
            transport, str(sample), EvidenceDirectory(tmp_path / "case"), "sample.bin", remote_hash=True
        )
    assert record.remote_hash is not None and record.remote_hash.matched is True
    assert record.remote_hash.value == sha256_file(sample)


def test_file_past_the_paramiko_rekey_boundary(sshd: SSHServer, tmp_path: Path) -> None:
    """600 MiB over a paramiko exec channel: past paramiko's default 2**29-byte rekey point."""
    big = tmp_path / "big.raw"
    with big.open("wb") as f:
        block = random.Random(3).randbytes(1 << 20)
        for index in range(600):
            f.write(index.to_bytes(8, "little") + block[8:])
    try:
        with connect(sshd, data_plane="exec") as transport:
            digest, _failures = sha256_resuming(transport, str(big))
        assert digest == sha256_file(big)
    finally:
        big.unlink()


def test_server_initiated_rekeys_mid_stream(tmp_path: Path) -> None:
    """sshd rekeys every 4 MiB: many key exchanges while data flows and as channels close."""
    source = write_random(tmp_path / "rekeyed.bin", 40 * 1024 * 1024 + 3, seed=11)
    with SSHServer(tmp_path / "srv", extra_config="RekeyLimit 4M\n") as server:
        for plane in ("exec", "sftp"):
            with connect(server, data_plane=plane) as transport:
                digest, _failures = sha256_resuming(transport, str(source))
                assert digest == sha256_file(source)


# -- commands: run() and open_command() -----------------------------------------------------------


def test_run_quotes_every_argument_and_returns_status_and_both_streams(
    sshd: SSHServer, tmp_path: Path
) -> None:
    canary = Path.home() / "vmf-run-pwned"  # the remote shell's working directory is the user's home
    canary.unlink(missing_ok=True)
    hostile = [
        "-n",
        "a b;touch vmf-run-pwned",
        "$(touch vmf-run-pwned)",
        "'\"`touch vmf-run-pwned`",
        "x\ny",
        "",
    ]
    with connect(sshd) as transport:
        echoed = transport.run(["printf", "%s\\0", *hostile])
        failed = transport.run(["sh", "-c", "echo out; echo 'err or' >&2; exit 3"])
        missing = transport.run(["vmforensics-no-such-command", "x"])
    assert echoed.status == 0 and echoed.stdout.split(b"\0")[:-1] == [a.encode() for a in hostile]
    assert echoed.stderr == b"" and not echoed.truncated and echoed.argv[0] == "printf"
    assert (failed.status, failed.stdout, failed.stderr) == (3, b"out\n", b"err or\n")
    assert missing.status == 127 and b"not found" in missing.stderr
    assert not canary.exists()


def test_run_keeps_bounded_output_and_drains_both_streams(sshd: SSHServer) -> None:
    """8 MB on stdout and stderr together (beyond paramiko's 2 MiB window): no stall, 1 KiB kept each."""
    script = "head -c 4000000 /dev/zero >&2; head -c 4000000 /dev/zero; head -c 10 /dev/zero >&2"
    with connect(sshd) as transport:
        result = transport.run(["sh", "-c", script], output_limit=1024)
    assert result.status == 0 and result.truncated
    assert (len(result.stdout), result.stdout_size) == (1024, 4_000_000)
    assert (len(result.stderr), result.stderr_size) == (1024, 4_000_010)


def test_run_that_does_not_finish_in_time_is_a_source_error(sshd: SSHServer) -> None:
    with connect(sshd) as transport:
        with pytest.raises(SourceError, match="did not finish within"):
            transport.run(["sleep", "30"], timeout=0.5)
        assert transport.run(["true"]).status == 0  # the connection is still usable


@pytest.mark.parametrize("argv", [[], "ls -l", ["ls", b"-l"], ["printf", "a\0b"]])
def test_run_takes_only_a_list_of_strings(sshd: SSHServer, argv: object) -> None:
    with connect(sshd) as transport, pytest.raises(UsageError):
        transport.run(argv)  # type: ignore[arg-type]


def test_open_command_gives_a_long_lived_channel_for_a_shell(sshd: SSHServer) -> None:
    with connect(sshd) as transport:
        channel = transport.open_command(["sh"])
        try:
            channel.settimeout(10)
            channel.sendall(b"echo first\n")
            assert channel.recv(100) == b"first\n"
            channel.sendall(b"echo second; exit 7\n")
            assert channel.recv(100) == b"second\n"
            assert channel.recv_exit_status() == 7
        finally:
            channel.close()


def _wait_until_dropped(transport: SSHTransport) -> None:
    """Until paramiko's reader thread has seen the killed connection (private: the test's only way)."""
    for _ in range(100):
        link = transport._client.get_transport() if transport._client else None
        if link is None or not link.is_active():
            return
        time.sleep(0.05)
    raise AssertionError("the connection was not seen to drop")


def test_run_redials_a_dropped_connection_held_to_the_same_host_key(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "srv").start()
    try:
        transport = connect(server)
        seen = transport.describe()["host_key_fingerprint"]
        assert server.kill_sessions() >= 1
        _wait_until_dropped(transport)
        assert transport.run(["echo", "again"]).stdout == b"again\n"
        assert transport.describe()["host_key_fingerprint"] == seen
        server.kill_sessions()
        _wait_until_dropped(transport)
        server.stop()
        impostor = SSHServer(tmp_path / "impostor", port=server.port).start()
        try:
            with pytest.raises(HostVerificationError):
                transport.open_command(["sh"])
        finally:
            impostor.stop()
        transport.close()
    finally:
        server.stop()
