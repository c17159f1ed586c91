"""Batch acquisition on a real Dask cluster: ``distributed.LocalCluster(processes=True)``, a
scheduler and worker processes talking TCP on loopback. Secrets are absent from every task payload
the scheduler holds (captured by a scheduler plugin) while the workers log in with them to a real
OpenSSH sshd; the per-host limit holds across workers (read from the members' ledgers); a worker
killed mid-acquisition leaves its member resumable, the record says so, and resuming finishes it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.acquire.test_batch import busy_interval, ledger_events, ledger_events_of, make_vms, overlapping
from tests.custody.pki import TestCA, name, write_certificates
from tests.custody.test_pkcs11 import MODULE, PIN, TOKEN, token  # noqa: F401 (the SoftHSM2 fixture)
from tests.transport.sshd import SSHServer
from vmforensics import CaseInfo, SigningKey, verify
from vmforensics.acquire.batch import Limits
from vmforensics.acquire.batch_plan import AcquisitionPlan, KeyRef, SecretRef
from vmforensics.survey.acquisition import acquire_many

distributed = pytest.importorskip("distributed", reason="Dask distributed (the dask extra)")
cloudpickle = pytest.importorskip("cloudpickle")

CASE = CaseInfo(case_id="2026-119", examiner="A. Analyst")
SSH_PASSWORD = "planted-ssh-secret-7f3a91"
KEY_PASSPHRASE = "planted-key-passphrase-c2d04e"


class CapturePayloads(distributed.diagnostics.plugin.SchedulerPlugin):
    """Keeps the pickled run_spec of every member's task the scheduler is given (what workers
    receive; the driver's probe for the scheduler's address carries nothing)."""

    name = "vmf-capture"

    def __init__(self) -> None:
        self.payloads: dict[str, bytes] = {}

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        task = self.scheduler.tasks.get(key)
        if (
            task is not None
            and task.run_spec is not None
            and str(key).startswith("run_member")
            and str(key) not in self.payloads
        ):
            self.payloads[str(key)] = cloudpickle.dumps(task.run_spec)


@contextlib.contextmanager
def dask_cluster(workers: int) -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets live in the environment the worker processes inherit, nowhere else."""
    monkeypatch.setenv("VMF_TEST_SSH_PW", SSH_PASSWORD)
    monkeypatch.setenv("VMF_TEST_KEY_PASS", KEY_PASSPHRASE)


