"""Reading a VMware .vmsd (the snapshot list): names, times, parents, state files and disks.

``snapshotN.createTimeHigh``/``createTimeLow`` are the two 32-bit halves (written as signed
decimals) of the creation time in microseconds since the Unix epoch.
"""

from __future__ import annotations

import datetime as dt
import re

import attrs

from vmforensics.hypervisors.local.vmx import parse_vmx

_SNAPSHOT_KEY = re.compile(r"^snapshot(\d+)\.(.+)$")


@attrs.frozen
class VmsdSnapshot:
    uid: str
    name: str
    created: dt.datetime | None
    parent: str | None
    state_file: str | None  # the .vmsn
    description: str | None
    disks: tuple[str, ...]


def _created(high: str | None, low: str | None) -> dt.datetime | None:
    try:
        micros = ((int(high) & 0xFFFFFFFF) << 32) | (int(low) & 0xFFFFFFFF)
    except (TypeError, ValueError):
        return None
    try:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    except OverflowError:
        return None


def parse_vmsd(text: str) -> list[VmsdSnapshot]:
    """The snapshots listed, in file order."""
    entries = parse_vmx(text)
    numbered: dict[str, dict[str, str]] = {}
    for key, value in entries.items():
        match = _SNAPSHOT_KEY.match(key)
        if match:
            numbered.setdefault(match.group(1), {})[match.group(2)] = value
    snapshots = []
    for number in sorted(numbered, key=int):
        fields = numbered[number]
        if "uid" not in fields:
            continue
        disks = tuple(
            value for key, value in sorted(fields.items()) if re.match(r"^disk\d+\.filename$", key) and value
        )
        snapshots.append(
            VmsdSnapshot(
                uid=fields["uid"],
                name=fields.get("displayname", f"snapshot {fields['uid']}"),
                created=_created(fields.get("createtimehigh"), fields.get("createtimelow")),
                parent=fields.get("parent"),
                state_file=fields.get("filename"),
                description=fields.get("description"),
                disks=disks,
            )
        )
    return snapshots


def depths(snapshots: list[VmsdSnapshot]) -> dict[str, int]:
    """uid -> depth in the tree (1 for a root); a loop or unknown parent ends the walk."""
    parents = {s.uid: s.parent for s in snapshots}
    found: dict[str, int] = {}
    for snapshot in snapshots:
        depth, current, seen = 1, parents.get(snapshot.uid), {snapshot.uid}
        while current in parents and current not in seen:
            seen.add(current)
            depth += 1
            current = parents[current]
        found[snapshot.uid] = depth
    return found
