"""Reaching a libvirt host and reading what it runs: shared by the libvirt acquirer and survey.

``host=None`` is this machine (local files and commands); otherwise one verified SSH connection
gives SFTP for files and a shell for commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmforensics.hypervisors.libvirt.commands import CommandRunner, Host, LocalRunner, ssh_runner
from vmforensics.transport.base import Transport
from vmforensics.transport.local import LocalTransport


def connect_host(
    host: str | None, *, user: str, port: int, ssh_options: dict[str, Any]
) -> tuple[Transport, CommandRunner]:
    """Files and a command runner on ``host`` (None: this machine); unset (None) SSH options are left out."""
    if host is None:
        return LocalTransport(), LocalRunner()
    from vmforensics.transport.ssh import SSHTransport

    options = {k: v for k, v in ssh_options.items() if v is not None}
    ssh = SSHTransport(host, user=user, port=port, **options)
    return ssh, ssh_runner(ssh)


def ssh_transport_options(
    *,
    identity: str | Path | None,
    password: str | None,
    known_hosts: str | Path | None,
    host_key_fingerprint: str | None,
    transport_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """The SSHTransport keywords the acquirer and survey take, with ``transport_options`` on top."""
    return {
        "identity": identity,
        "password": password,
        "known_hosts": known_hosts,
        "host_key_fingerprint": host_key_fingerprint,
        **(transport_options or {}),
    }


def virsh_fields(text: str) -> dict[str, str]:
    """``Key: value`` lines (``virsh dominfo``, ``virsh version``) as a dict; other lines are skipped."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            found[key.strip()] = value.strip()
    return found


def libvirt_product(commands: Host) -> dict[str, Any]:
    """What the host runs (``virsh version --daemon``, ``virsh hostname``), as SourceInfo.product."""
    versions = virsh_fields(commands.virsh("version", "--daemon").stdout)
    return {
        "name": "libvirt",
        "version": _last_word(versions.get("Using library")),
        "daemon": _last_word(versions.get("Running against daemon")),
        "hypervisor": versions.get("Running hypervisor"),
        "api": versions.get("Using API"),
        "uri": commands.uri,
        "hostname": commands.virsh("hostname", check=False).stdout.strip() or None,
    }


def _last_word(text: str | None) -> str | None:
    """``libvirt 9.0.0`` → ``9.0.0``."""
    return text.split()[-1] if text else None