def test_secrets_never_travel_in_task_payloads_while_workers_log_in_with_them(
    tmp_path: Path, secrets_env: None
) -> None:
    folders = make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    shared = Path(tempfile.mkdtemp(prefix="vmf-batch-ssh-"))  # readable by the SSH test user
    try:
        shared.chmod(0o755)
        (shared / "auth.log").write_bytes(b"Dec  1 23:00:01 web sshd[1]: Accepted password\n" * 1000)
        (shared / "auth.log").chmod(0o644)
        key_path = tmp_path / "examiner.pem"
        key = SigningKey.generate()
        key.save(key_path, passphrase=KEY_PASSPHRASE)
        lab = TestCA(tmp_path / "ca", "Lab CA")  # the examiner's certificate travels as a path too
        leaf = lab.issue(name("A. Analyst"), load_pem_public_key(key.public_key().to_pem()))
        cert = write_certificates(tmp_path / "examiner.crt", leaf)
        with SSHServer(tmp_path / "sshd", password_user=("vmfbatch", SSH_PASSWORD)) as server:
            plans = [AcquisitionPlan(f.name, str(f)) for f in folders] + [
                AcquisitionPlan(
                    "web-logs",
                    "web-logs",
                    kind="ssh-files",
                    settings={
                        "host": server.host,
                        "port": server.port,
                        "user": "vmfbatch",
                        "known_hosts": str(server.known_hosts),
                        "paths": [str(shared / "auth.log")],
                    },
                    secrets={"password": SecretRef(env="VMF_TEST_SSH_PW")},
                )
            ]
            with dask_cluster(2) as client:
                client.register_plugin(CapturePayloads())
                batch = acquire_many(
                    plans,
                    tmp_path / "out",
                    case=CASE,
                    executor=client.get_executor(),
                    limits=Limits(total=3),
                    signer=KeyRef(key_path, SecretRef(env="VMF_TEST_KEY_PASS"), certificates=cert),
                    progress=False,
                )
                payloads = client.run_on_scheduler(
                    lambda dask_scheduler: dask_scheduler.plugins["vmf-capture"].payloads
                )
                events = client.run_on_scheduler(
                    lambda dask_scheduler: cloudpickle.dumps(dict(dask_scheduler.get_events()))
                )
            sshd_log = server.log.read_text()
    finally:
        shutil.rmtree(shared)

    assert batch.ok, [item.error for item in batch.failed]
    assert len(payloads) == 3
    for payload in payloads.values():
        assert b"VMF_TEST_KEY_PASS" in payload  # the capture sees the plans: the references are there
        assert SSH_PASSWORD.encode() not in payload and KEY_PASSPHRASE.encode() not in payload
    assert any(b"VMF_TEST_SSH_PW" in p for p in payloads.values())
    assert SSH_PASSWORD.encode() not in events and KEY_PASSPHRASE.encode() not in events
    assert "Accepted password for vmfbatch" in sshd_log  # the worker really logged in with it
    logs = tmp_path / "out" / "web-logs"
    assert (logs / "files").is_dir() and verify(logs, key.public_key()).ok
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert SSH_PASSWORD.encode() not in content and KEY_PASSPHRASE.encode() not in content, path
    check = verify(tmp_path / "out", key.public_key())
    assert check.ok, str(check)
    proven = verify(tmp_path / "out", ca=lab.pem)  # the record's chain and each member's, by the CA
    assert proven.ok and proven.certificate_status == "VERIFIED", str(proven)
    assert (tmp_path / "out" / "web01" / "manifest.json.chain.pem").read_bytes() == cert.read_bytes()


def test_per_host_limit_holds_across_dask_workers(tmp_path: Path) -> None:
    names = [f"vm{i}" for i in range(6)]
    folders = make_vms(tmp_path / "ds", names, tmp_path / "staging", memory_bytes=96 << 20)
    plans = [
        AcquisitionPlan(n, str(f), host="esx-a" if i < 3 else "esx-b")
        for i, (n, f) in enumerate(zip(names, folders, strict=True))
    ]
    with dask_cluster(3) as client:
        batch = acquire_many(
            plans,
            tmp_path / "out",
            case=CASE,
            executor=client.get_executor(),
            limits=Limits(per_host=1),
            progress=False,
        )
        addresses = set(client.run(os.getpid))

    assert batch.ok
    intervals = {n: busy_interval(tmp_path / "out" / n) for n in names}
    assert overlapping([intervals[n] for n in names[:3]]) == 1
    assert overlapping([intervals[n] for n in names[3:]]) == 1
    started = [
        e["details"]
        for e in ledger_events_of(tmp_path / "out" / "batch.log.jsonl")
        if e["action"] == "started"
    ]
    assert (
        len(started) == 6
        and {s["worker"] for s in started} <= addresses
        and len({s["worker"] for s in started}) >= 2
    )
    assert {item.worker for item in batch.items} <= addresses


