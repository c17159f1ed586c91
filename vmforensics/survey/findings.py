"""Findings: facts in the inventory a responder should act on, each explained in one sentence.

Every finding is computed from the :class:`SurveyReport` alone (no further calls to the source)
against its :class:`Thresholds`, relative to the moment the survey was taken.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections import defaultdict
from collections.abc import Callable

import attrs

from vmforensics.survey import macs
from vmforensics.survey.models import Finding, SurveyReport, VMRecord, parse_time

RUNNING_STATES = {"poweredon", "running", "on", "paused", "locked"}


def is_running(vm: VMRecord) -> bool:
    """Running or possibly running (a local VM folder with lock files counts as running)."""
    return (vm.power_state or "").split(" ", 1)[0].lower() in RUNNING_STATES


def vendor_of(report: SurveyReport, vm: VMRecord) -> str:
    return str(vm.details.get("vendor") or report.source.kind)


def duplicate_macs(report: SurveyReport) -> list[Finding]:
    owners: dict[str, list[VMRecord]] = defaultdict(list)
    for vm in report.vms:
        for mac in dict.fromkeys(m for m in (macs.normalise(n.mac) for n in vm.nics) if m):
            owners[mac].append(vm)
    found = []
    for mac, vms in sorted(owners.items()):
        if len(vms) < 2:
            continue
        running = [vm.name for vm in vms if is_running(vm)]
        names = ", ".join(vm.name for vm in vms)
        if len(running) >= 2:
            tail = f"{len(running)} of them run at once, so they conflict on the network"
        else:
            tail = "powering them on together would make them conflict on the network"
        for vm in vms:
            found.append(
                Finding(
                    "duplicate-mac",
                    "high" if len(running) >= 2 else "warning",
                    vm.name,
                    f"MAC {mac} is configured on {len(vms)} VMs ({names}); {tail}.",
                    {"mac": mac, "vms": [v.name for v in vms], "running": running},
                )
            )
    return found


def macs_outside_range(report: SurveyReport) -> list[Finding]:
    found = []
    for vm in report.vms:
        for nic in vm.nics:
            mac = macs.normalise(nic.mac)
            if mac is None:
                continue
            why = macs.outside_vendor_range(vendor_of(report, vm), mac, nic.address_type)
            if why:
                found.append(
                    Finding(
                        "mac-outside-vendor-range",
                        "warning",
                        vm.name,
                        f"{vm.name}'s adapter {nic.label or '?'} has MAC {mac}: {why}.",
                        {"mac": mac, "adapter": nic.label, "address_type": nic.address_type},
                    )
                )
    return found


def dormant_vms(report: SurveyReport) -> list[Finding]:
    now = parse_time(report.taken)
    limits = report.thresholds
    cutoff = now - dt.timedelta(days=limits.dormant_days)
    since = parse_time(limits.active_since) if limits.active_since else None
    found = []
    for vm in report.vms:
        last = parse_time(vm.last_activity)
        if vm.template or is_running(vm) or last is None:
            continue
        reasons = []
        if last < cutoff:
            reasons.append(f"for {(now - last).days} days (more than {limits.dormant_days:g})")
        if since is not None and last < since:
            reasons.append(f"not since {limits.active_since}")
        if reasons:
            found.append(
                Finding(
                    "dormant-vm",
                    "warning",
                    vm.name,
                    f"{vm.name} has not run {' and '.join(reasons)} (last active {vm.last_activity}, "
                    f"from {vm.last_activity_basis}): a forgotten VM nobody patches or watches.",
                    {"last_activity": vm.last_activity, "basis": vm.last_activity_basis},
                )
            )
    return found


def orphaned_files(report: SurveyReport) -> list[Finding]:
    folders: dict[str, list] = defaultdict(list)
    for record in report.unclaimed_files:
        folders[posixpath.dirname(record.path.replace("\\", "/"))].append(record)
    found = []
    for folder, records in sorted(folders.items()):
        size = sum(r.size or 0 for r in records)
        newest = max((r.modified for r in records if r.modified), default=None)
        names = ", ".join(posixpath.basename(r.path) for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        found.append(
            Finding(
                "orphaned-files",
                "warning",
                folder or "/",
                f"{len(records)} files ({size:,} bytes; {names}{more}) in {folder or '/'} belong to no "
                f"registered VM{f' (newest modified {newest})' if newest else ''}: an unregistered or "
                "deleted VM's disks and logs may still be there.",
                {"files": [r.path for r in records], "bytes": size, "newest": newest},
            )
        )
    return found


def snapshot_sprawl(report: SurveyReport) -> list[Finding]:
    now = parse_time(report.taken)
    limits = report.thresholds
    found = []
    for vm in report.vms:
        old = [
            (s, (now - created).total_seconds() / 86400)
            for s in vm.snapshots
            if (created := parse_time(s.created)) is not None
            and (now - created).total_seconds() > limits.snapshot_age_days * 86400
        ]
        disk_depth = max((d.chain_depth - 1 for d in vm.disks if d.chain_depth), default=0)
        depth = max(vm.snapshot_depth, disk_depth)
        problems = []
        if old:
            oldest, age = max(old, key=lambda pair: pair[1])
            problems.append(
                f"{len(old)} older than {limits.snapshot_age_days:g} days (oldest {oldest.name!r}, {age:.0f} days)"
            )
        if depth > limits.snapshot_depth:
            problems.append(f"a chain {depth} deep (more than {limits.snapshot_depth})")
        if problems:
            found.append(
                Finding(
                    "snapshot-sprawl",
                    "warning",
                    vm.name,
                    f"{vm.name} has {len(vm.snapshots)} snapshots, {' and '.join(problems)}: they slow "
                    "the VM and hold earlier disk and memory states worth acquiring.",
                    {
                        "snapshots": len(vm.snapshots),
                        "old": [s.name for s, _ in old],
                        "depth": depth,
                    },
                )
            )
    return found


def clock_skew(report: SurveyReport) -> list[Finding]:
    limit = report.thresholds.clock_skew_seconds
    readings = [(host.name, host.clock) for host in report.hosts if host.clock is not None]
    if report.clock is not None:
        readings.append((report.source.host or report.source.kind, report.clock))
    found = []
    for name, clock in readings:
        if clock.skew_seconds is None or abs(clock.skew_seconds) <= limit:
            continue
        direction = "ahead of" if clock.skew_seconds > 0 else "behind"
        found.append(
            Finding(
                "clock-skew",
                "warning",
                name,
                f"{name}'s clock is {abs(clock.skew_seconds):,.1f} s {direction} the examiner's (round trip "
                f"{clock.round_trip_seconds or 0:.3f} s, more than {limit:g} s): correct its timestamps "
                "by this much on a timeline.",
                {"skew_seconds": clock.skew_seconds, "method": clock.method},
            )
        )
    return found


def recent_moves(report: SurveyReport) -> list[Finding]:
    now = parse_time(report.taken)
    cutoff = now - dt.timedelta(days=report.thresholds.moved_within_days)
    found = []
    for vm in report.vms:
        moves = [m for m in vm.moves if (t := parse_time(m.time)) is not None and t >= cutoff]
        if not moves:
            continue
        hosts = sorted({h for m in moves for h in (m.source_host, m.target_host) if h} | {vm.host} - {None})
        stores = sorted({d for m in moves for d in (m.source_datastore, m.target_datastore) if d} - {None})
        last = moves[-1]
        route = f"from {last.source_host or '?'} to {last.target_host or vm.host or '?'}"
        where = ", ".join(hosts + stores)
        found.append(
            Finding(
                "recent-move",
                "info",
                vm.name,
                f"{vm.name} moved {len(moves)} times in the last {report.thresholds.moved_within_days:g} "
                f"days (last {route} at {last.time}): its logs from before may be on {where}.",
                {"moves": len(moves), "hosts": hosts, "datastores": stores},
            )
        )
    return found


def vanished_vms(report: SurveyReport) -> list[Finding]:
    return [
        Finding(
            "vm-vanished",
            "high",
            vm.name,
            f"{vm.name} was removed from the inventory while the survey ran (unregistered or deleted): "
            "its files may be gone or orphaned; look for them on its datastores now.",
            {"reference": vm.reference, "config_path": vm.config_path, "datastores": list(vm.datastores)},
        )
        for vm in report.vms
        if vm.details.get("vanished_during_survey")
    ]


CHECKS: tuple[Callable[[SurveyReport], list[Finding]], ...] = (
    duplicate_macs,
    macs_outside_range,
    dormant_vms,
    orphaned_files,
    snapshot_sprawl,
    clock_skew,
    recent_moves,
    vanished_vms,
)


def evaluate(report: SurveyReport) -> tuple[Finding, ...]:
    """Every finding for ``report``, high severity first."""
    order = {"high": 0, "warning": 1, "info": 2}
    found = [finding for check in CHECKS for finding in check(report)]
    return tuple(sorted(found, key=lambda f: (order.get(f.severity, 3), f.kind, f.subject)))


def with_findings(report: SurveyReport) -> SurveyReport:
    """The report with its findings (re)computed from its inventory and thresholds."""
    return attrs.evolve(report, findings=evaluate(report))
