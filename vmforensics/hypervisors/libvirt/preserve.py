"""Changes an acquisition makes to a libvirt domain, and their undoing — each one a source action.

``snapshot``: an external snapshot (with the memory state unless memory=False); the disk files
as they were become read-only backing files of new overlays, so they can be copied while the
guest runs on. ``suspend``: the guest paused, plus an ELF memory image. ``save``: the guest's
state written to a file and the guest stopped. Cleanup block-commits the overlays back (the guest
ends on its original files), deletes what was created and resumes or restores the guest.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from vmforensics.acquire.base import Session
from vmforensics.errors import SourceError
from vmforensics.hypervisors.libvirt.commands import CommandResult, Host
from vmforensics.hypervisors.libvirt.domain_xml import DiskSpec

log = logging.getLogger(__name__)

#: Disk types an external snapshot can put an overlay on.
SNAPSHOT_DISK_TYPES = ("file", "block", "volume")


def _record(details: dict[str, Any], result: CommandResult) -> None:
    details.setdefault("commands", []).append(result.command)
    details["seconds"] = round(details.get("seconds", 0.0) + result.seconds, 3)


def _spec_value(text: str) -> str:
    """A value inside virsh's comma-separated --diskspec/--memspec (a literal comma is doubled)."""
    return text.replace(",", ",,")


def snapshot_disks(disks: tuple[DiskSpec, ...]) -> list[DiskSpec]:
    """The disks an external snapshot overlays: writable disks backed by host files or devices."""
    return [
        d
        for d in disks
        if d.device in ("disk", "lun") and d.type in SNAPSHOT_DISK_TYPES and d.path and not d.readonly
    ]