def test_worker_killed_mid_acquisition_leaves_member_resumable_and_resume_seals_it(tmp_path: Path) -> None:
    folders = make_vms(tmp_path / "ds", ["web01", "db01", "big01"], tmp_path / "staging")
    with open(folders[2] / "big01.vmem", "wb") as f:
        f.truncate(3 << 30)  # sparse: reads fast, takes seconds to write and hash
    plans = [AcquisitionPlan(f.name, str(f)) for f in folders]
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_mid_file(vm: str, update: Any) -> None:
        if vm != "big01" or killed or not update.file.endswith("big01.vmem") or update.file_done < 64 << 20:
            return  # mid-way through the large file (not between sealing a file and logging it)
        started = [e for e in ledger_events_of(out / "batch.log.jsonl") if e["action"] == "started"]
        pid = next(e["details"]["pid"] for e in started if e["details"]["member"] == "big01")
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    with dask_cluster(2) as client:
        first = acquire_many(
            plans,
            out,
            case=CASE,
            executor=client.get_executor(),
            limits=Limits(total=3),
            progress=kill_mid_file,
        )
        assert killed and [item.vm for item in first.failed] == ["big01"]
        record = json.loads((out / "batch.json").read_bytes())
        big = next(m for m in record["members"] if m["name"] == "big01")
        assert big["outcome"] == "failed" and big["manifest_sha256"] is None
        assert "interrupted" in big["reason"] or "KilledWorker" in big["reason"], big["reason"]
        assert not (out / "big01" / "manifest.json").exists()
        assert ledger_events(out / "big01")[-1]["action"] != "seal"  # the member stopped mid-acquisition
        sealed_before = {n: (out / n / "manifest.json").read_bytes() for n in ("web01", "db01")}

        again = acquire_many(
            plans, out, case=CASE, executor=client.get_executor(), progress=False, resume=True
        )

    assert again.ok, [item.error for item in again.failed]
    assert {n: (out / n / "manifest.json").read_bytes() for n in sealed_before} == sealed_before
    rerun = ledger_events_of(out / "batch.log.jsonl")[record["ledger"]["events"] :]
    assert [e["details"]["member"] for e in rerun if e["action"] == "submitted"] == ["big01"]
    assert any(e["action"] == "resume" for e in ledger_events(out / "big01"))
    check = verify(out)
    assert check.ok, str(check)


def test_fleet_page_dask_recipe_runs_on_a_local_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.acquire.test_batch import fleet_recipes

    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    key = SigningKey.generate()
    key.save(tmp_path / "examiner.pem", passphrase=KEY_PASSPHRASE)
    monkeypatch.setenv("VMFORENSICS_KEY_PASSPHRASE", KEY_PASSPHRASE)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        exec(
            fleet_recipes()["dask-python"],
            {
                "DATASTORE": tmp_path / "ds",
                "OUT": tmp_path / "out",
                "SCHEDULER": cluster.scheduler_address,
                "KEY": tmp_path / "examiner.pem",
            },
        )
    check = verify(tmp_path / "out", key.public_key())
    assert check.ok, str(check)


