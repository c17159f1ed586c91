"""SMBTransport against a real Samba smbd on 127.0.0.1 (see smbd.py); the oracle is the local file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.transport.faultproxy import FaultProxy
from tests.transport.smbd import SmbServer
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    SourceChangedError,
    SourceError,
    UsageError,
)
from vmforensics.progress import Progress, ProgressUpdate
from vmforensics.transport.smb import SMBTransport

MiB = 1 << 20
rng = random.Random(20260117)


def _write_random(path: Path, size: int) -> None:
    path.write_bytes(rng.randbytes(size))
    path.chmod(0o644)


@pytest.fixture(scope="module")
def share_dir() -> Iterator[Path]:
    """Files the share user can read (pytest's tmp_path is not traversable by other users)."""
    root = Path(tempfile.mkdtemp(prefix="vmf-smb-share-"))
    root.chmod(0o755)
    _write_random(root / "disk.bin", 5 * MiB + 12345)
    _write_random(root / "fault.bin", 4 * MiB + 777)
    _write_random(root / "big.bin", 24 * MiB + 3)  # more than the copier's buffer plus reads in flight
    (root / "empty.bin").write_bytes(b"")
    (root / "empty.bin").chmod(0o644)
    (root / "VMs" / "web01").mkdir(parents=True)
    for directory in (root / "VMs", root / "VMs" / "web01"):
        directory.chmod(0o755)
    _write_random(root / "VMs" / "web01" / "web01.vmcx", 70_000)
    (root / "secret.bin").write_bytes(b"root only")
    (root / "secret.bin").chmod(0o600)
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def server(share_dir: Path) -> Iterator[SmbServer]:
    with SmbServer({"evidence": share_dir, "C$": share_dir}) as smbd:
        yield smbd


@pytest.fixture
def transport(server: SmbServer) -> Iterator[SMBTransport]:
    with SMBTransport(
        "127.0.0.1", "evidence", user=server.user, password=server.password, port=server.port
    ) as t:
        yield t


def _read_all(stream, buffer_size: int = MiB) -> bytes:
    chunks = []
    buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    while count := stream.readinto(view):
        chunks.append(bytes(view[:count]))
    stream.close()
    return b"".join(chunks)


# -- reading -----------------------------------------------------------------------------------


def test_whole_file_matches_the_source_byte_for_byte(transport: SMBTransport, share_dir: Path) -> None:
    assert _read_all(transport.open_read("/disk.bin")) == (share_dir / "disk.bin").read_bytes()


@pytest.mark.parametrize(
    "offset", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 4095, 5 * MiB + 12344, 5 * MiB + 12345, 6 * MiB]
)
def test_read_from_an_offset_returns_the_tail(transport: SMBTransport, share_dir: Path, offset: int) -> None:
    assert (
        _read_all(transport.open_read("disk.bin", offset)) == (share_dir / "disk.bin").read_bytes()[offset:]
    )


def test_odd_buffer_sizes_still_give_exact_bytes(transport: SMBTransport, share_dir: Path) -> None:
    stream = transport.open_read("/disk.bin", 777)
    assert _read_all(stream, buffer_size=77_777) == (share_dir / "disk.bin").read_bytes()[777:]


def test_small_pipeline_and_small_reads_give_exact_bytes(server: SmbServer, share_dir: Path) -> None:
    with SMBTransport(
        "127.0.0.1",
        "evidence",
        user=server.user,
        password=server.password,
        port=server.port,
        read_size=64 * 1024,
        outstanding_reads=1,
    ) as t:
        assert _read_all(t.open_read("/disk.bin", 5)) == (share_dir / "disk.bin").read_bytes()[5:]


def test_empty_file_reads_nothing(transport: SMBTransport) -> None:
    assert _read_all(transport.open_read("/empty.bin")) == b""


def test_unc_path_and_backslashes_name_the_same_file(
    transport: SMBTransport, server: SmbServer, share_dir: Path
) -> None:
    expected = (share_dir / "VMs" / "web01" / "web01.vmcx").read_bytes()
    assert _read_all(transport.open_read(server.unc("evidence", "VMs", "web01", "web01.vmcx"))) == expected
    assert _read_all(transport.open_read("VMs\\web01\\web01.vmcx")) == expected
    with pytest.raises(UsageError):
        transport.open_read(server.unc("other", "VMs"))


