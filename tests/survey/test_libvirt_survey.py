"""survey_libvirt against the real libvirtd (QEMU/TCG guests, tests/acquire/libvirt_lab.py) through
a real sshd: several domains, a directory storage pool, internal snapshots made by virsh, backing
chains made by qemu-img, and the QEMU logs libvirtd itself writes.

The daemon is shared with other test modules, so every domain and pool here is named ``svy…`` and
assertions are about those; where the survey reports something outside them (logs of domains
other tests removed) it is checked against ``virsh list --all`` as the oracle.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acquire import libvirt_lab
from tests.acquire.libvirt_lab import VNC_PASSWORD, LibvirtLab, run, virsh
from tests.transport.sshd import SSHServer
from vmforensics import cli
from vmforensics.hypervisors.libvirt.survey import SYSTEM_LOG_DIR, commands_sent, reading_only, survey_libvirt
from vmforensics.survey.models import SurveyReport, Thresholds

LOGS = Path(SYSTEM_LOG_DIR)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtLab]:
    if reason := libvirt_lab.available():
        pytest.skip(reason)
    with LibvirtLab(tmp_path_factory.mktemp("libvirt-survey")) as running:
        yield running


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    with SSHServer(tmp_path_factory.mktemp("sshd-survey")) as server:
        yield server


class Estate:
    """Domains and one directory pool on the lab's libvirtd, removed again at the end."""

    def __init__(self, lab: LibvirtLab, root: Path):
        self.lab = lab
        self.tag = uuid.uuid4().hex[:6]
        self.pool = root / "pool"
        self.pool.mkdir()
        self.pool_name = f"svy-pool-{self.tag}"
        virsh("pool-define-as", self.pool_name, "dir", "--target", str(self.pool))
        virsh("pool-start", self.pool_name)
        self.names: list[str] = []

    def name(self, label: str) -> str:
        return f"svy-{label}-{self.tag}"

    def disk(self, stem: str, *, depth: int = 1) -> Path:
        """A qcow2 chain ``depth`` images deep in the pool; returns its top."""
        below: Path | None = None
        for level in range(depth):
            image = self.pool / (f"{stem}.qcow2" if level == depth - 1 else f"{stem}-{level}.qcow2")
            backing = ["-b", str(below), "-F", "qcow2"] if below else []
            run("qemu-img", "create", "-q", "-f", "qcow2", *backing, str(image), "16M")
            below = image
        assert below is not None
        return below

    def domain(self, label: str, mac: str, *, start: bool = False, depth: int = 1) -> str:
        name = self.name(label)
        self.lab.define(name, self.lab.domain_xml(name, self.disk(name, depth=depth), mac), start=start)
        self.names.append(name)
        return name

    def close(self) -> None:
        for name in self.names:
            self.lab.remove_domain(name)
            (LOGS / f"{name}.log").unlink(missing_ok=True)
        virsh("pool-destroy", self.pool_name, check=False)
        virsh("pool-undefine", self.pool_name, check=False)


@pytest.fixture
def estate(lab: LibvirtLab, tmp_path: Path) -> Iterator[Estate]:
    built = Estate(lab, tmp_path)
    yield built
    built.close()


def survey(sshd: SSHServer, **options: Any) -> SurveyReport:
    return survey_libvirt(
        sshd.host,
        user=sshd.user,
        port=sshd.port,
        identity=sshd.client_key,
        known_hosts=sshd.known_hosts,
        **options,
    )


def ours(report: SurveyReport, estate: Estate, kind: str | None = None) -> list:
    """Findings about the estate's domains or pool folder."""
    return [
        f
        for f in report.findings
        if (kind is None or f.kind == kind) and (f.subject in estate.names or f.subject == str(estate.pool))
    ]


def host_view(estate: Estate) -> dict[str, Any]:
    """What the host looks like, read with virsh and the file system (the read-only oracle)."""
    return {
        "domains": {n: (virsh("domstate", n).strip(), virsh("dumpxml", n)) for n in estate.names},
        "snapshots": {n: virsh("snapshot-list", n, "--name") for n in estate.names},
        "pools": virsh("pool-list", "--all"),
        "files": {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(estate.pool.iterdir())},
    }


