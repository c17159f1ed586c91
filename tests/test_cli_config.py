"""Connection settings from the config file, keyring passwords, and --json for keygen and demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.memory_keyring import memory_keyring
from vmforensics.cli import build_parser
from vmforensics.cli.common import password_from_env_or_prompt
from vmforensics.cli.config import apply_config, config_path
from vmforensics.custody.signing import SigningKey
from vmforensics.errors import UsageError

VCENTER = "vcenter01.lab.example"
THUMBPRINT = "ab" * 32


def parse(argv: list[str], environ: dict[str, str]):
    """What ``vmforensics ARGV`` parses to with the configuration ``environ`` points at."""
    parser = build_parser()
    apply_config(parser, argv, environ)
    return parser.parse_args(argv)


@pytest.fixture
def config(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[hosts."{VCENTER}"]\n'
        'user = "ir@vsphere.local"\n'
        "port = 8443\n"
        f'tls_thumbprint = "{THUMBPRINT}"\n'
        'known_hosts = "~/lab_known_hosts"\n'
        '[hosts."kvm01"]\n'
        'user = "ir"\n'
        "port = 2222\n"
        'identity = "/keys/ir_ed25519"\n'
    )
    return {"VMFORENSICS_CONFIG": str(path)}


def test_config_file_location_follows_the_environment(tmp_path: Path) -> None:
    assert config_path({"VMFORENSICS_CONFIG": "/etc/vmf.toml"}) == Path("/etc/vmf.toml")
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "vmforensics" / "config.toml"
    assert config_path({}) == Path.home() / ".config" / "vmforensics" / "config.toml"


def test_host_settings_become_defaults_and_required_options_optional(config: dict[str, str]) -> None:
    argv = ["acquire", "vmware", "--host", VCENTER, "--vm", "web01", "--out", "/cases/x", "--via", "ssh"]

    args = parse(argv, config)

    assert (args.user, args.port, args.tls_thumbprint) == ("ir@vsphere.local", 8443, THUMBPRINT)
    assert args.ssh_known_hosts == str(Path.home() / "lab_known_hosts")
    survey = parse(["survey", "vmware", f"--host={VCENTER}"], config)
    assert (survey.user, survey.port) == ("ir@vsphere.local", 8443)
    libvirt = parse(["acquire", "libvirt", "--host", "kvm01", "--domain", "db", "--out", "/x"], config)
    assert (libvirt.user, libvirt.port, libvirt.identity) == ("ir", 2222, "/keys/ir_ed25519")


def test_command_line_wins_and_a_chosen_tls_option_excludes_the_configured_one(
    config: dict[str, str],
) -> None:
    argv = ["survey", "vmware", "--host", VCENTER, "--user", "other", "--port", "443", "--tls-ca", "/ca.pem"]

    args = parse(argv, config)

    assert (args.user, args.port, args.tls_ca, args.tls_thumbprint) == ("other", 443, "/ca.pem", None)


def test_other_hosts_and_no_file_change_nothing(config: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:  # --user stays required for a host without settings
        parse(["survey", "vmware", "--host", "esxi99"], config)
    assert exit_info.value.code == 2
    args = parse(["survey", "vmware", "--host", VCENTER, "--user", "u"], {"XDG_CONFIG_HOME": str(tmp_path)})
    assert (args.port, args.tls_thumbprint) == (443, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[hosts."h"]\npassword = "hunter2"\n', "passwords and TLS opt-outs are never read"),
        ('[hosts."h"]\ninsecure = true\n', "passwords and TLS opt-outs are never read"),
        ('[hosts."h"]\nusr = "x"\n', "unknown setting 'usr'"),
        ('[defaults]\nuser = "x"\n', "unknown table"),
        ("[hosts\n", "cannot read the configuration"),
    ],
)
def test_secrets_and_mistakes_in_the_file_are_usage_errors(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "c.toml").write_text(content)
    with pytest.raises(UsageError, match=message):
        parse(["survey", "vmware", "--host", "h"], {"VMFORENSICS_CONFIG": str(tmp_path / "c.toml")})


def test_cli_survey_of_vcsim_takes_user_port_and_thumbprint_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("go") is None or not Path("/usr/share/gocode/src/github.com/vmware/govmomi").is_dir():
        pytest.skip("vcsim needs golang-go and golang-github-vmware-govmomi-dev")
    from tests.acquire.vcsim.server import VCSim

    with VCSim(tmp_path / "vcsim") as server:
        (tmp_path / "config.toml").write_text(
            f'[hosts."{server.host}"]\nuser = "{server.user}"\nport = {server.port}\n'
            f'tls_thumbprint = "{server.thumbprint_sha256}"\n'
        )
        monkeypatch.setenv("VMFORENSICS_PASSWORD", server.password)
        args = parse(
            ["survey", "vmware", "--host", server.host, "--json", "--no-events"],
            {"VMFORENSICS_CONFIG": str(tmp_path / "config.toml")},
        )
        assert args.handler(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert "DC0_H0_VM0" in {vm["name"] for vm in report["vms"]}


def test_keyring_password_is_used_after_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with memory_keyring() as keyring:
        keyring.set_password("vmforensics:vcenter01", "ir@vsphere.local", "from the keyring")
        monkeypatch.delenv("VMFORENSICS_PASSWORD", raising=False)
        monkeypatch.setattr("sys.stdin.isatty", lambda: False)
        account = ("vcenter01", "ir@vsphere.local")
        assert password_from_env_or_prompt("p: ", account=account) == "from the keyring"
        with pytest.raises(UsageError, match="no password"):
            password_from_env_or_prompt("p: ", account=("vcenter01", "someone-else"))
        monkeypatch.setenv("VMFORENSICS_PASSWORD", "from the environment")
        assert password_from_env_or_prompt("p: ", account=account) == "from the environment"


def test_keygen_json_names_the_files_and_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmforensics.cli import main

    assert (
        main(["keygen", str(tmp_path / "k.pem"), "--no-passphrase", "--algorithm", "ecdsa-p256", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)

    assert set(out) == {"path", "public_key", "key_id", "algorithm"}
    assert out["path"] == str(tmp_path / "k.pem") and out["public_key"] == str(tmp_path / "k.pem.pub")
    assert SigningKey.load(out["path"]).public_key().key_id == out["key_id"]
    assert out["algorithm"] == SigningKey.load(out["path"]).algorithm


def test_demo_json_reports_the_evidence_and_refuses_a_used_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmforensics.cli import main

    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)

    assert out["verified"] is True and Path(out["evidence"]).is_dir()
    assert "/LOGS/DROPPER.PS1 (71 bytes)" in out["guest_files"]
    for record in out["files"]:
        assert (Path(out["evidence"]) / record["path"]).stat().st_size == record["size"]
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--no-progress"]) == 2
    assert "is not empty" in capsys.readouterr().err
