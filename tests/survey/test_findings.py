"""Findings computed from inventories that files and vcsim cannot produce: host clocks set wrong,
moves older than the window, and the MAC ranges of each hypervisor."""

from __future__ import annotations

import datetime as dt

import pytest

from vmforensics.custody.models import ClockReading, SourceInfo
from vmforensics.survey.findings import with_findings
from vmforensics.survey.macs import outside_vendor_range
from vmforensics.survey.models import HostRecord, MoveRecord, NICRecord, SurveyReport, VMRecord, iso

NOW = dt.datetime.now(dt.UTC)


def report(vms=(), hosts=()) -> SurveyReport:
    return with_findings(SurveyReport(source=SourceInfo(kind="vmware", host="vc"), vms=vms, hosts=hosts))


def clock(skew: float) -> ClockReading:
    return ClockReading(iso(NOW), iso(NOW + dt.timedelta(seconds=skew)), skew, 0.004, "QueryDateTime")


def test_host_clock_beyond_threshold() -> None:
    found = report(hosts=(HostRecord("esx01", clock=clock(412.5)), HostRecord("esx02", clock=clock(2.0))))

    (finding,) = found.findings_of("clock-skew")
    assert finding.subject == "esx01" and "412.5 s ahead of the examiner's" in finding.explanation


def test_host_clocks_within_threshold_or_unknown() -> None:
    hosts = (HostRecord("esx01", clock=clock(-59.9)), HostRecord("esx02", clock=None))
    assert report(hosts=hosts).findings_of("clock-skew") == ()


def move(days_ago: float) -> MoveRecord:
    return MoveRecord(
        time=iso(NOW - dt.timedelta(days=days_ago)),
        event="VmMigratedEvent",
        source_host="esx01",
        target_host="esx02",
        source_datastore="ds1",
        target_datastore="ds2",
    )


def test_recent_move_names_hosts_and_datastores() -> None:
    vm = VMRecord(name="web01", host="esx02", moves=(move(2),), power_state="poweredOn")

    (finding,) = report(vms=(vm,)).findings_of("recent-move")
    assert finding.facts["hosts"] == ["esx01", "esx02"] and finding.facts["datastores"] == ["ds1", "ds2"]
    assert "from esx01 to esx02" in finding.explanation


def test_move_older_than_the_window_is_not_reported() -> None:
    vm = VMRecord(name="web01", host="esx02", moves=(move(45),), power_state="poweredOn")
    assert report(vms=(vm,)).findings_of("recent-move") == ()


@pytest.mark.parametrize(
    ("vendor", "mac", "kind", "outside"),
    [
        ("vmware", "00:50:56:3f:ff:ff", "manual", False),
        ("vmware", "00:50:56:40:00:00", "manual", True),
        ("vmware", "00:0c:29:12:34:56", "generated", False),
        ("vmware", "00:50:56:bf:00:01", "assigned", False),
        ("vmware", "00:50:56:c0:00:01", "assigned", True),
        ("vmware", "00:15:5d:01:02:03", "manual", True),
        ("hyperv", "00:15:5d:01:02:03", "static", False),
        ("hyperv", "00:50:56:01:02:03", "static", True),
        ("libvirt", "52:54:00:12:34:56", None, False),
        ("libvirt", "de:ad:be:ef:00:01", None, True),
    ],
)
def test_mac_ranges(vendor: str, mac: str, kind: str | None, outside: bool) -> None:
    assert bool(outside_vendor_range(vendor, mac, kind)) is outside


def test_nic_without_mac_is_ignored() -> None:
    vm = VMRecord(name="x", nics=(NICRecord(label="eth0", mac=None, address_type="manual"),))
    assert report(vms=(vm,)).findings == ()
