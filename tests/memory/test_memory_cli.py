"""``vmforensics memory info|convert``: facts, outputs and exit status (0 ok, 1 failed, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.interop.vmware_state import BANNER, BANNER_PHYSICAL, write_memory_state
from vmforensics.cli import main
from vmforensics.memory import open_memory


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    state = tmp_path / "web01-Snapshot1.vmsn"
    write_memory_state(state, tmp_path / "web01-Snapshot1.vmem")
    return state


def test_info_json_lists_the_ranges(pair: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "info", str(pair), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["format"] == "vmware"
    assert facts["ranges"] == [[0, 512 * 4096, "region0"], [0x100000 * 4096, 512 * 4096, "region1"]]
    assert facts["sources"] == [str(pair), str(pair.with_suffix(".vmem"))]


def test_info_text_names_format_and_ranges(pair: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "info", str(pair.with_suffix(".vmem"))]) == 0
    out = capsys.readouterr().out
    assert "format:      vmware" in out and "0x000100000000-0x0001001fffff region1" in out


def test_convert_writes_an_elf_with_the_banner_at_its_address(pair: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "web01.elf"
    assert (
        main(
            ["memory", "convert", str(pair), "--format", "elf", "--out", str(out), "--no-progress", "--json"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "elf" and result["size"] == out.stat().st_size
    with open_memory(out) as image:
        assert image.read(BANNER_PHYSICAL, len(BANNER)) == BANNER


def test_convert_refuses_an_existing_output(pair: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken.raw"
    out.write_bytes(b"keep me")
    assert main(["memory", "convert", str(pair), "--out", str(out), "--no-progress"]) == 2
    assert out.read_bytes() == b"keep me"
    assert "exists" in capsys.readouterr().err


def test_missing_source_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["memory", "info", str(tmp_path / "nothing.vmss")]) == 2


def test_malformed_state_fails_with_the_offset(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.vmss"
    bad.write_bytes(b"\xd2\xbe\xd2\xbe" + (10**6).to_bytes(4, "little") + (5000).to_bytes(4, "little"))
    assert main(["memory", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "offset 8" in err and "group count 5000" in err


def test_unknown_format_argument_is_a_usage_error(pair: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["memory", "convert", str(pair), "--format", "vmss", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2
