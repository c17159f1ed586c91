"""Fixtures for transport tests: real OpenSSH servers on loopback and a fault-injecting TCP proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.transport.faultproxy import FaultProxy
from tests.transport.sshd import SSHServer

SSH_TEST_USER = ("vmfsshtest", "correct horse battery staple")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """An sshd accepting the fixture's client key for root (CI runs as root)."""
    with SSHServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """An sshd with password authentication for the user SSH_TEST_USER."""
    with SSHServer(tmp_path_factory.mktemp("sshd-password"), password_user=SSH_TEST_USER) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_sftp_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """An sshd with ``ForceCommand internal-sftp``: commands are refused, SFTP works."""
    with SSHServer(tmp_path_factory.mktemp("sshd-sftp"), sftp_only=True) as server:
        yield server


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[tuple[str, int]], FaultProxy]]:
    """A factory of FaultProxy instances, all closed at the end of the test."""
    proxies: list[FaultProxy] = []

    def make(target: tuple[str, int]) -> FaultProxy:
        proxies.append(FaultProxy(target))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
