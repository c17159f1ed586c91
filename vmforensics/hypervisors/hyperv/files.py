r"""Reading a Hyper-V host's files over SMB by their local Windows paths.

The host names its files ``C:\Hyper-V\web01\Virtual Hard Disks\web01.vhdx``. By default such a
path is read through the drive's administrative share (``\\host\C$\Hyper-V\...``); with
``share``/``share_root`` every file must lie under ``share_root`` and is read through that share.
The remote SHA-256 check runs ``Get-FileHash`` on the host over WinRM, so the copy is compared
with what the host itself reads from its disk.
"""

from __future__ import annotations

import ntpath
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from vmforensics.confine import ConfinedPath, Refusal, RemoteConfinement
from vmforensics.errors import SourceError, UsageError
from vmforensics.hypervisors.hyperv import scripts as scripts
from vmforensics.hypervisors.hyperv.winrm import PowerShellSession
from vmforensics.transport.base import ReadStream, RemoteStat, Transport
from vmforensics.transport.smb import SMBTransport

_DRIVE_PATH = re.compile(r"^([A-Za-z]):\\")

#: Makes the SMB transport for one share name.
ShareOpener = Callable[[str], SMBTransport]


class ShareMap:
    """Where a host-local path is found: (share name, path inside the share)."""

    def __init__(self, share: str | None = None, share_root: str | None = None):
        if (share is None) != (share_root is None):
            raise UsageError(
                "smb_share and smb_share_root go together (the share and the local folder it exports)"
            )
        if share_root is not None and not _DRIVE_PATH.match(share_root.rstrip("\\") + "\\"):
            raise UsageError(f"smb_share_root must be a local path such as D:\\Hyper-V, not {share_root!r}")
        self.share = share
        self.root = share_root.rstrip("\\") if share_root else None

    def locate(self, path: str) -> tuple[str, str]:
        """``(share, relative)`` for a host path; SourceError when no share reaches it."""
        clean = ntpath.normpath(path.replace("/", "\\"))
        if self.root is not None:
            prefix = self.root + "\\"
            if not clean.lower().startswith(prefix.lower()):
                raise SourceError(f"{path} is not under {self.root}, the folder share {self.share!r} exports")
            return self.share or "", clean[len(prefix) :]
        match = _DRIVE_PATH.match(clean)
        if not match:
            raise SourceError(
                f"{path} is not on a local drive of the host (no administrative share reaches it)"
            )
        return f"{match.group(1).upper()}$", clean[3:]

    def describe(self) -> dict[str, Any]:
        if self.share:
            return {"share": self.share, "share_root": self.root}
        return {"share": "administrative shares (C$, D$...)"}


def vm_roots(named: dict[str, Any]) -> list[str]:
    r"""The folders Hyper-V itself names for a VM (ENUMERATE's ``roots``): its configuration,
    snapshot and smart-paging locations and the folders of its attached and checkpoint disks.

    Only absolute drive paths count (``C:\...``, or a UNC share for disks on SMB storage)."""
    folders = [
        named.get(key)
        for key in ("configuration_location", "snapshot_file_location", "smart_paging_file_path")
    ]
    folders += [ntpath.dirname(d) for d in scripts.as_list(named.get("disks")) if isinstance(d, str)]
    return sorted({f for f in folders if isinstance(f, str) and _absolute(f)}, key=str.lower)


def confine_listing(
    listed: list[dict[str, Any]], roots: list[str], allowed_roots: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """ENUMERATE's files split into those that may be read and ``(item, reason)`` refusals.

    A file is kept only when its path lies beneath a root (``..`` folded, case-insensitively as
    Windows compares); a refused parent disk takes every file named only through it with it.
    """
    confinement = (
        RemoteConfinement(roots, allowed_roots, flavor="windows") if roots or allowed_roots else None
    )
    kept: list[dict[str, Any]] = []
    refused: list[tuple[dict[str, Any], str]] = []
    dropped: set[str] = set()
    for item in listed:
        path, by, reference = item.get("path"), item.get("named_by"), item.get("reference")
        if not isinstance(path, str) or not path:
            continue
        if isinstance(by, str) and _key(by) in dropped:
            dropped.add(_key(path))
            refused.append((item, f"named only through {by}, which is not read"))
            continue
        checked: ConfinedPath | Refusal = (
            confinement.resolve(path)
            if confinement is not None
            else Refusal(path, "Hyper-V names no folder for this VM", "outside-roots")
        )
        if isinstance(checked, Refusal):
            dropped.update({_key(path), *([_key(reference)] if isinstance(reference, str) else [])})
            named = (
                f"; named {reference!r} as the parent of {by}" if isinstance(by, str) and reference else ""
            )
            refused.append((item, f"{checked.reason}{named}; not read"))
            continue
        kept.append(item)
    return kept, refused


def _key(path: str) -> str:
    """A Windows path as the host compares it: separators unified, '..' folded, case folded."""
    return ntpath.normpath(path.replace("/", "\\")).casefold()


def _absolute(path: str) -> bool:
    text = path.replace("/", "\\")
    return bool(_DRIVE_PATH.match(text)) or text.startswith("\\\\")


class HyperVFileTransport(Transport):
    """SMB reads by host path, one SMB transport per share, and Get-FileHash over WinRM."""

    scheme: ClassVar[str] = "smb"

    def __init__(self, shares: ShareMap, open_share: ShareOpener, powershell: PowerShellSession | None):
        self.shares = shares
        self._open_share = open_share
        self._powershell = powershell
        self._transports: dict[str, SMBTransport] = {}

    def stat(self, path: str) -> RemoteStat:
        transport, relative = self._route(path)
        found = transport.stat(relative)
        return RemoteStat(path, found.size, found.mtime, found.is_dir, found.is_symlink)

    def listdir(self, path: str) -> list[RemoteStat]:
        transport, relative = self._route(path)
        return [
            RemoteStat(
                ntpath.join(path, entry.path.rsplit("/", 1)[-1]),
                entry.size,
                entry.mtime,
                entry.is_dir,
                entry.is_symlink,
            )
            for entry in transport.listdir(relative)
        ]

    def open_read(self, path: str, offset: int = 0) -> ReadStream:
        transport, relative = self._route(path)
        return transport.open_read(relative, offset)

    def remote_hash(self, path: str, algorithm: str = "sha256") -> str | None:
        if algorithm != "sha256" or self._powershell is None:
            return None
        result = self._powershell.run(scripts.FILE_HASH, path=path)
        value = result.get("hash") if isinstance(result, dict) else None
        return value.lower() if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]{64}", value) else None

    def reconnect(self) -> None:
        for transport in self._transports.values():
            transport.reconnect()

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"transport": self.scheme, **self.shares.describe()}
        facts["connections"] = [t.describe() for t in self._transports.values()]
        facts["remote_hash"] = "Get-FileHash -Algorithm SHA256 over WinRM" if self._powershell else None
        return facts

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    def _route(self, path: str) -> tuple[SMBTransport, str]:
        share, relative = self.shares.locate(path)
        if share not in self._transports:
            self._transports[share] = self._open_share(share)
        return self._transports[share], relative
