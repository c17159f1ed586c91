"""Every file of a vSphere VM: layoutEx (after RefreshStorageInfo) checked against a datastore browse.

layoutEx names what the VM uses, wherever it lives (disks on other datastores, snapshot and
suspend directories). A browse of the VM's own directories adds what layoutEx leaves out (old
logs, stray files) and gives sizes. Servers are not trusted to be tidy: names may lack the VM
folder or repeat, sizes may be 0 or missing; a name that leads nowhere is recorded, not dropped.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from pyVmomi import vim

from vmforensics.acquire.base import PlannedFile
from vmforensics.acquire.filesets import is_ignored, role_for
from vmforensics.errors import ObjectVanishedError
from vmforensics.hypervisors.vmware.api import api_errors, properties, run_task
from vmforensics.hypervisors.vmware.identify import vm_errors, vm_properties

log = logging.getLogger(__name__)

_DATASTORE_PATH = re.compile(r"^\[([^\]]+)\]\s*(.*)$")

#: layoutEx file types -> evidence roles, for names the file-set rules do not know.
_LAYOUT_ROLES = {
    "config": "config",
    "extendedConfig": "extended-config",
    "nvram": "nvram",
    "snapshotData": "snapshot-state",
    "snapshotList": "snapshot-list",
    "snapshotMemory": "memory",
    "suspend": "suspend-state",
    "suspendMemory": "memory",
    "swap": "swap",
    "uwswap": "swap",
    "log": "log",
    "diskDescriptor": "disk-descriptor",
    "diskExtent": "disk-extent",
}


@attrs.frozen
class DatastorePath:
    """``[datastore] dir/name`` split into its parts (the path is datastore-relative, POSIX)."""

    datastore: str
    path: str

    @classmethod
    def parse(cls, text: str) -> DatastorePath:
        match = _DATASTORE_PATH.match(text.strip())
        if not match:
            raise ValueError(f"not a datastore path: {text!r}")
        path = posixpath.normpath("/" + match.group(2).strip()).lstrip("/")
        return cls(match.group(1), "" if path == "." else path)

    @property
    def directory(self) -> str:
        return posixpath.dirname(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, name: str) -> DatastorePath:
        return DatastorePath(self.datastore, posixpath.join(self.path, name))

    def __str__(self) -> str:
        return f"[{self.datastore}] {self.path}"


@attrs.frozen
class Listed:
    """One file a datastore browse returned."""

    where: DatastorePath
    size: int | None
    is_folder: bool = False


class VMFiles:
    """Collects the planned files of one VM; ``omit`` records what cannot be taken."""

    def __init__(
        self,
        si: Any,
        vm: Any,
        datastores: dict[str, Any],
        omit: Callable[[str, str, str], None],
        note: Callable[..., None],
        *,
        gone: Mapping[str, str] | None = None,
    ):
        self.si = si
        self.vm = vm
        self.datastores = datastores  # name -> vim.Datastore
        self.gone = dict(gone or {})  # name -> moref of the VM's datastores that vanished
        self.omit = omit
        self.note = note
        self._browsers: dict[str, Any] = {}

    def plan(self, own_directories: list[DatastorePath]) -> list[PlannedFile]:
        with vm_errors(self.vm, "refresh the VM's storage information"):
            self.vm.RefreshStorageInfo()
        layout = vm_properties(self.si, self.vm, ["layoutEx"], "read the VM's file layout").get("layoutEx")
        planned: dict[DatastorePath, PlannedFile] = {}
        listed: dict[DatastorePath, Listed] = {}
        for directory in dict.fromkeys(own_directories):
            for entry in self.browse(directory):
                listed[entry.where] = entry
        by_name: dict[str, list[DatastorePath]] = {}
        for where in listed:
            by_name.setdefault(where.name, []).append(where)
        own = set(own_directories)
        for info in getattr(layout, "file", None) or []:
            self._layout_file(info, own, listed, by_name, planned)
        for where, entry in sorted(listed.items(), key=lambda item: str(item[0])):
            if where in planned:
                continue
            if entry.is_folder:
                self.omit(
                    str(where),
                    "other",
                    "a folder inside the VM's directory (its contents are not part of the VM)",
                )
                continue
            planned[where] = self._planned(where, entry.size, None)
        return sorted(planned.values(), key=lambda p: p.dest_name)

    def _layout_file(
        self,
        info: Any,
        own: set[DatastorePath],
        listed: dict[DatastorePath, Listed],
        by_name: dict[str, list[DatastorePath]],
        planned: dict[DatastorePath, PlannedFile],
    ) -> None:
        kind = str(getattr(info, "type", "") or "")
        try:
            where = DatastorePath.parse(str(info.name))
        except ValueError:
            self.omit(
                str(info.name),
                _LAYOUT_ROLES.get(kind, "other"),
                "layoutEx gave a name that is not a datastore path",
            )
            return
        if is_ignored(where.name) or where in planned:
            return
        entry = listed.get(where)
        if entry is None and DatastorePath(where.datastore, where.directory) not in own:
            entry = self._find(where)
            if entry is not None:
                listed[where] = entry
        if entry is None:
            twins = by_name.get(where.name, [])
            if len(twins) == 1:  # a name without its folder: the same file in the VM's directory
                self.note("layout-name-resolved", listed=str(where), resolved=str(twins[0]))
                return
            self.omit(
                str(where),
                self._role(where, kind),
                "listed in the VM's layoutEx but not found on the datastore",
            )
            return
        size = entry.size if entry.size is not None else _layout_size(info)
        planned[where] = self._planned(where, size, kind)

    def _planned(self, where: DatastorePath, size: int | None, kind: str | None) -> PlannedFile:
        return PlannedFile(
            source_path=str(where),
            dest_name=f"{where.datastore}/{where.path}",
            role=self._role(where, kind),
            size_reported=size,
            label=str(where),
        )

    @staticmethod
    def _role(where: DatastorePath, kind: str | None) -> str:
        role = role_for("vmware", where.name)
        if role == "other" and kind:
            return _LAYOUT_ROLES.get(kind, "other")
        return role

    def browse(self, directory: DatastorePath, pattern: str | None = None) -> list[Listed]:
        """The files of one datastore directory (not recursive), via the datastore browser."""
        browser = self._browser(directory.datastore)
        if browser is None:
            return []
        spec = vim.host.DatastoreBrowser.SearchSpec(
            details=vim.host.DatastoreBrowser.FileInfo.Details(
                fileType=True, fileSize=True, modification=True
            ),
            matchPattern=[pattern or "*"],  # some servers match nothing without a pattern
        )
        path = f"[{directory.datastore}] {directory.path}".rstrip()
        try:
            _, result = run_task(self.si, lambda: browser.SearchDatastore_Task(path, spec), f"browse {path}")
        except Exception as exc:  # a missing folder is a fact to record, not a reason to stop
            if pattern is None:
                self.omit(path, "other", f"the folder could not be browsed: {exc}")
            return []
        found = []
        for item in getattr(result, "file", None) or []:
            name = str(item.path)
            if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
                self.omit(f"{path}/{name}", "other", "the server gave an unusable file name")
                continue
            if is_ignored(name):
                continue
            size = getattr(item, "fileSize", None)
            found.append(
                Listed(
                    directory.child(name),
                    int(size) if size is not None else None,
                    isinstance(item, vim.host.DatastoreBrowser.FolderInfo),
                )
            )
        return found

    def _find(self, where: DatastorePath) -> Listed | None:
        for entry in self.browse(DatastorePath(where.datastore, where.directory), pattern=where.name):
            if entry.where == where:
                return entry
        return None

    def _browser(self, datastore: str) -> Any:
        if datastore not in self._browsers:
            ds = self.datastores.get(datastore)
            if ds is None and datastore in self.gone:
                self.omit(
                    f"[{datastore}]",
                    "other",
                    f"the datastore ({self.gone[datastore]}) vanished during the acquisition "
                    "(unmounted or removed): none of its files could be listed or read",
                )
                self._browsers[datastore] = None
            elif ds is None:
                self.omit(f"[{datastore}]", "other", "the datastore is not visible to this session")
                self._browsers[datastore] = None
            else:
                with api_errors(f"read the browser of datastore {datastore}"):
                    try:
                        self._browsers[datastore] = properties(self.si, ds, ["browser"]).get("browser")
                    except ObjectVanishedError as exc:
                        self.omit(f"[{datastore}]", "other", f"{exc}: none of its files could be read")
                        self._browsers[datastore] = None
        return self._browsers[datastore]


def _layout_size(info: Any) -> int | None:
    size = getattr(info, "size", None)
    return int(size) if size else None  # 0 from some servers means "not known"
