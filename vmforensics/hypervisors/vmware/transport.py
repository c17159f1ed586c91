"""Routing ``[datastore] dir/file`` paths to the transport that reads that datastore.

Over HTTPS each datastore has its own ``/folder`` endpoint (``dsName=``), so one transport per
datastore; over SSH every datastore is a directory under ``/vmfs/volumes`` of the ESXi host.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from vmforensics.errors import UsageError
from vmforensics.hypervisors.vmware.files import DatastorePath
from vmforensics.transport.base import ReadStream, RemoteStat, Transport


class DatastoreRouter(Transport):
    """A Transport over ``[datastore] path`` names, backed by one transport per datastore."""

    def __init__(
        self, scheme: str, factory: Callable[[str], Transport], path_for: Callable[[DatastorePath], str]
    ):
        self.scheme = scheme
        self._factory = factory
        self._path_for = path_for
        self._transports: dict[str, Transport] = {}
        self.description: dict[str, Any] = {"transport": scheme}  # kept when closed, for the manifest

    def _route(self, path: str) -> tuple[Transport, str]:
        try:
            where = DatastorePath.parse(path)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if where.datastore not in self._transports:
            self._transports[where.datastore] = self._factory(where.datastore)
        return self._transports[where.datastore], self._path_for(where)

    def stat(self, path: str) -> RemoteStat:
        transport, inner = self._route(path)
        return transport.stat(inner)

    def listdir(self, path: str) -> list[RemoteStat]:
        transport, inner = self._route(path)
        return transport.listdir(inner)

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        transport, inner = self._route(path)
        return transport.open_read(inner, offset)

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        transport, inner = self._route(path)
        return transport.remote_hash(inner, algorithm)

    def reconnect(self) -> None:
        for transport in self._unique():
            transport.reconnect()

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"transport": self.scheme}
        datastores = {name: transport.describe() for name, transport in sorted(self._transports.items())}
        if datastores:
            facts["datastores"] = datastores
        return facts

    def close(self) -> None:
        self.description = self.describe()
        for transport in self._unique():
            transport.close()

    def _unique(self) -> list[Transport]:
        return list({id(t): t for t in self._transports.values()}.values())


def vmfs_path(root: str) -> Callable[[DatastorePath], str]:
    """``[ds] dir/file`` -> ``<root>/ds/dir/file`` (ESXi mounts datastores under /vmfs/volumes)."""

    def path_for(where: DatastorePath) -> str:
        if "/" in where.datastore or where.datastore in (".", ".."):
            raise UsageError(f"unusable datastore name {where.datastore!r}")
        return posixpath.join(root, where.datastore, where.path)

    return path_for