def test_admin_share_from_url(server: SmbServer, share_dir: Path) -> None:
    url = f"smb://WORKGROUP;{server.user}@127.0.0.1:{server.port}/C$/VMs/web01/web01.vmcx"
    t, path = SMBTransport.from_url(url, password=server.password)
    with t:
        assert (t.share, path, t.domain, t.user) == ("C$", "/VMs/web01/web01.vmcx", "WORKGROUP", server.user)
        assert _read_all(t.open_read(path)) == (share_dir / "VMs" / "web01" / "web01.vmcx").read_bytes()


# -- metadata ----------------------------------------------------------------------------------


def test_stat_reports_size_mtime_and_kind(transport: SMBTransport, share_dir: Path) -> None:
    facts = transport.stat("/disk.bin")
    local = os.stat(share_dir / "disk.bin")
    assert (facts.path, facts.size, facts.is_dir, facts.is_symlink) == (
        "/disk.bin",
        local.st_size,
        False,
        False,
    )
    assert facts.mtime == pytest.approx(local.st_mtime, abs=1e-5)
    assert transport.stat("/VMs").is_dir


def test_listdir_gives_full_paths_with_sizes(transport: SMBTransport, share_dir: Path) -> None:
    entries = {entry.path: entry for entry in transport.listdir("/")}
    assert set(entries) == {"/" + p.name for p in share_dir.iterdir()}
    assert entries["/disk.bin"].size == (share_dir / "disk.bin").stat().st_size
    assert entries["/disk.bin"].mtime == transport.stat("/disk.bin").mtime
    assert entries["/VMs"].is_dir
    assert [e.path for e in transport.walk("/VMs")] == ["/VMs/web01/web01.vmcx"]


def test_describe_names_the_dialect_and_signing_but_no_password(
    transport: SMBTransport, server: SmbServer
) -> None:
    facts = transport.describe()
    assert facts["transport"] == "smb"
    assert (facts["host"], facts["port"], facts["share"], facts["user"]) == (
        "127.0.0.1",
        server.port,
        "evidence",
        server.user,
    )
    assert facts["dialect"] == "3.1.1"
    assert facts["signing"] is True
    assert facts["encryption"] is False
    assert server.password not in repr(facts)


def test_required_encryption_is_used_and_reported(server: SmbServer, share_dir: Path) -> None:
    with SMBTransport(
        "127.0.0.1", "evidence", user=server.user, password=server.password, port=server.port, encrypt=True
    ) as t:
        assert t.describe()["encryption"] is True
        assert _read_all(t.open_read("/disk.bin", MiB)) == (share_dir / "disk.bin").read_bytes()[MiB:]


def test_encryption_is_used_when_the_server_offers_it(share_dir: Path) -> None:
    with (
        SmbServer({"evidence": share_dir}, encrypt="desired") as strict,
        SMBTransport(
            "127.0.0.1", "evidence", user=strict.user, password=strict.password, port=strict.port
        ) as t,
    ):
        assert t.describe()["encryption"] is True
        assert (
            _read_all(t.open_read("/VMs/web01/web01.vmcx"))
            == (share_dir / "VMs" / "web01" / "web01.vmcx").read_bytes()
        )


def test_required_encryption_is_refused_by_a_server_without_it(share_dir: Path) -> None:
    with (
        SmbServer({"evidence": share_dir}, encrypt="off") as plain,
        SMBTransport(
            "127.0.0.1", "evidence", user=plain.user, password=plain.password, port=plain.port, encrypt=True
        ) as t,
        pytest.raises(ConnectionError_, match="encryption"),
    ):
        t.stat("/disk.bin")


