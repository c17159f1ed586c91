"""The examples run as users run them: scripts as processes, notebooks in a real kernel (nbclient),
offline against demo VMs; what they print is checked against the files planted in the guest."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from vmforensics.demo.vm import GUEST_FILES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _run(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLES / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_acquire_verify_list_prints_the_planted_guest_files(tmp_path):
    done = _run("acquire_verify_list.py", "--workdir", tmp_path / "w", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "VERIFIED" in done.stdout
    planted = {
        name.split("/")[1]: len(data) for name, data in GUEST_FILES.items() if name.startswith("LOGS/")
    }
    listed = {
        line.split()[2]: int(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith("  file")
    }
    assert listed == planted


def test_lab_intake_demo_acquires_and_verifies_every_row(tmp_path):
    done = _run("lab_intake.py", "--demo", tmp_path / "lab", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with (tmp_path / "lab" / "cases" / "intake-results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert [r["status"] for r in results] == ["verified", "verified"]
    for r in results:
        assert (Path(r["evidence"]) / "manifest.json").is_file() and r["files"] == "6"


def test_lab_intake_records_a_failing_row_and_exits_1(tmp_path):
    lab = tmp_path / "lab"
    sys.path.insert(0, str(EXAMPLES))
    try:
        from lab_intake import make_demo_lab
    finally:
        sys.path.remove(str(EXAMPLES))
    intake_csv = make_demo_lab(lab)
    with intake_csv.open("a", newline="") as f:
        csv.writer(f).writerow([str(lab / "nowhere"), "LAB-2026-042", "E009", "Intake Examiner", ""])
    done = _run("lab_intake.py", intake_csv, "--out", lab / "cases", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line.split()[0] for line in done.stdout.splitlines() if "LAB-2026-042/" in line]
    assert lines == ["verified", "verified", "failed"]
    rerun = _run("lab_intake.py", intake_csv, "--out", lab / "cases", "--resume", cwd=tmp_path)
    assert "sealed by an earlier run" in rerun.stdout


def test_there_are_at_least_two_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbclient/ipykernel (test extra) run the notebooks")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary folders end with the test
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    rich = [o for o in outputs if "text/html" in o.get("data", {})]
    assert rich, "the acquisition objects should render as HTML tables"
    assert any("vmforensics-files" in o["data"]["text/html"] for o in rich)