def test_clean_estate_inventory_without_findings_and_nothing_changed(lab, sshd, estate) -> None:
    web = estate.domain("web", "52:54:00:5e:10:01", start=True, depth=2)
    db = estate.domain("db", "52:54:00:5e:10:02")
    virsh("snapshot-create-as", db, "before-patch")
    before = host_view(estate)

    report = survey(sshd)

    assert host_view(estate) == before
    sent = commands_sent(report)
    assert sent and all(reading_only(c) for c in sent), [c for c in sent if not reading_only(c)]
    assert not any(re.search(r"\b(start|destroy|define|undefine|snapshot-create|refresh)\b", c) for c in sent)
    assert VNC_PASSWORD not in report.to_json().decode()  # dumpxml without --security-info

    vms = {vm.name: vm for vm in report.vms}
    assert vms[web].power_state == "running" and vms[db].power_state == "shut off"
    assert vms[web].uuid == virsh("domuuid", web).strip() and vms[web].reference == vms[web].uuid
    assert vms[web].macs == ("52:54:00:5e:10:01",) and vms[web].nics[0].network == "user"
    (disk,) = vms[web].disks
    assert disk.path == str(estate.pool / f"{web}.qcow2") and disk.chain_depth == 2
    assert disk.capacity == 16 << 20 and disk.files[1] == str(estate.pool / f"{web}-0.qcow2")
    assert disk.allocated == sum((estate.pool / Path(f).name).stat().st_size for f in disk.files)
    assert vms[web].datastores == (estate.pool_name,)
    assert vms[web].last_activity_basis == "running at the time of the survey"
    assert vms[web].last_power_on is not None
    assert [(s.name, s.depth, s.memory) for s in vms[db].snapshots] == [("before-patch", 1, False)]
    assert vms[db].config_path == f"/etc/libvirt/qemu/{db}.xml" and vms[db].details["persistent"] is True

    assert ours(report, estate) == []
    assert not [f for f in report.unclaimed_files if f.path.startswith(str(estate.pool))]
    assert report.findings_of("clock-skew") == ()
    defined = set(virsh("list", "--all", "--name").split())
    for found in report.unclaimed_files:  # logs reported are those of domains that are gone
        assert found.path.startswith(SYSTEM_LOG_DIR)
        assert re.sub(r"\.log(\.\d+)?$", "", Path(found.path).name) not in defined


def test_duplicate_mac_across_running_domains(lab, sshd, estate) -> None:
    a = estate.domain("dup-a", "52:54:00:5e:20:01", start=True)
    b = estate.domain("dup-b", "52:54:00:5e:20:01", start=True)
    c = estate.domain("dup-c", "52:54:00:5e:20:02")

    found = ours(survey(sshd), estate, "duplicate-mac")

    assert sorted(f.subject for f in found) == sorted([a, b])
    assert all(f.severity == "high" and f.facts["mac"] == "52:54:00:5e:20:01" for f in found)
    assert c not in {f.subject for f in found}


def test_mac_outside_the_libvirt_range(lab, sshd, estate) -> None:
    odd = estate.domain("oddmac", "02:00:00:aa:bb:01")
    estate.domain("goodmac", "52:54:00:5e:30:01")

    (finding,) = ours(survey(sshd), estate, "mac-outside-vendor-range")

    assert finding.subject == odd and finding.facts["mac"] == "02:00:00:aa:bb:01"
    assert "not a range libvirt generates from" in finding.explanation


def shift_log(name: str, days: int) -> None:
    """Move every timestamp of the domain's real QEMU log ``days`` into the past."""
    path = LOGS / f"{name}.log"

    def older(match: re.Match[str]) -> str:
        moment = dt.datetime.strptime(f"{match.group(1)} {match.group(3)}", "%Y-%m-%d %H:%M:%S")
        shifted = moment - dt.timedelta(days=days)
        return shifted.strftime(f"%Y-%m-%d{match.group(2)}%H:%M:%S")

    pattern = r"^(\d{4}-\d\d-\d\d)([ T])(\d\d:\d\d:\d\d)"
    path.write_text(re.sub(pattern, older, path.read_text(), flags=re.MULTILINE))
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    os.utime(path, (stamp, stamp))


def test_dormant_domain_from_its_log_and_disk_times(lab, sshd, estate) -> None:
    old = estate.domain("old", "52:54:00:5e:40:01", start=True)
    recent = estate.domain("recent", "52:54:00:5e:40:02", start=True)
    for name in (old, recent):
        virsh("destroy", name)  # libvirtd writes "starting up" and "shutting down" lines
    shift_log(old, 200)
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=200, minutes=1)).timestamp()  # written before
    for image in estate.pool.glob(f"{old}*"):
        os.utime(image, (stamp, stamp))

    report = survey(sshd)

    (finding,) = ours(report, estate, "dormant-vm")
    assert finding.subject == old and "for 200 days" in finding.explanation
    vm = next(v for v in report.vms if v.name == old)
    assert vm.last_activity_basis == f"the last timestamped line of {LOGS / f'{old}.log'}"
    assert vm.last_power_on is not None and vm.last_power_on < vm.last_activity
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    strict = survey(sshd, thresholds=Thresholds(active_since=since))
    assert {f.subject for f in ours(strict, estate, "dormant-vm")} == {old}  # recent ran today


