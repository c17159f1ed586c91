"""HTTPSDatastoreTransport against a real TLS server with a throwaway CA (see httpsd.py)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.transport.httpsd import DatastoreServer, TestPKI
from vmforensics.acquire.copier import copy_file
from vmforensics.custody.evidence import EvidenceDirectory
from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    SourceError,
    UsageError,
)
from vmforensics.transport.https import HTTPSDatastoreTransport

MiB = 1 << 20
COOKIE = 'vmware_soap_session="52e1b7a0-test-session"'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def datastore_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("LocalDS_0")
    rng = random.Random(5)
    (root / "web01").mkdir()
    (root / "web01" / "web01-flat.vmdk").write_bytes(rng.randbytes(3 * MiB + 5))
    (root / "web01" / "web01.vmx").write_text('displayName = "web01"\n')
    (root / "web01" / "vmware.log").write_text("log line\n" * 100)
    (root / "with space & more.txt").write_text("odd name")
    return root


@pytest.fixture(scope="module")
def server(pki: TestPKI, datastore_dir: Path) -> Iterator[DatastoreServer]:
    with DatastoreServer(datastore_dir, pki, cookie=COOKIE) as httpd:
        yield httpd


@pytest.fixture(autouse=True)
def _well_behaved(server: DatastoreServer) -> Iterator[None]:
    server.ignore_range = False
    server.cut_after.clear()
    server.requests.clear()
    yield
    server.ignore_range = False
    server.cut_after.clear()


def _transport(server: DatastoreServer, **options) -> HTTPSDatastoreTransport:
    options.setdefault("cookie", COOKIE)
    return HTTPSDatastoreTransport(
        server.host, port=server.port, datacenter=server.datacenter, datastore=server.datastore, **options
    )


@pytest.fixture
def transport(server: DatastoreServer, pki: TestPKI) -> Iterator[HTTPSDatastoreTransport]:
    with _transport(server, tls_ca=str(pki.ca_path)) as t:
        yield t


def _read_all(stream, buffer_size: int = 256 * 1024) -> bytes:
    chunks = []
    view = memoryview(bytearray(buffer_size))
    while count := stream.readinto(view):
        chunks.append(bytes(view[:count]))
    stream.close()
    return b"".join(chunks)


FLAT = "web01/web01-flat.vmdk"


# -- reading and resuming ----------------------------------------------------------------------


def test_file_read_with_ca_verification_sends_the_session_cookie(
    transport: HTTPSDatastoreTransport, server: DatastoreServer, datastore_dir: Path
) -> None:
    assert _read_all(transport.open_read(FLAT)) == (datastore_dir / FLAT).read_bytes()
    method, path, headers = server.requests[-1]
    assert method == "GET"
    assert path.startswith("/folder/web01/web01-flat.vmdk?")
    assert "dcPath=DC0" in path and "dsName=LocalDS_0" in path
    assert headers["Cookie"] == COOKIE
    assert "Range" not in headers


@pytest.mark.parametrize("offset", [1, MiB - 1, MiB, 3 * MiB + 4])
def test_resume_at_an_offset_uses_range(
    transport: HTTPSDatastoreTransport, server: DatastoreServer, datastore_dir: Path, offset: int
) -> None:
    assert _read_all(transport.open_read(FLAT, offset)) == (datastore_dir / FLAT).read_bytes()[offset:]
    assert server.requests[-1][2]["Range"] == f"bytes={offset}-"


def test_resume_at_the_end_reads_nothing_and_past_it_is_an_error(
    transport: HTTPSDatastoreTransport, datastore_dir: Path
) -> None:
    size = (datastore_dir / FLAT).stat().st_size
    assert _read_all(transport.open_read(FLAT, size)) == b""
    with pytest.raises(SourceError):
        transport.open_read(FLAT, size + 1)


def test_server_ignoring_range_is_detected_and_never_gives_wrong_bytes(
    transport: HTTPSDatastoreTransport, server: DatastoreServer, datastore_dir: Path
) -> None:
    server.ignore_range = True
    offset = MiB + 17
    assert _read_all(transport.open_read(FLAT, offset)) == (datastore_dir / FLAT).read_bytes()[offset:]
    assert transport.range_ignored
    assert "ignored" in transport.describe()["range_requests"]


def test_cut_body_raises_connection_error_not_a_short_read(
    transport: HTTPSDatastoreTransport, server: DatastoreServer
) -> None:
    server.cut_after.append(MiB + 3)
    with pytest.raises(ConnectionError_):
        _read_all(transport.open_read(FLAT))


@pytest.mark.parametrize("trial", range(6))
def test_copy_resumes_after_cuts_with_the_exact_hash(
    transport: HTTPSDatastoreTransport,
    server: DatastoreServer,
    datastore_dir: Path,
    tmp_path: Path,
    trial: int,
) -> None:
    source = (datastore_dir / FLAT).read_bytes()
    trial_rng = random.Random(trial)
    first = trial_rng.randrange(1, len(source) - 1)
    # the second cut (odd trials) lands inside the resumed reply, which is at least len - first long
    server.cut_after.extend([first, trial_rng.randrange(1, len(source) - first)][: 1 + trial % 2])
    record = copy_file(transport, FLAT, EvidenceDirectory(tmp_path / "case"), "flat.vmdk", backoff=0.01)
    assert record.hashes["sha256"] == hashlib.sha256(source).hexdigest()
    assert record.reconnections == 1 + trial % 2 and record.resumed == 0
    ranges = [headers.get("Range") for method, _, headers in server.requests if method == "GET"]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


# -- metadata ----------------------------------------------------------------------------------


def test_stat_gives_size_and_last_modified(transport: HTTPSDatastoreTransport, datastore_dir: Path) -> None:
    facts = transport.stat(FLAT)
    local = os.stat(datastore_dir / FLAT)
    assert (facts.path, facts.size, facts.is_dir) == (FLAT, local.st_size, False)
    assert facts.mtime == int(local.st_mtime)  # HTTP dates have whole seconds
    assert transport.stat("web01").is_dir  # a folder answers with a redirect to its index


def test_listdir_parses_the_folder_index(transport: HTTPSDatastoreTransport, datastore_dir: Path) -> None:
    root = {entry.path: entry for entry in transport.listdir("")}
    assert set(root) == {"web01", "with space & more.txt"}
    assert root["web01"].is_dir
    assert root["with space & more.txt"].size == len("odd name")
    inside = {entry.path: entry.size for entry in transport.listdir("web01")}
    assert inside == {f"web01/{p.name}": p.stat().st_size for p in (datastore_dir / "web01").iterdir()}
    assert sorted(e.path for e in transport.walk("")) == sorted([*inside, "with space & more.txt"])


def test_listing_a_file_says_to_use_the_datastore_browser(transport: HTTPSDatastoreTransport) -> None:
    with pytest.raises(UsageError, match="datastore browser"):
        transport.listdir(FLAT)


def test_datastore_path_notation_is_accepted(transport: HTTPSDatastoreTransport, datastore_dir: Path) -> None:
    assert (
        _read_all(transport.open_read("[LocalDS_0] web01/web01.vmx"))
        == (datastore_dir / "web01" / "web01.vmx").read_bytes()
    )
    with pytest.raises(UsageError):
        transport.stat("[OtherDS] web01/web01.vmx")


def test_missing_file_and_wrong_datastore_are_source_errors(
    server: DatastoreServer, pki: TestPKI, transport: HTTPSDatastoreTransport
) -> None:
    with pytest.raises(SourceError):
        transport.stat("web01/missing.vmdk")
    with pytest.raises(SourceError):
        transport.open_read("web01/missing.vmdk")
    with (
        HTTPSDatastoreTransport(
            server.host,
            port=server.port,
            cookie=COOKIE,
            datacenter="DC0",
            datastore="nope",
            tls_ca=str(pki.ca_path),
        ) as other,
        pytest.raises(SourceError),
    ):
        other.stat(FLAT)


def test_pyvmomi_cookie_with_attributes_is_reduced_to_its_pair(server: DatastoreServer, pki: TestPKI) -> None:
    with _transport(server, tls_ca=str(pki.ca_path), cookie=COOKIE + "; Path=/; HttpOnly; Secure;") as t:
        assert t.stat(FLAT).size == 3 * MiB + 5
    assert server.requests[-1][2]["Cookie"] == COOKIE


def test_missing_or_stale_cookie_is_an_authentication_error(server: DatastoreServer, pki: TestPKI) -> None:
    for cookie in (None, 'vmware_soap_session="expired"'):
        with (
            _transport(server, tls_ca=str(pki.ca_path), cookie=cookie) as t,
            pytest.raises(AuthenticationError),
        ):
            t.stat(FLAT)


# -- TLS verification --------------------------------------------------------------------------


def test_describe_records_the_certificate_actually_seen(
    transport: HTTPSDatastoreTransport, pki: TestPKI
) -> None:
    facts = transport.describe()
    assert facts["transport"] == "https"
    assert facts["verification"] == "ca-file"
    assert facts["tls_certificate_sha256"] == pki.sha256_colons
    assert COOKIE not in repr(facts) and "52e1b7a0" not in repr(facts)


def test_certificate_from_another_ca_is_refused(server: DatastoreServer, tmp_path: Path) -> None:
    stranger = TestPKI(tmp_path / "other", label="some other CA")
    with _transport(server, tls_ca=str(stranger.ca_path)) as t, pytest.raises(HostVerificationError):
        t.stat(FLAT)


def test_self_made_ca_is_not_in_the_system_store(server: DatastoreServer) -> None:
    with _transport(server) as t, pytest.raises(HostVerificationError):
        t.stat(FLAT)


@pytest.mark.parametrize("form", ["sha256", "sha256_colons", "sha1"])
def test_pinned_thumbprint_is_accepted(
    server: DatastoreServer, pki: TestPKI, datastore_dir: Path, form: str
) -> None:
    with _transport(server, tls_thumbprint=getattr(pki, form)) as t:
        assert (
            _read_all(t.open_read("web01/web01.vmx")) == (datastore_dir / "web01" / "web01.vmx").read_bytes()
        )
        facts = t.describe()
        assert facts["verification"] == "pinned"
        assert facts["tls_certificate_sha256"] == pki.sha256_colons


def test_wrong_pinned_thumbprint_is_refused(server: DatastoreServer, pki: TestPKI, tmp_path: Path) -> None:
    stranger = TestPKI(tmp_path / "other")
    with _transport(server, tls_thumbprint=stranger.sha256) as t, pytest.raises(HostVerificationError):
        t.stat(FLAT)


def test_insecure_opt_out_reads_and_says_so(server: DatastoreServer, pki: TestPKI) -> None:
    with _transport(server, insecure=True) as t:
        assert t.stat(FLAT).size == 3 * MiB + 5
        facts = t.describe()
        assert facts["verification"] == "insecure-opt-out"
        assert facts["tls_certificate_sha256"] == pki.sha256_colons


@pytest.mark.parametrize(
    "options",
    [
        {"tls_thumbprint": "ab:cd"},
        {"tls_thumbprint": "zz" * 32},
        {"insecure": True, "tls_ca": "/ca.pem"},
        {"cookie": "a=b\r\nX-Injected: 1"},
        {"cookie": "no pair"},
    ],
)
def test_bad_options_are_usage_errors(options: dict) -> None:
    with pytest.raises(UsageError):
        HTTPSDatastoreTransport("127.0.0.1", datacenter="DC0", datastore="ds", **options)


# -- URLs --------------------------------------------------------------------------------------


def test_from_url_reads_datacenter_datastore_and_path(server: DatastoreServer, pki: TestPKI) -> None:
    t, path = HTTPSDatastoreTransport.from_url(
        server.url("web01/web01-flat.vmdk"), cookie=COOKIE, tls_ca=str(pki.ca_path)
    )
    with t:
        assert (t.host, t.port, t.datacenter, t.datastore, path) == (
            "127.0.0.1",
            server.port,
            "DC0",
            "LocalDS_0",
            FLAT,
        )
        assert t.stat(path).size == 3 * MiB + 5


@pytest.mark.parametrize(
    "url",
    [
        "https://vc.lab/folder/a.vmx?dsName=ds1",  # no dcPath
        "https://vc.lab/other/a.vmx?dcPath=dc&dsName=ds1",
        "https://root:pw@vc.lab/folder/a.vmx?dcPath=dc&dsName=ds1",
        "http://vc.lab/folder/a.vmx?dcPath=dc&dsName=ds1",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        HTTPSDatastoreTransport.from_url(url)