def test_negotiate_auth_works_with_a_password(server: SmbServer, share_dir: Path) -> None:
    with SMBTransport(
        "127.0.0.1",
        "evidence",
        user=server.user,
        password=server.password,
        port=server.port,
        auth="negotiate",
    ) as t:
        assert t.describe()["auth"] == "negotiate"
        assert (
            _read_all(t.open_read("/VMs/web01/web01.vmcx"))
            == (share_dir / "VMs" / "web01" / "web01.vmcx").read_bytes()
        )


# -- errors ------------------------------------------------------------------------------------


def test_wrong_password_is_an_authentication_error(server: SmbServer) -> None:
    t = SMBTransport("127.0.0.1", "evidence", user=server.user, password="wrong", port=server.port)
    with t, pytest.raises(AuthenticationError):
        t.stat("/disk.bin")


def test_nonexistent_share_is_a_source_error(server: SmbServer) -> None:
    with (
        SMBTransport(
            "127.0.0.1", "nosuch", user=server.user, password=server.password, port=server.port
        ) as t,
        pytest.raises(SourceError, match="share"),
    ):
        t.stat("/disk.bin")


@pytest.mark.parametrize("operation", ["stat", "listdir", "open_read"])
def test_nonexistent_file_is_a_source_error(transport: SMBTransport, operation: str) -> None:
    with pytest.raises(SourceError):
        getattr(transport, operation)("/VMs/missing.vhdx")


def test_listing_a_file_is_a_source_error(transport: SMBTransport) -> None:
    with pytest.raises(SourceError):
        transport.listdir("/disk.bin")


def test_unreadable_file_is_a_source_error(transport: SMBTransport) -> None:
    with pytest.raises(SourceError):
        transport.open_read("/secret.bin")


def test_closed_port_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t = SMBTransport("127.0.0.1", "evidence", user="u", password="p", port=port, timeout=5)
    with t, pytest.raises(ConnectionError_):
        t.stat("/")


