"""Connection settings from a TOML file, applied as defaults to the command being run.

The file is ``$VMFORENSICS_CONFIG``, else ``$XDG_CONFIG_HOME/vmforensics/config.toml`` (default
``~/.config/vmforensics/config.toml``). It holds one table per hypervisor host, named as given
to ``--host``; a command given ``--host NAME`` takes that table's settings as its defaults, and
options on the command line win. Secrets are refused: passwords come only from
``$VMFORENSICS_PASSWORD``, the keyring or a prompt. ::

    [hosts."vcenter.lab.example"]
    user = "ir@vsphere.local"
    tls_thumbprint = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

    [hosts."kvm01.lab.example"]
    user = "ir"
    port = 2222
    known_hosts = "~/.ssh/lab_known_hosts"
    identity = "~/.ssh/ir_ed25519"
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmforensics.errors import UsageError

CONFIG_ENV = "VMFORENSICS_CONFIG"

#: Setting name -> the option destinations it fills (the SSH options of ``acquire vmware`` carry a prefix).
SETTINGS: dict[str, tuple[str, ...]] = {
    "user": ("user",),
    "port": ("port",),
    "known_hosts": ("known_hosts", "ssh_known_hosts"),
    "host_key_fingerprint": ("host_key_fingerprint", "ssh_fingerprint"),
    "identity": ("identity", "ssh_identity"),
    "tls_ca": ("tls_ca",),
    "tls_thumbprint": ("tls_thumbprint",),
    "via": ("via",),
    "ssh_user": ("ssh_user",),
    "ssh_port": ("ssh_port",),
    "datastore_endpoint": ("datastore_endpoint",),
    "auth": ("auth",),
    "winrm_port": ("winrm_port",),
    "smb_share": ("smb_share",),
    "smb_share_root": ("smb_share_root",),
    "smb_port": ("smb_port",),
    "uri": ("uri",),
    "virsh": ("virsh",),
    "host_workdir": ("host_workdir",),
}
#: Settings naming a file: ``~`` is expanded.
PATHS = frozenset({"known_hosts", "identity", "tls_ca"})
#: Never read from the file: secrets, and opting out of verification (a per-run decision).
REFUSED = frozenset({"password", "passphrase", "secret", "cookie", "token", "insecure"})


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the configuration is read from (the file need not exist)."""
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser()
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "vmforensics" / "config.toml"


def load_hosts(path: Path) -> dict[str, dict[str, Any]]:
    """The ``[hosts."NAME"]`` tables of ``path``, checked; {} when the file does not exist."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the configuration {path}: {exc}") from exc
    unknown = set(document) - {"hosts"}
    if unknown:
        raise UsageError(
            f'{path}: unknown table(s) {", ".join(sorted(unknown))}; settings go in [hosts."NAME"]'
        )
    hosts = document.get("hosts", {})
    if not isinstance(hosts, dict) or not all(isinstance(t, dict) for t in hosts.values()):
        raise UsageError(f'{path}: [hosts] must hold one table per host, e.g. [hosts."esxi01"]')
    for host, table in hosts.items():
        for key in table:
            if key.lower() in REFUSED or any(word in key.lower() for word in ("password", "secret")):
                raise UsageError(
                    f'{path}: [hosts."{host}"] sets {key!r}: passwords and TLS opt-outs are never read '
                    "from the configuration (use VMFORENSICS_PASSWORD, the keyring or the prompt)"
                )
            if key not in SETTINGS:
                raise UsageError(
                    f'{path}: [hosts."{host}"] has unknown setting {key!r}; known: {", ".join(sorted(SETTINGS))}'
                )
    return {
        host: {k: str(Path(v).expanduser()) if k in PATHS else v for k, v in table.items()}
        for host, table in hosts.items()
    }


def apply_config(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] = os.environ
) -> None:
    """Before ``parser.parse_args(argv)``: make the host's settings the defaults of the command chosen.

    Options filled this way are no longer required. A setting is skipped when the command line
    gives another option of its mutually exclusive group (``--tls-ca`` over a configured thumbprint).
    """
    command = _chosen_command(parser, argv)
    host = _option_value(command, argv, "host")
    if host is None:
        return
    settings = load_hosts(config_path(environ)).get(host)
    if not settings:
        return
    actions = {action.dest: action for action in command._actions}
    given = {action.dest for action in command._actions if _given(action, argv)}
    for group in command._mutually_exclusive_groups:
        members = {action.dest for action in group._group_actions}
        if members & given:
            given |= members
    defaults = {}
    for key, value in settings.items():
        for dest in SETTINGS[key]:
            if dest in actions and dest not in given:
                defaults[dest] = value
                actions[dest].required = False
    command.set_defaults(**defaults)


def _chosen_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub-)sub-command parser that ``argv`` selects, or ``parser`` itself."""
    current = parser
    for token in argv:
        choices = next(
            (a.choices for a in current._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if choices is None:
            break
        if token in choices:
            current = choices[token]
    return current


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(
        t == o or t.startswith(o + "=") for t in argv for o in action.option_strings if o.startswith("--")
    )


def _option_value(parser: argparse.ArgumentParser, argv: Sequence[str], dest: str) -> str | None:
    """The value ``argv`` gives for the option ``dest`` of ``parser`` (last one wins), else None."""
    action = next((a for a in parser._actions if a.dest == dest and a.option_strings), None)
    if action is None:
        return None
    value = None
    for index, token in enumerate(argv):
        for option in action.option_strings:
            if token == option and index + 1 < len(argv):
                value = argv[index + 1]
            elif token.startswith(option + "="):
                value = token.split("=", 1)[1]
    return value
