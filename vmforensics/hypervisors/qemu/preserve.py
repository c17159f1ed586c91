"""Changes an acquisition makes to a QEMU VM over QMP, and their undoing — each a source action.

``pause``: ``stop``, the guest's memory written as an ELF core (``dump-guest-memory``, paging
off), then one atomic ``transaction`` of ``blockdev-snapshot-sync`` puts a new qcow2 overlay on
every writable disk, so the images as they were become read-only backing files of the running
guest. ``save``: the same, with the memory and device state as a migration stream (QEVM) written
by ``migrate exec:cat > FILE`` instead of the ELF core. Then ``cont`` when the examiner keeps
the VM running. Cleanup block-commits each overlay into its base (the active-layer job's
``ready`` awaited, then ``block-job-complete`` pivots the drive back), checks that the drive is
on its original image and that no node still names the overlay, and deletes the overlay.

QMP sessions are short: one per phase, so the host's own management (Proxmox's ``qm``,
``pvestatd``) is not locked out of the single-client socket while files are copied.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

from vmforensics.acquire.base import Session
from vmforensics.errors import SourceError
from vmforensics.hypervisors.qemu.host import QemuHost
from vmforensics.hypervisors.qemu.identify import (
    BlockDevice,
    block_devices,
    node_files,
    overlay_name,
    run_state,
)
from vmforensics.hypervisors.qemu.qmp import QMPClient

log = logging.getLogger(__name__)

_RUNNING_STATES = ("running", "paused", "suspended", "debug", "prelaunch")


class QemuControl:
    """The state changes on one VM (reached through its QMP socket), recorded in ``session``."""

    def __init__(self, host: QemuHost, session: Session, socket_path: str, *, job_timeout: float = 3600.0):
        self.host = host
        self.session = session
        self.socket_path = socket_path
        self.job_timeout = job_timeout
        self.created: dict[str, Any] = session.state.setdefault("qemu_created", {})

    def connect(self) -> QMPClient:
        return self.host.qmp(self.socket_path)

    def ensure_absent(self, path: str) -> None:
        if self.host.exists(path):
            raise SourceError(f"{path} already exists on {self.host.where}; refusing to overwrite it")

    # -- preserve --------------------------------------------------------------------------------

    def preserve(
        self,
        mode: str,
        *,
        memory: bool,
        keep_running: bool,
        tag: str,
        workdir: str,
        overlay_dir: str | None,
    ) -> None:
        """Pause, take the memory, snapshot every writable disk at once, and resume if asked."""
        with self.connect() as qmp:
            status = run_state(qmp)
            if status not in _RUNNING_STATES:
                raise SourceError(f"the VM is {status}: nothing runs to preserve; use --preserve none")
            every = block_devices(qmp.execute("query-block"))
            self.session.state["qemu_devices"] = every  # the chains as they are frozen, for planning
            devices = [d for d in every if d.snapshottable]
            overlays = {d.name: overlay_name(d.layers[0], d.name, tag, overlay_dir) for d in devices}
            memory_file = f"{workdir}/vmforensics-{tag}.elf" if memory and mode == "pause" else None
            state_file = f"{workdir}/vmforensics-{tag}.qevm" if mode == "save" else None
            for path in [*overlays.values(), memory_file, state_file]:
                if path:
                    self.ensure_absent(path)
            was_running = status == "running"
            if was_running:
                self._simple(qmp, "stop")
                self.created["stopped"] = True
            if memory_file:
                self._dump(qmp, memory_file)
            self._snapshot(qmp, devices, overlays, tag)
            if state_file:
                self._save(qmp, state_file)
            if was_running and keep_running:
                self._simple(qmp, "cont")
                self.created.pop("stopped", None)

    def _simple(self, qmp: QMPClient, command: str) -> None:
        with self.session.action(command) as details:
            qmp.execute(command)
            details["status_now"] = run_state(qmp)

    def _dump(self, qmp: QMPClient, path: str) -> None:
        with self.session.action("memory-dump", format="elf", paging=False, file=path) as details:
            self.created["memory_dump"] = path
            began = time.monotonic()
            qmp.execute(
                "dump-guest-memory",
                timeout=self.job_timeout,
                paging=False,
                protocol=f"file:{path}",
                format="elf",
            )
            result = qmp.execute("query-dump")
            details.update(result=result, seconds=round(time.monotonic() - began, 3))
            if not isinstance(result, dict) or result.get("status") != "completed":
                raise SourceError(f"dump-guest-memory did not complete: {result}")

    def _snapshot(
        self, qmp: QMPClient, devices: list[BlockDevice], overlays: dict[str, str], tag: str
    ) -> None:
        if not devices:
            self.session.ledger.append("warning", message="the VM has no writable disk to snapshot")
            return
        nodes = {d.name: f"{tag}-{number}" for number, d in enumerate(devices)}  # our overlays' node names
        actions = [
            {
                "type": "blockdev-snapshot-sync",
                "data": {
                    **({"device": d.device} if d.device else {"node-name": d.node_name}),
                    "snapshot-file": overlays[d.name],
                    "snapshot-node-name": nodes[d.name],
                    "format": "qcow2",
                    "mode": "absolute-paths",
                },
            }
            for d in devices
        ]
        parameters = {"atomic": True, "overlays": overlays, "quiesce": False}
        with self.session.action("snapshot", **parameters) as details:
            self.created["snapshot"] = {
                "overlays": dict(overlays),
                "devices": {d.name: d.describe() for d in devices},
                "bases": {d.name: d.layers[0].filename for d in devices},
                "ids": {
                    d.name: {"device": d.device, "key": d.key, "overlay_node": nodes[d.name]} for d in devices
                },
            }
            qmp.execute("transaction", actions=actions)
            now = {d.key: d for d in block_devices(qmp.execute("query-block"))}
            keys = {d.name: d.key for d in devices}
            details["tops_now"] = {
                name: now[keys[name]].layers[0].filename for name in overlays if keys[name] in now
            }
            for name, overlay in overlays.items():
                if details["tops_now"].get(name) != overlay:
                    raise SourceError(f"after the snapshot {name} is not on its overlay {overlay}")

    def _save(self, qmp: QMPClient, path: str) -> None:
        uri = f"exec:cat > {shlex.quote(path)}"
        with self.session.action("save-state", format="qemu-migration-stream", file=path) as details:
            self.created["saved_state"] = path
            began = time.monotonic()
            qmp.execute("migrate", uri=uri)
            deadline = began + self.job_timeout
            while True:
                result = qmp.execute("query-migrate")
                result = result if isinstance(result, dict) else {}
                state = result.get("status")
                if state == "completed":
                    break
                if state in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise SourceError(f"migration to {path} ended {state}: {result.get('error-desc', '')}")
                time.sleep(0.2)
            ram = result["ram"] if isinstance(result.get("ram"), dict) else {}
            details.update(
                seconds=round(time.monotonic() - began, 3),
                transferred=ram.get("transferred"),
                status_now=run_state(qmp),
            )

    # -- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Undo, in reverse, what this acquisition created; every step is its own action."""
        errors: list[str] = []
        snapshot = self.created.get("snapshot")
        if snapshot and snapshot["overlays"]:
            try:
                with self.connect() as qmp:
                    self._commit_all(qmp, snapshot, errors)
            except SourceError as exc:
                errors.append(str(exc))
        for key, action in (("memory_dump", "delete-memory-dump"), ("saved_state", "delete-saved-state")):
            if self.created.get(key):
                try:
                    self._delete(action, self.created.pop(key))
                except SourceError as exc:
                    errors.append(str(exc))
        if errors:
            raise SourceError("cleanup incomplete: " + "; ".join(errors))

    def _commit_all(self, qmp: QMPClient, snapshot: dict[str, Any], errors: list[str]) -> None:
        for number, (name, overlay) in enumerate(list(snapshot["overlays"].items())):
            try:
                self._commit(qmp, name, overlay, snapshot["bases"][name], snapshot["ids"][name], number)
                self._delete("delete-overlay", overlay)
                del snapshot["overlays"][name]
            except SourceError as exc:
                log.error("cleanup of %s failed: %s", name, exc)
                errors.append(str(exc))
        if not snapshot["overlays"]:
            self.created.pop("snapshot", None)

    def _commit(
        self, qmp: QMPClient, name: str, overlay: str, base: str, ids: dict[str, Any], number: int
    ) -> None:
        job = f"vmforensics-commit-{number}"
        target = {"device": ids["device"] or ids["overlay_node"]}  # -blockdev drives: the root node
        with self.session.action(
            "block-commit", disk=name, active=True, overlay=overlay, base=base, job_id=job
        ) as details:
            began = time.monotonic()
            qmp.execute("block-commit", **{"job-id": job, **target})
            ready = self._job_event(
                qmp, job, ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
            )
            if ready["event"] != "BLOCK_JOB_READY":
                raise SourceError(f"commit of {name} ended before it was ready: {ready.get('data')}")
            qmp.execute("block-job-complete", device=job)
            done = self._job_event(qmp, job, ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"))
            data = done.get("data") or {}
            details.update(seconds=round(time.monotonic() - began, 3), bytes=data.get("offset"))
            if done["event"] != "BLOCK_JOB_COMPLETED" or data.get("error"):
                raise SourceError(f"commit of {name} failed: {data.get('error') or done['event']}")
            now = {d.key: d for d in block_devices(qmp.execute("query-block"))}
            drive = now.get(ids["key"])
            top = drive.layers[0].filename if drive and drive.layers else None
            still = [
                n["node_name"]
                for n in node_files(qmp.execute("query-named-block-nodes", flat=True))
                if n["file"] == overlay
            ]
            details.update(disk_now=top, nodes_on_overlay=still)
            if top != base:
                raise SourceError(f"after block-commit {name} is on {top}, not on {base}")
            if still:
                raise SourceError(f"after block-commit nodes {still} still use {overlay}")

    def _job_event(self, qmp: QMPClient, job: str, names: tuple[str, ...]) -> dict[str, Any]:
        def accept(event: dict[str, Any]) -> bool:
            data = event.get("data")
            return event.get("event") in names and isinstance(data, dict) and data.get("device") == job

        return qmp.wait_event(accept, self.job_timeout, f"end of block job {job}")

    def _delete(self, action: str, path: str) -> None:
        with self.session.action(action, file=path) as details:
            self.host.run(["rm", "-f", "--", path])
            details["exists_now"] = self.host.exists(path)
