"""Batch acquisition on the local thread pool: the signed batch record and ledger, limits per host
held (read back from each member's own custody ledger), resume reruns only what is not sealed,
and the ``acquire-batch`` command. Real local VM folders; batch.json's signature is checked with
openssl and its member hashes with hashlib, not with the code that wrote them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

from tests.custody.test_pkcs11 import token  # noqa: F401 (the SoftHSM2 fixture)
from tests.survey.estate import add_vm
from vmforensics import CaseInfo, SigningKey, verify
from vmforensics.acquire.batch import Limits, limit_keys
from vmforensics.acquire.batch_plan import AcquisitionPlan, KeyRef, SecretRef, TokenKeyRef, plans_from_file
from vmforensics.cli import main
from vmforensics.custody.batch_record import BatchVerificationReport
from vmforensics.errors import UsageError
from vmforensics.hypervisors.local.survey import survey_local
from vmforensics.survey.acquisition import acquire_many

CASE = CaseInfo(case_id="2026-118", examiner="A. Analyst")


def make_vms(datastore: Path, names: list[str], staging: Path, *, memory_bytes: int = 0) -> list[Path]:
    """Demo VM folders; ``memory_bytes`` adds a sparse .vmem so that each takes a while to stream."""
    folders = []
    for index, name in enumerate(names):
        folder = add_vm(
            datastore, name, mac=f"00:50:56:b0:{index // 256:02x}:{index % 256:02x}", staging=staging
        )
        if memory_bytes:
            with open(folder / f"{name}.vmem", "wb") as f:
                f.truncate(memory_bytes)
        folders.append(folder)
    return folders


def ledger_events(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "custody.log.jsonl").read_bytes().splitlines()]


def busy_interval(directory: Path) -> tuple[dt.datetime, dt.datetime]:
    """From the member's own ledger: preserve's phase-start to stream's phase-end."""
    events = ledger_events(directory)
    start = next(
        e["time"] for e in events if e["action"] == "phase-start" and e["details"]["phase"] == "preserve"
    )
    end = next(e["time"] for e in events if e["action"] == "phase-end" and e["details"]["phase"] == "stream")
    return dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)


