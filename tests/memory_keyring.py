"""The keyring package with an in-memory backend, for tests of passwords read from a keyring."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def memory_keyring() -> Iterator[Any]:
    """The keyring package with an in-memory backend (threads of this process share it)."""
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    class InMemory(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            self.entries: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.entries.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.entries[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.entries.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(InMemory())
    try:
        yield keyring
    finally:
        keyring.set_keyring(previous)