@pytest.mark.parametrize(
    "url",
    [
        "smb://user:secret@host/share/f",  # password in the URL
        "smb://user@host",  # no share
        "smb://user@host/",  # no share
        "ssh://user@host/share/f",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        SMBTransport.from_url(url, password="p")


def test_url_without_domain_or_port_uses_defaults() -> None:
    t, path = SMBTransport.from_url(
        "smb://ir@hv01.lab/C$/ProgramData/Microsoft/Windows/Hyper-V", password="p"
    )
    assert (t.host, t.port, t.share, t.user, t.domain, path) == (
        "hv01.lab",
        445,
        "C$",
        "ir",
        None,
        "/ProgramData/Microsoft/Windows/Hyper-V",
    )


# -- changes and faults ------------------------------------------------------------------------


def test_file_growing_mid_transfer_is_visible_in_stat_and_flagged_by_the_copier(
    transport: SMBTransport, share_dir: Path, tmp_path: Path
) -> None:
    source = share_dir / "growing.bin"
    _write_random(source, 3 * MiB)
    original = source.read_bytes()
    try:
        before = transport.stat("/growing.bin")
        stream = transport.open_read("/growing.bin")
        head = bytearray(MiB)
        assert stream.readinto(memoryview(head)) == MiB
        with source.open("ab") as grow:
            grow.write(b"appended while copying")
        assert bytes(head) + _read_all(stream) == original  # the stream keeps the size it opened with
        assert transport.stat("/growing.bin").size == before.size + len(b"appended while copying")

        def grow_once(update: ProgressUpdate) -> None:
            if update.file_done and source.stat().st_size == before.size + 22:
                with source.open("ab") as grow:
                    grow.write(b"more")

        record = copy_file(
            transport,
            "/growing.bin",
            EvidenceDirectory(tmp_path / "case"),
            "growing.bin",
            progress=Progress(grow_once),
        )
        assert record.changed_during_acquisition
        assert record.size == before.size + 22  # what the source held when the copy began
    finally:
        source.unlink()


def test_file_shrinking_mid_transfer_raises_instead_of_ending_early(
    transport: SMBTransport, share_dir: Path
) -> None:
    source = share_dir / "shrinking.bin"
    _write_random(source, 4 * MiB)
    try:
        stream = transport.open_read("/shrinking.bin")
        os.truncate(source, MiB // 2)
        with pytest.raises(SourceChangedError):
            _read_all(stream)
    finally:
        source.unlink()


@pytest.fixture
def proxied(server: SmbServer, fault_proxy) -> Iterator[tuple[FaultProxy, SMBTransport]]:
    """A transport that reaches the server through a FaultProxy (plan cuts before connecting)."""
    proxy = fault_proxy(("127.0.0.1", server.port))
    with SMBTransport(
        "127.0.0.1", "evidence", user=server.user, password=server.password, port=proxy.port, timeout=10
    ) as t:
        yield proxy, t


def test_cut_connection_raises_connection_error_not_a_short_read(
    proxied: tuple[FaultProxy, SMBTransport], share_dir: Path
) -> None:
    proxy, t = proxied
    proxy.cut_after(2 * MiB + 100)
    stream = t.open_read("/disk.bin")
    with pytest.raises(ConnectionError_):
        _read_all(stream)
    stream.close()
    t.reconnect()
    assert _read_all(t.open_read("/disk.bin", 3 * MiB)) == (share_dir / "disk.bin").read_bytes()[3 * MiB :]
    assert proxy.cuts == 1


@pytest.mark.parametrize("trial", range(20))
def test_copy_survives_a_cut_at_a_random_offset(
    proxied: tuple[FaultProxy, SMBTransport], share_dir: Path, tmp_path: Path, trial: int
) -> None:
    proxy, t = proxied
    source = share_dir / "fault.bin"
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    size = source.stat().st_size
    trial_rng = random.Random(trial * 7919 + 1)
    # the first connection dies inside the transfer (after its ~2 KB handshake and stat); in every
    # third trial the reconnection dies too, anywhere from its own handshake on
    plan = [trial_rng.randrange(16 * 1024, size)]
    if trial % 3 == 0:
        plan.append(trial_rng.randrange(100, size // 2))
    proxy.cut_after(*plan)
    record = copy_file(t, "/fault.bin", EvidenceDirectory(tmp_path / "case"), "fault.bin", backoff=0.01)
    assert record.hashes["sha256"] == expected
    assert record.size == size
    assert proxy.cuts == len(plan)
    assert record.reconnections >= 1
    assert not record.changed_during_acquisition


def _signal_connections_once(server: SmbServer, signum: int, after: int):
    """A progress callback that sends ``signum`` to the serving smbd children once ``after`` bytes arrived."""
    hit: list[int] = []

    def callback(update: ProgressUpdate) -> None:
        if not hit and update.file_done >= after:
            hit.extend(server.connection_pids())
            for pid in hit:
                os.kill(pid, signum)

    return callback, hit


def test_hung_server_times_out_and_the_copier_resumes_on_a_new_connection(
    server: SmbServer, share_dir: Path, tmp_path: Path
) -> None:
    callback, stopped = _signal_connections_once(server, signal.SIGSTOP, after=8 * MiB)
    try:
        with SMBTransport(
            "127.0.0.1", "evidence", user=server.user, password=server.password, port=server.port, timeout=2
        ) as t:
            record = copy_file(
                t,
                "/big.bin",
                EvidenceDirectory(tmp_path / "case"),
                "big.bin",
                progress=Progress(callback),
                backoff=0.01,
            )
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped
    assert record.reconnections == 1
    assert record.hashes["sha256"] == hashlib.sha256((share_dir / "big.bin").read_bytes()).hexdigest()


def test_killed_server_process_is_survived_by_resuming(
    server: SmbServer, share_dir: Path, tmp_path: Path
) -> None:
    callback, killed = _signal_connections_once(server, signal.SIGKILL, after=8 * MiB)
    with SMBTransport(
        "127.0.0.1", "evidence", user=server.user, password=server.password, port=server.port
    ) as t:
        record = copy_file(
            t,
            "/big.bin",
            EvidenceDirectory(tmp_path / "case"),
            "big.bin",
            progress=Progress(callback),
            backoff=0.01,
        )
    assert killed
    assert record.reconnections == 1
    assert record.hashes["sha256"] == hashlib.sha256((share_dir / "big.bin").read_bytes()).hexdigest()