def test_snapshot_sprawl_old_and_deep(lab, sshd, estate, tmp_path) -> None:
    aged = estate.domain("aged", "52:54:00:5e:50:01")
    virsh("snapshot-create-as", aged, "golden")
    xml = tmp_path / "golden.xml"
    xml.write_text(
        re.sub(
            r"<creationTime>\d+</creationTime>",
            f"<creationTime>{int(dt.datetime.now(dt.UTC).timestamp()) - 30 * 86400}</creationTime>",
            virsh("snapshot-dumpxml", aged, "golden"),
        )
    )
    virsh("snapshot-create", aged, str(xml), "--redefine")  # as a host keeps it after 30 days
    deep = estate.domain("deep", "52:54:00:5e:50:02")
    for n in range(4):
        virsh("snapshot-create-as", deep, f"s{n}")
    chained = estate.domain("chained", "52:54:00:5e:50:03", depth=5)
    fine = estate.domain("fine", "52:54:00:5e:50:04", depth=2)
    virsh("snapshot-create-as", fine, "today")

    report = survey(sshd)

    found = {f.subject: f for f in ours(report, estate, "snapshot-sprawl")}
    assert set(found) == {aged, deep, chained}
    assert found[aged].facts["old"] == ["golden"] and "30 days" in found[aged].explanation
    assert found[deep].facts["depth"] == 4
    assert found[chained].facts["depth"] == 4 and found[chained].facts["snapshots"] == 0
    assert [s.depth for s in next(v for v in report.vms if v.name == deep).snapshots] == [1, 2, 3, 4]


def test_orphaned_pool_images_and_logs_of_removed_domains(lab, sshd, estate) -> None:
    kept = estate.domain("kept", "52:54:00:5e:60:01", depth=2)
    ghost = estate.disk(estate.name("ghost"))
    (estate.pool / f"{estate.name('ghost')}.save").write_bytes(b"LibvirtQemudSave" + bytes(100))
    (estate.pool / "install.iso").write_bytes(bytes(2048))
    gone = estate.domain("gone", "52:54:00:5e:60:02", start=True)
    estate.lab.remove_domain(gone)  # its log stays behind, as on a real host

    report = survey(sshd)

    files = {f.path: f for f in report.unclaimed_files}
    pool_files = {p for p in files if p.startswith(str(estate.pool))}
    assert pool_files == {
        str(ghost),
        str(estate.pool / f"{estate.name('ghost')}.save"),
        str(estate.pool / f"{gone}.qcow2"),
    }
    assert files[str(ghost)].reason == "a disk image no domain's disks, backing chains or snapshots use"
    assert files[str(ghost)].datastore == estate.pool_name
    assert "a domain not defined here" in files[str(LOGS / f"{gone}.log")].reason
    (finding,) = ours(report, estate, "orphaned-files")
    assert finding.subject == str(estate.pool) and finding.facts["bytes"] == sum(
        files[p].size for p in pool_files
    )
    assert any("ISO images" in n for n in report.notes)
    assert kept in {vm.name for vm in report.vms}


def test_clock_skew_of_the_host(lab, sshd, estate, tmp_path_factory) -> None:
    bin_dir = tmp_path_factory.mktemp("skewed-bin")
    wrapper = bin_dir / "date"
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/date -d "@$(( $(/usr/bin/date +%s) + 900 ))" "$@"\n')
    wrapper.chmod(0o755)
    config = f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n"
    estate.domain("clock", "52:54:00:5e:70:01")
    with SSHServer(tmp_path_factory.mktemp("sshd-skew"), extra_config=config) as skewed:
        report = survey(skewed)

    (finding,) = report.findings_of("clock-skew")
    assert 890 < finding.facts["skew_seconds"] < 910 and "ahead of the examiner's" in finding.explanation
    assert report.clock is not None and report.clock.method.startswith("date -u +%s.%N on ")


def test_cli_survey_libvirt_json(lab, sshd, estate, capsys) -> None:
    name = estate.domain("cli", "52:54:00:5e:80:01")
    args = ["survey", "libvirt", "--host", sshd.host, "--port", str(sshd.port), "--user", sshd.user]
    args += ["--identity", str(sshd.client_key), "--host-key-fingerprint", sshd.host_key_fingerprint]

    assert cli.main([*args, "--json"]) == 0

    report = SurveyReport.from_json(capsys.readouterr().out)
    assert report.source.kind == "libvirt" and name in {vm.name for vm in report.vms}
    assert cli.main([*args[:-2], "--known-hosts", "/dev/null"]) != 0  # unknown host key: refused


def test_backing_file_outside_the_roots_is_reported_not_opened(lab, sshd, estate, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.mkfifo(outside / "trap.qcow2")  # qemu-img opening it would block until the command timeout
    name = estate.name("trap")
    top = estate.pool / f"{name}.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "../elsewhere/trap.qcow2", "-F", "qcow2",
        str(top), "1M")  # fmt: skip
    lab.define(name, lab.domain_xml(name, top, "52:54:00:5e:10:31"), start=False)
    estate.names.append(name)

    report = survey(sshd, command_timeout=30)

    (disk,) = next(vm for vm in report.vms if vm.name == name).disks
    assert disk.files == (str(top),) and disk.chain_depth == 1
    assert f"{outside / 'trap.qcow2'} lies outside the acquisition roots" in disk.error
    assert f"named '../elsewhere/trap.qcow2' in {top}" in disk.error
    assert not [c for c in commands_sent(report) if "elsewhere" in c]

    allowed = survey(sshd, command_timeout=30, allowed_roots=[str(outside)])  # now beneath a root ...

    (disk,) = next(vm for vm in allowed.vms if vm.name == name).disks
    assert disk.chain_depth == 1 and "outside the acquisition roots" not in disk.error
    assert "fifo" in disk.error.lower()  # ... and still typed before qemu-img opens it: no wait