def overlapping(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The largest number of intervals open at one moment."""
    edges = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def openssl_verifies(body: bytes, signature_file: Path, public_pem: Path, tmp: Path) -> bool:
    """Ed25519 signature check by openssl (an oracle independent of our signing code)."""
    (tmp / "body").write_bytes(body)
    (tmp / "sig").write_bytes(base64.b64decode(json.loads(signature_file.read_bytes())["signature"]))
    done = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(public_pem),
            "-rawin",
            "-in",
            str(tmp / "body"),
            "-sigfile",
            str(tmp / "sig"),
        ],
        capture_output=True,
    )
    return done.returncode == 0


def test_batch_record_lists_every_member_with_its_manifest_hash_signed_by_the_examiner(
    tmp_path: Path,
) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01", "app01"], tmp_path / "staging")
    report = survey_local(tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "app01")  # vanishes after the survey
    key = SigningKey.generate()

    batch = acquire_many(report.select(), tmp_path / "out", case=CASE, signer=key, progress=False)

    out = tmp_path / "out"
    body = (out / "batch.json").read_bytes()
    record = json.loads(body)
    assert rfc8785.dumps(record) == body
    assert openssl_verifies(body, out / "batch.json.sig", out / "batch.json.pub", tmp_path)
    assert record["signer_key_id"] == key.key_id
    members = {m["name"]: m for m in record["members"]}
    assert set(members) == {"web01", "db01", "app01"}
    for name in ("web01", "db01"):
        assert members[name]["outcome"] == "sealed"
        manifest = out / members[name]["directory"] / "manifest.json"
        assert members[name]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert members["app01"]["outcome"] == "failed" and "VMNotFoundError" in members["app01"]["reason"]
    actions = [e["action"] for e in ledger_events_of(out / "batch.log.jsonl")]
    assert actions[0] == "batch-start" and actions[-1] == "batch-end"
    assert actions.count("submitted") == actions.count("started") == actions.count("finished") == 3
    assert record["ledger"]["events"] == len(actions)
    assert batch.record_sha256 == hashlib.sha256(body).hexdigest() and not batch.ok

    check = verify(out, key.public_key())
    assert isinstance(check, BatchVerificationReport)
    assert check.record_status == "OK" and check.signature_status == "VALID" and check.ledger_status == "OK"
    assert {m.name: m.status for m in check.members} == {"web01": "OK", "db01": "OK", "app01": "NOT SEALED"}
    assert not check.ok  # a batch with a member not sealed is not a complete batch


def ledger_events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_tampered_member_record_or_batch_ledger_fails_batch_verification(tmp_path: Path) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    out = tmp_path / "out"
    acquire_many(survey_local(tmp_path / "ds").select(), out, case=CASE, progress=False)
    assert verify(out).ok

    vmx = next((out / "db01" / "files").rglob("*.vmx"))
    vmx.chmod(0o644)
    vmx.write_bytes(vmx.read_bytes() + b"#")
    check = verify(out)
    assert not check.ok and {m.name: m.status for m in check.members}["db01"] == "FAILED"

    ledger = out / "batch.log.jsonl"
    ledger.chmod(0o644)
    ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:-1]))
    assert verify(out).ledger_status == "BROKEN"

    record = out / "batch.json"
    record.chmod(0o644)
    record.write_bytes(record.read_bytes().replace(b'"sealed"', b'"failed"', 1))
    check = verify(out)
    assert check.signature_status == "INVALID" and not check.ok


def test_per_host_limit_holds_in_every_members_ledger_and_without_it_they_overlap(tmp_path: Path) -> None:
    names = [f"vm{i}" for i in range(6)]
    folders = make_vms(tmp_path / "ds", names, tmp_path / "staging", memory_bytes=96 << 20)
    plans = [
        AcquisitionPlan(n, str(f), host="esx-a" if i < 4 else "esx-b")
        for i, (n, f) in enumerate(zip(names, folders, strict=True))
    ]

    acquire_many(plans, tmp_path / "limited", case=CASE, limits=Limits(total=4, per_host=1), progress=False)
    acquire_many(plans, tmp_path / "free", case=CASE, limits=Limits(total=4), progress=False)

    limited = {n: busy_interval(tmp_path / "limited" / n) for n in names}
    free = {n: busy_interval(tmp_path / "free" / n) for n in names}
    assert overlapping([limited[n] for n in names[:4]]) == 1
    assert overlapping([limited[n] for n in names[4:]]) == 1
    assert overlapping([free[n] for n in names[:4]]) > 1  # the measure would see a broken limit
    assert overlapping(list(limited.values())) == 2  # one per host, both hosts busy at once
    assert verify(tmp_path / "limited").ok


def test_limit_keys_name_overall_host_and_each_datastore() -> None:
    plan = AcquisitionPlan(
        "web01",
        "vm-42",
        kind="vmware",
        settings={"host": "vc01", "user": "ir"},
        host="esx01",
        datastores=("ds2", "ds1", "ds1"),
    )
    assert limit_keys(plan) == ("total", "host:esx01", "datastore:ds1", "datastore:ds2")
    assert limit_keys(AcquisitionPlan("a", "/x")) == ("total", "host:local")
    with pytest.raises(UsageError):
        Limits(per_host=0)


def test_plan_refuses_a_secret_in_its_settings_and_names_it_by_reference() -> None:
    with pytest.raises(UsageError, match="look like secrets"):
        AcquisitionPlan("web01", "vm-42", kind="vmware", settings={"host": "vc01", "password": "hunter2"})
    plan = AcquisitionPlan(
        "web01",
        "vm-42",
        kind="vmware",
        settings={"host": "vc01"},
        secrets={"password": {"env": "VMF_PW_VC01"}},
    )
    assert plan.secrets["password"] == SecretRef(env="VMF_PW_VC01")
    assert plan.to_plain()["secrets"] == {"password": {"env": "VMF_PW_VC01"}}
    with pytest.raises(UsageError, match="not set"):
        SecretRef(env="VMF_SURELY_UNSET_VARIABLE").resolve()


def test_thread_pool_only_for_in_process_keys(tmp_path: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool, pytest.raises(UsageError, match="cannot be sent"):
        acquire_many(["/nowhere"], tmp_path / "out", case=CASE, executor=pool, signer=SigningKey.generate())


def test_resume_reruns_only_the_member_not_sealed_and_keeps_the_earlier_record(tmp_path: Path) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01", "app01"], tmp_path / "staging")
    plans = [AcquisitionPlan(vm.name, vm.target) for vm in survey_local(tmp_path / "ds").select()]
    shutil.move(tmp_path / "ds" / "db01", tmp_path / "away")  # unreachable during the first run
    out = tmp_path / "out"
    key_path = tmp_path / "examiner.pem"
    SigningKey.generate().save(key_path, passphrase="correct horse")
    os.environ["VMF_TEST_KEY_PASS"] = "correct horse"
    signer = KeyRef(key_path, SecretRef(env="VMF_TEST_KEY_PASS"))
    try:
        first = acquire_many(plans, out, case=CASE, signer=signer, progress=False)
        assert [i.vm for i in first.failed] == ["db01"]
        sealed_before = {n: (out / n / "manifest.json").stat().st_mtime_ns for n in ("web01", "app01")}
        first_record = (out / "batch.json").read_bytes()
        shutil.move(tmp_path / "away", tmp_path / "ds" / "db01")

        again = acquire_many(plans, out, case=CASE, signer=signer, progress=False, resume=True)
    finally:
        del os.environ["VMF_TEST_KEY_PASS"]

    assert again.ok
    assert {n: (out / n / "manifest.json").stat().st_mtime_ns for n in sealed_before} == sealed_before
    record = json.loads((out / "batch.json").read_bytes())
    assert record["run"] == 2 and record["supersedes"]["sha256"] == hashlib.sha256(first_record).hexdigest()
    assert (out / record["supersedes"]["record"]).read_bytes() == first_record
    second_run = ledger_events_of(out / "batch.log.jsonl")[json.loads(first_record)["ledger"]["events"] :]
    assert [e["details"]["member"] for e in second_run if e["action"] == "submitted"] == ["db01"]
    assert any(e["action"] == "resume" for e in ledger_events(out / "db01"))  # the member itself resumed
    check = verify(out, SigningKey.load(key_path, "correct horse").public_key())
    assert check.ok, str(check)


def test_acquire_batch_command_on_a_local_survey_then_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    plan = tmp_path / "plan.json"
    plan.write_bytes(survey_local(tmp_path / "ds").to_json())
    assert sorted(p.name for p in plans_from_file(plan)) == ["db01", "web01"]

    code = main(
        [
            "acquire-batch",
            str(plan),
            "--out",
            str(tmp_path / "out"),
            "--local",
            "2",
            "--per-host",
            "1",
            "--case",
            "2026-118",
            "--examiner",
            "A. Analyst",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert "2/2 sealed" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "out")]) == 0
    assert "VERIFIED: batch" in capsys.readouterr().out
    assert (
        main(["acquire-batch", str(plan), "--out", str(tmp_path / "x"), "--case", "c"]) == 2
    )  # neither mode


def test_acquire_batch_allow_root_reaches_a_file_on_another_datastore_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder,) = make_vms(tmp_path / "ds", ["web01"], tmp_path / "staging")
    other = tmp_path / "ds2"
    other.mkdir()
    (other / "firmware.nvram").write_bytes(b"NVRAM on the second datastore")
    vmx = next(folder.glob("*.vmx"))
    lines = [line for line in vmx.read_text().splitlines() if not line.lower().startswith("nvram")]
    vmx.write_text("\n".join([*lines, f'nvram = "{other / "firmware.nvram"}"']) + "\n")
    plan = tmp_path / "plan.json"
    plan.write_bytes(survey_local(tmp_path / "ds").to_json())
    argv = ["acquire-batch", str(plan), "--local", "1", "--case", "c1", "--no-progress"]

    assert main([*argv, "--out", str(tmp_path / "without")]) == 0, capsys.readouterr()
    manifest = json.loads((tmp_path / "without" / "web01" / "manifest.json").read_bytes())
    assert not [f for f in manifest["files"] if f["local_path"].endswith("firmware.nvram")]
    assert [o for o in manifest["omissions"] if "firmware.nvram" in json.dumps(o)]

    assert main([*argv, "--out", str(tmp_path / "with"), "--allow-root", str(other)]) == 0, (
        capsys.readouterr()
    )
    member = tmp_path / "with" / "web01"
    manifest = json.loads((member / "manifest.json").read_bytes())
    (nvram,) = [f for f in manifest["files"] if f["local_path"].endswith("firmware.nvram")]
    assert (member / nvram["local_path"]).read_bytes() == b"NVRAM on the second datastore"
    assert str(other) in json.dumps(manifest["options"])
    assert main(["verify", str(tmp_path / "with")]) == 0


DOCS = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def fleet_recipes() -> dict[str, str]:
    from tests.test_docs import RECIPE

    return {name: body for name, _, body in RECIPE.findall(DOCS.read_text())}


def test_fleet_page_python_recipe_runs_on_a_local_datastore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    exec(fleet_recipes()["local-python"], {"DATASTORE": tmp_path / "ds", "OUT": tmp_path / "out"})
    assert "2/2 acquired" in capsys.readouterr().out


def test_fleet_page_plan_json_reads_as_plans_with_secret_references(tmp_path: Path) -> None:
    import attrs

    make_vms(tmp_path / "ds", ["web01"], tmp_path / "staging")
    report = survey_local(tmp_path / "ds")
    (tmp_path / "esx01-survey.json").write_bytes(
        attrs.evolve(report, source=attrs.evolve(report.source, kind="vmware")).to_json()
    )
    (tmp_path / "plan.json").write_text(fleet_recipes()["plan-json"])
    plans = plans_from_file(tmp_path / "plan.json")
    assert [(p.name, p.kind, p.target, p.limit_host) for p in plans] == [
        ("web01", "vmware", "vm-42", "esx01")
    ]
    assert (
        plans[0].secrets == {"password": SecretRef(env="VMF_PW_ESX01")}
        and "password" not in plans[0].settings
    )


def test_fleet_page_command_line_recipe_runs(tmp_path: Path) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    done = subprocess.run(
        ["sh", "-e", "-c", fleet_recipes()["cli"]],
        cwd=tmp_path,
        env={
            **os.environ,
            "DATASTORE": str(tmp_path / "ds"),
            "OUT": str(tmp_path / "out"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "VMFORENSICS_EXAMINER": "A. Analyst",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED: batch" in done.stdout


def test_examiner_process_killed_before_the_record_resumes_from_the_batch_ledger(tmp_path: Path) -> None:
    import signal
    import time

    folders = make_vms(tmp_path / "ds", ["a01", "b01", "c01"], tmp_path / "staging")
    with open(folders[1] / "b01.vmem", "wb") as f:
        f.truncate(1 << 30)  # sparse: the examiner's process is killed while it streams
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"members": [{"name": f.name, "target": str(f)} for f in folders]}))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "vmforensics",
        "acquire-batch",
        str(plan),
        "--out",
        str(out),
        "--local",
        "1",
        "--case",
        "2026-118",
        "--examiner",
        "A. Analyst",
        "--no-progress",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "b01" / "files").is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    assert (out / "a01" / "manifest.json").is_file() and not (out / "b01" / "manifest.json").exists()
    assert not (out / "batch.json").exists()
    sealed_a = (out / "a01" / "manifest.json").read_bytes()

    assert subprocess.run([*command, "--resume"], capture_output=True).returncode == 0
    assert (out / "a01" / "manifest.json").read_bytes() == sealed_a
    record = json.loads((out / "batch.json").read_bytes())
    assert record["run"] == 2 and record["supersedes"] is None
    assert [m["outcome"] for m in record["members"]] == ["sealed"] * 3
    starts = [e for e in ledger_events_of(out / "batch.log.jsonl") if e["action"] == "batch-start"]
    assert starts[1]["details"]["carried_over"] == ["a01"]
    assert any(e["action"] == "resume" for e in ledger_events(out / "b01"))
    check = verify(out)
    assert check.ok, str(check)


def test_hostile_batch_records_are_reported_not_followed(tmp_path: Path) -> None:
    make_vms(tmp_path / "ds", ["web01"], tmp_path / "staging")
    out = tmp_path / "out"
    acquire_many(survey_local(tmp_path / "ds").select(), out, case=CASE, progress=False)
    record = json.loads((out / "batch.json").read_bytes())
    (tmp_path / "outside").mkdir()
    (out / "link").symlink_to(tmp_path / "outside")
    variants = {
        "escape": {**record, "members": [{**record["members"][0], "directory": "../outside"}]},
        "symlink": {**record, "members": [{**record["members"][0], "directory": "link"}]},
        "not-a-list": {**record, "members": "web01"},
        "history-escape": {**record, "supersedes": {"record": "../../etc/passwd", "sha256": "0" * 64}},
        "nul": {**record, "members": [{**record["members"][0], "directory": "we\0b01"}]},
    }
    (out / "batch.json").chmod(0o644)
    for label, variant in variants.items():
        (out / "batch.json").write_bytes(rfc8785.dumps(variant))
        check = verify(out)
        assert not check.ok, label
        assert all(m.status != "OK" for m in check.members if m.directory != "web01"), label


def test_in_a_jupyter_kernel_the_batch_shows_a_live_member_table(tmp_path: Path) -> None:
    """A real IPython kernel (nbclient): the table is displayed once and updated in place."""
    nbformat = pytest.importorskip("nbformat", reason="nbclient/ipykernel (test extra)")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    code = (
        "from vmforensics import CaseInfo, acquire_many, survey_local\n"
        f"batch = acquire_many(survey_local({str(tmp_path / 'ds')!r}).select(), {str(tmp_path / 'out')!r},\n"
        "                     case=CaseInfo(case_id='2026-118', examiner='A. Analyst'))\n"
        "assert batch.ok"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    root = Path(__file__).resolve().parents[2]
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    ).execute()
    tables = [
        o["data"]["text/html"]
        for o in notebook.cells[0].outputs
        if "text/html" in o.get("data", {}) and "bytes done" in o["data"]["text/html"]
    ]
    assert len(tables) == 1  # one live display, updated in place (update_display_data)
    assert tables[0].count(">sealed<") == 2 and "web01" in tables[0] and "db01" in tables[0]


def test_members_written_on_a_workers_own_disk_verify_once_copied_beside_the_record(tmp_path: Path) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    out, local_disk = tmp_path / "out", tmp_path / "worker-disk"
    batch = acquire_many(
        survey_local(tmp_path / "ds").select(), out, case=CASE, worker_root=local_disk, progress=False
    )
    assert batch.ok and (local_disk / "web01" / "manifest.json").is_file()
    record = json.loads((out / "batch.json").read_bytes())
    assert record["worker_root"] == str(local_disk) and all(m["worker"]["host"] for m in record["members"])
    check = verify(out)
    assert not check.ok and {m.status for m in check.members} == {"MISSING"}

    for member in ("web01", "db01"):
        shutil.copytree(local_disk / member, out / member)
    check = verify(out)
    assert check.ok, str(check)


@pytest.mark.usefixtures("token")
def test_acquire_batch_command_signs_on_a_pkcs11_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.custody.test_pkcs11 import MODULE, PIN, TOKEN
    from vmforensics.custody.pkcs11 import PKCS11Key

    if not Path(MODULE).exists():
        pytest.skip("needs softhsm2")
    monkeypatch.setenv("VMFORENSICS_PKCS11_PIN", PIN)
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    plan = tmp_path / "plan.json"
    plan.write_bytes(survey_local(tmp_path / "ds").to_json())
    code = main(["acquire-batch", str(plan), "--out", str(tmp_path / "out"), "--local", "2", "--case", "c1",
                 "--examiner", "A. Analyst", "--no-progress", "--pkcs11-module", MODULE, "--pkcs11-token", TOKEN,
                 "--pkcs11-key", "p256"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    key = TokenKeyRef(MODULE, TOKEN, "p256").load()  # the session this process opened for the batch
    assert isinstance(key, PKCS11Key)
    assert json.loads((tmp_path / "out" / "batch.json").read_bytes())["signer_key_id"] == key.key_id
    assert verify(tmp_path / "out", key.public_key()).ok


def test_per_host_limit_holds_across_two_batches_running_at_once_in_one_process(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)]
    folders = make_vms(tmp_path / "ds", names, tmp_path / "staging", memory_bytes=32 << 20)
    plans = [AcquisitionPlan(n, str(f), host="esx-a") for n, f in zip(names, folders, strict=True)]
    with ThreadPoolExecutor(2) as examiners:  # two examiners' batches, the same host
        runs = [
            examiners.submit(
                acquire_many,
                half,
                tmp_path / out,
                case=CASE,
                limits=Limits(total=3, per_host=1),
                progress=False,
            )
            for half, out in ((plans[:3], "a"), (plans[3:], "b"))
        ]
        assert all(run.result().ok for run in runs)

    intervals = [busy_interval(tmp_path / n[0] / n) for n in names]
    assert overlapping(intervals) == 1  # one acquisition at a time on esx-a, across both batches
    spans = [[e["time"] for e in ledger_events_of(tmp_path / b / "batch.log.jsonl")] for b in "ab"]
    assert spans[0][0] < spans[1][-1] and spans[1][0] < spans[0][-1]  # the batches ran at the same time


def certified_key(tmp_path: Path, ca_name: str = "Lab CA") -> tuple[Path, Path, Path]:
    """An Ed25519 examiner key (PEM), its certificate from a test CA, and the CA's certificate."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from tests.custody.pki import TestCA, name, write_certificates

    ca = TestCA(tmp_path / ca_name.replace(" ", "-"), ca_name)
    key = SigningKey.generate()
    key.save(tmp_path / "examiner.pem")
    leaf = ca.issue(name("A. Analyst"), load_pem_public_key(key.public_key().to_pem()))
    return tmp_path / "examiner.pem", write_certificates(tmp_path / "examiner.crt", leaf), ca.pem


def test_batch_signed_with_a_certificate_verifies_through_the_lab_ca_members_and_record(
    tmp_path: Path,
) -> None:
    from tests.custody.pki import TestCA

    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    key, cert, ca = certified_key(tmp_path)
    batch = acquire_many(
        survey_local(tmp_path / "ds").select(),
        tmp_path / "out",
        case=CASE,
        signer=KeyRef(key, certificates=cert),
        progress=False,
    )
    assert batch.ok
    out = tmp_path / "out"
    assert (out / "batch.json.chain.pem").read_bytes() == cert.read_bytes()
    for member in ("web01", "db01"):
        assert (out / member / "manifest.json.chain.pem").read_bytes() == cert.read_bytes()

    check = verify(out, ca=ca)
    assert check.ok and check.certificate_status == "VERIFIED", str(check)
    assert "CN=A. Analyst" in check.certificate
    rogue = TestCA(tmp_path / "rogue", "Rogue CA").pem
    refused = verify(out, ca=rogue)
    assert not refused.ok and refused.certificate_status == "FAILED"
    assert {m.status for m in refused.members} == {"FAILED"}  # every member's chain is refused too


def test_acquire_batch_command_cert_option_then_verify_with_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_vms(tmp_path / "ds", ["web01", "db01"], tmp_path / "staging")
    key, cert, ca = certified_key(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_bytes(survey_local(tmp_path / "ds").to_json())
    code = main(["acquire-batch", str(plan), "--out", str(tmp_path / "out"), "--local", "2", "--case", "c1",
                 "--examiner", "A. Analyst", "--no-progress", "--key", str(key), "--cert", str(cert)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "out"), "--ca", str(ca)]) == 0
    shown = capsys.readouterr().out
    assert 'certificate: VERIFIED: "O=Test Lab,CN=A. Analyst" via CA "O=Test Lab,CN=Lab CA"' in shown
    bare = tmp_path / "bare"
    assert main(["acquire-batch", str(plan), "--out", str(bare), "--local", "2", "--case", "c1",
                 "--examiner", "A. Analyst", "--no-progress", "--key", str(key)]) == 0  # fmt: skip
    assert main(["verify", str(bare), "--ca", str(ca)]) == 1  # a bare key proves no certificate


def test_a_survey_names_its_acquirer_and_the_plan_says_where_workers_find_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The survey JSON of a remote hypervisor as the plan: settings as recorded, the options file
    filling what the survey did not record, and the password only as a reference."""
    from vmforensics.acquire.batch_plan import plans_from_file
    from vmforensics.survey.models import AcquirerSettings, SurveyReport, VMRecord

    report = SurveyReport(
        source={"kind": "libvirt", "host": "kvm01"},
        vms=[VMRecord("web01", reference="7d6c", host="kvm01.lab")],
        acquirer=AcquirerSettings.of("libvirt", ["password"], host="kvm01", user="ir", port=2222),
    )
    survey = tmp_path / "kvm01.json"
    survey.write_bytes(report.to_json())
    assert b"password" in survey.read_bytes()  # named as a secret the acquirer needs ...
    with pytest.raises(UsageError, match="--password-env"):  # ... and the plan must say where it is
        plans_from_file(survey)

    plans = plans_from_file(
        survey,
        password=lambda settings: SecretRef(env="VMF_PW_KVM01"),
        host_defaults={"kvm01": {"known_hosts": "/etc/vmf/known_hosts", "port": 22, "tls_ca": "/x.pem"}},
    )
    assert [(p.name, p.kind, p.target, p.limit_host) for p in plans] == [
        ("web01", "libvirt", "7d6c", "kvm01.lab")
    ]
    assert plans[0].settings == {
        "host": "kvm01",
        "user": "ir",
        "port": 2222,
        "known_hosts": "/etc/vmf/known_hosts",
    }
    assert plans[0].secrets == {"password": SecretRef(env="VMF_PW_KVM01")}

    (tmp_path / "plan.json").write_text(json.dumps({"surveys": [{
        "path": "kvm01.json", "secrets": {"password": {"keyring": ["vmforensics:kvm01", "ir"]}},
        "select": {"names": ["web01"]}}]}))  # fmt: skip
    per_host = plans_from_file(tmp_path / "plan.json")
    assert per_host[0].secrets == {"password": SecretRef(keyring=("vmforensics:kvm01", "ir"))}
    with pytest.raises(UsageError, match="never hold secrets"):
        AcquirerSettings("vmware", {"host": "vc01", "password": "hunter2"})