@pytest.mark.usefixtures("token")
@pytest.mark.skipif(not Path(MODULE).exists(), reason="needs softhsm2")
def test_workers_sign_with_the_examiners_pkcs11_token_pin_never_in_a_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM2 (a real PKCS#11 token); each worker process opens its own session with the PIN
    it reads from its environment."""
    from vmforensics import TokenKeyRef
    from vmforensics.custody.pkcs11 import PKCS11Key

    monkeypatch.setenv("VMF_TEST_PIN", PIN)
    folders = make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    signer = TokenKeyRef(MODULE, TOKEN, "p256", pin=SecretRef(env="VMF_TEST_PIN"))
    with dask_cluster(2) as client:
        client.register_plugin(CapturePayloads())
        batch = acquire_many(
            [AcquisitionPlan(f.name, str(f)) for f in folders],
            tmp_path / "out",
            case=CASE,
            executor=client.get_executor(),
            signer=signer,
            progress=False,
        )
        payloads = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins["vmf-capture"].payloads
        )
    assert batch.ok, [i.error for i in batch.failed]
    assert payloads and all(b"VMF_TEST_PIN" in p and PIN.encode() not in p for p in payloads.values())
    public = signer.load().public_key()
    assert isinstance(signer.load(), PKCS11Key)
    check = verify(tmp_path / "out", public)
    assert check.ok, str(check)
    assert {
        json.loads((tmp_path / "out" / n / "manifest.json").read_bytes())["integrity"]["signer_key_id"]
        for n in ("web01", "db01")
    } == {public.key_id}


def test_acquire_batch_command_with_scheduler_runs_on_the_dask_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmforensics.cli import main
    from vmforensics.hypervisors.local.survey import survey_local

    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    plan = tmp_path / "plan.json"
    plan.write_bytes(survey_local(tmp_path / "ds").to_json())
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        code = main(["acquire-batch", str(plan), "--out", str(tmp_path / "out"), "--scheduler",
                     cluster.scheduler_address, "--per-datastore", "1", "--case", "2026-119", "--no-progress"])  # fmt: skip
        workers = set(cluster.scheduler.workers)
    assert code == 0, capsys.readouterr()
    record = json.loads((tmp_path / "out" / "batch.json").read_bytes())
    assert (
        record["executor"] == "ClientExecutor"
        and {m["worker"]["worker"] for m in record["members"]} <= workers
    )
    assert main(["verify", str(tmp_path / "out")]) == 0


def test_per_host_limit_holds_across_two_batches_at_once_on_one_cluster(tmp_path: Path) -> None:
    """Two examiners' batches on the same cluster and host, one in this process and one from
    ``acquire-batch --scheduler`` in another: the host's slot is a named distributed.Semaphore on
    the scheduler, so one acquisition runs at a time across both."""
    import subprocess
    import sys
    import time

    from tests.acquire.test_batch import ledger_events_of as batch_ledger

    names = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)]
    folders = make_vms(tmp_path / "ds", names, tmp_path / "staging", memory_bytes=32 << 20)
    plans = [AcquisitionPlan(n, str(f), host="esx-a") for n, f in zip(names, folders, strict=True)]
    (tmp_path / "b.json").write_text(
        json.dumps({"members": [{"name": p.name, "target": p.target, "host": "esx-a"} for p in plans[3:]]})
    )
    with dask_cluster(3) as client:
        other = subprocess.Popen(
            [sys.executable, "-m", "vmforensics", "acquire-batch", str(tmp_path / "b.json"), "--out",
             str(tmp_path / "b"), "--scheduler", client.scheduler.address, "--per-host", "1", "--case", "c2",
             "--examiner", "B. Analyst", "--no-progress"],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip
        try:
            ledger = tmp_path / "b" / "batch.log.jsonl"
            deadline = time.monotonic() + 60
            while not (ledger.is_file() and b'"submitted"' in ledger.read_bytes()):  # B holds the slot
                assert time.monotonic() < deadline and other.poll() is None
                time.sleep(0.05)
            ours = acquire_many(
                plans[:3],
                tmp_path / "a",
                case=CASE,
                executor=client.get_executor(),
                limits=Limits(total=3, per_host=1),
                progress=False,
            )
        finally:
            assert other.wait(timeout=120) == 0
        slots = client.run_on_scheduler(
            lambda dask_scheduler: dict(dask_scheduler.extensions["semaphores"].max_leases)
        )

    assert ours.ok and slots == {"vmforensics/host:esx-a/1": 1}
    intervals = [busy_interval(tmp_path / n[0] / n) for n in names]
    assert overlapping(intervals) == 1
    spans = [[e["time"] for e in batch_ledger(tmp_path / b / "batch.log.jsonl")] for b in "ab"]
    assert spans[0][0] < spans[1][-1] and spans[1][0] < spans[0][-1]  # the batches ran at the same time
    started = [
        e for b in "ab" for e in batch_ledger(tmp_path / b / "batch.log.jsonl") if e["action"] == "started"
    ]
    assert len(started) == 6 and not any("reported" in e["details"] for e in started)  # live worker events