class DomainControl:
    """The state changes on one domain (addressed by UUID), recorded in ``session``."""

    def __init__(self, host: Host, session: Session, domain: str, tag: str):
        self.host = host
        self.session = session
        self.domain = domain
        self.tag = tag  # names everything this acquisition creates on the host
        self.created: dict[str, Any] = session.state.setdefault("libvirt_created", {})

    # -- queries -------------------------------------------------------------------------------

    def state(self) -> str:
        result = self.host.virsh("domstate", "--domain", self.domain, "--reason")
        return result.stdout.strip() or "unknown"

    def ensure_absent(self, path: str) -> None:
        if self.host.run(["test", "-e", path], check=False).status == 0:
            raise SourceError(f"{path} already exists on the host; refusing to overwrite it")

    # -- changes -------------------------------------------------------------------------------

    def isolate(self, macs: list[str]) -> None:
        """Take every interface's link down (left down afterwards: isolation is the point)."""
        for mac in macs:
            with self.session.action("isolate", interface=mac, link="down") as details:
                _record(
                    details,
                    self.host.virsh(
                        "domif-setlink", "--domain", self.domain, "--interface", mac, "--state", "down"
                    ),
                )
                details["link_now"] = self.host.virsh(
                    "domif-getlink", "--domain", self.domain, "--interface", mac
                ).stdout.strip()
            self.created.setdefault("isolated", []).append(mac)

    def suspend(self) -> None:
        with self.session.action("suspend") as details:
            _record(details, self.host.virsh("suspend", "--domain", self.domain))
            details["state_now"] = self.state()
        self.created["suspended"] = True

    def resume(self) -> None:
        with self.session.action("resume") as details:
            _record(details, self.host.virsh("resume", "--domain", self.domain))
            details["state_now"] = self.state()
        self.created.pop("suspended", None)

    def dump_memory(self, path: str) -> None:
        """``virsh dump --memory-only --format elf``: an ELF core Volatility 3 reads."""
        self.ensure_absent(path)
        with self.session.action("memory-dump", format="elf", memory_only=True, file=path) as details:
            self.created["memory_dump"] = path
            _record(
                details,
                self.host.virsh(
                    "dump", "--domain", self.domain, "--file", path, "--memory-only", "--format", "elf"
                ),
            )

    def snapshot(
        self,
        name: str,
        disks: list[DiskSpec],
        all_disks: tuple[DiskSpec, ...],
        overlays: dict[str, str],
        memory_file: str | None,
    ) -> None:
        """``snapshot-create-as --atomic`` with external overlays (and external memory state)."""
        for path in [*overlays.values(), *([memory_file] if memory_file else [])]:
            self.ensure_absent(path)
        args = [
            "snapshot-create-as",
            "--domain",
            self.domain,
            "--name",
            name,
            "--atomic",
            "--description",
            "created by vmforensics for a forensic acquisition; removed at cleanup",
        ]
        if memory_file:
            args += ["--memspec", f"file={_spec_value(memory_file)},snapshot=external"]
        else:
            args.append("--disk-only")
        chosen = {d.target for d in disks}
        for disk in all_disks:
            if disk.target in chosen:
                spec = (
                    f"{_spec_value(disk.target)},snapshot=external,file={_spec_value(overlays[disk.target])}"
                )
            else:
                spec = f"{_spec_value(disk.target)},snapshot=no"
            args += ["--diskspec", spec]
        parameters = {
            "snapshot_name": name,
            "memory": memory_file is not None,
            "quiesce": False,
            "atomic": True,
            "overlays": dict(overlays),
            "memory_file": memory_file,
        }
        with self.session.action("snapshot", **parameters) as details:
            _record(details, self.host.virsh(*args))
            self.created["snapshot"] = {
                "name": name,
                "overlays": dict(overlays),
                "memory_file": memory_file,
                "bases": {d.target: d.path for d in disks},
            }
            details["state_now"] = self.state()

    def save(self, path: str) -> None:
        self.ensure_absent(path)
        with self.session.action("save", file=path, memory=True) as details:
            self.created["saved"] = path
            _record(details, self.host.virsh("save", "--domain", self.domain, "--file", path))
            details["state_now"] = self.state()

    # -- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Undo, in reverse, what this acquisition created; every step is its own action."""
        errors: list[str] = []
        snapshot = self.created.get("snapshot")
        if snapshot:
            self._undo(errors, self._commit_snapshot, snapshot)
        if self.created.get("memory_dump"):
            self._undo(
                errors, self._delete_file, "delete-memory-dump", self.created["memory_dump"], "memory_dump"
            )
        if self.created.get("saved"):
            self._undo(errors, self._restore, self.created["saved"])
        if self.created.get("suspended"):
            self._undo(errors, self.resume)
        if errors:
            raise SourceError("cleanup incomplete: " + "; ".join(errors))

    @staticmethod
    def _undo(errors: list[str], step: Any, *args: Any) -> None:
        try:
            step(*args)
        except SourceError as exc:
            log.error("cleanup step failed: %s", exc)
            errors.append(str(exc))

    def _commit_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Block-commit each overlay into its base and pivot; then delete overlays and metadata."""
        for target, overlay in list(snapshot["overlays"].items()):
            with self.session.action(
                "blockcommit",
                disk=target,
                active=True,
                shallow=True,
                pivot=True,
                overlay=overlay,
                base=snapshot["bases"][target],
            ) as details:
                _record(
                    details,
                    self.host.virsh(
                        "blockcommit",
                        "--domain",
                        self.domain,
                        "--path",
                        target,
                        "--active",
                        "--shallow",
                        "--pivot",
                        "--wait",
                    ),
                )
                now = self._disk_source(target)
                details["disk_now"] = now
                if now != snapshot["bases"][target]:
                    raise SourceError(
                        f"after blockcommit {target} is on {now}, not on {snapshot['bases'][target]}"
                    )
            self._delete_file("delete-overlay", overlay)
            del snapshot["overlays"][target]
        with self.session.action("delete-snapshot-metadata", snapshot_name=snapshot["name"]) as details:
            _record(
                details,
                self.host.virsh(
                    "snapshot-delete",
                    "--domain",
                    self.domain,
                    "--snapshotname",
                    snapshot["name"],
                    "--metadata",
                ),
            )
        if snapshot.get("memory_file"):
            self._delete_file("delete-snapshot-memory", snapshot["memory_file"])
        self.created.pop("snapshot", None)

    def _disk_source(self, target: str) -> str | None:
        listing = self.host.virsh("domblklist", "--domain", self.domain, "--details").stdout
        for line in listing.splitlines():
            fields = line.split(None, 3)
            if len(fields) == 4 and fields[2] == target:
                return fields[3].strip()
        return None

    def _delete_file(self, action: str, path: str, key: str | None = None) -> None:
        with self.session.action(action, file=path) as details:
            _record(details, self.host.run(["rm", "-f", "--", path]))
        if key:
            self.created.pop(key, None)

    def _restore(self, path: str) -> None:
        with self.session.action("restore", file=path) as details:
            _record(details, self.host.virsh("restore", "--file", path))
            details["state_now"] = self.state()
        self._delete_file("delete-saved-state", path, "saved")


def overlay_path(disk: DiskSpec, tag: str, workdir: str | None) -> str:
    """Where our overlay for ``disk`` goes: next to the disk file (or in ``workdir``)."""
    assert disk.path is not None
    stem = posixpath.basename(disk.path).rsplit(".", 1)[0] or disk.target
    folder = workdir or (posixpath.dirname(disk.path) if disk.type != "block" else None)
    if not folder:
        raise SourceError(f"{disk.target} is a block device: give host_workdir= for the snapshot overlay")
    return posixpath.join(folder, f"{stem}.{tag}.qcow2")
