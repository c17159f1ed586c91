"""Connection options shared by the acquire and survey commands, and the settings they become.

Each ``add_*`` function declares one group of options; its ``*_settings`` partner turns the
parsed options into the keyword arguments of the acquirer or survey function. Passwords never
come from the command line: see :func:`~vmforensics.cli.common.password_from_env_or_prompt`.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from vmforensics.cli.common import PASSWORD_ENV, password_from_env_or_prompt

OptionGroup = argparse.ArgumentParser | argparse._ArgumentGroup


def add_ssh_key_options(group: OptionGroup) -> None:
    """--identity, --known-hosts or --host-key-fingerprint (one of them), --password-auth."""
    group.add_argument("--identity", help="SSH private key file")
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--known-hosts", help="known_hosts file that holds the host's key")
    keys.add_argument("--host-key-fingerprint", help="pin the host key (SHA256:…) instead of known_hosts")
    group.add_argument(
        "--password-auth",
        action="store_true",
        help=f"authenticate with a password from ${PASSWORD_ENV} (or a prompt); never on the command line",
    )


def ssh_key_settings(
    args: argparse.Namespace, *, host: str | None = None, user: str | None = None
) -> dict[str, Any]:
    """identity, known_hosts, host_key_fingerprint and password (asked for only with --password-auth).

    With ``host`` known the keyring is consulted for (host, user, default: this user's name).
    """
    password = None
    if args.password_auth:
        if host is None:
            password = password_from_env_or_prompt("SSH password: ")
        else:
            user = user or getpass.getuser()
            password = password_from_env_or_prompt(f"SSH password for {user}@{host}: ", account=(host, user))
    return {
        "identity": args.identity,
        "known_hosts": args.known_hosts,
        "host_key_fingerprint": args.host_key_fingerprint,
        "password": password,
    }


def add_libvirt_host_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "host" group: --host, --port, --user, the SSH key options, --uri, --virsh.

    Returns the group, for the command's own host options.
    """
    where = parser.add_argument_group("host")
    where.add_argument("--host", help="the KVM host to reach over SSH (omit to work on this machine)")
    where.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    where.add_argument("--user", help="SSH user (default: your user name)")
    add_ssh_key_options(where)
    where.add_argument(
        "--uri", default="qemu:///system", help="libvirt URI on the host (default qemu:///system)"
    )
    where.add_argument("--virsh", default="virsh", help="virsh command on the host")
    return where


def libvirt_host_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for LibvirtAcquirer and survey_libvirt from :func:`add_libvirt_host_options`."""
    return {
        "host": args.host,
        "user": args.user,
        "port": args.port,
        **ssh_key_settings(args, host=args.host, user=args.user),
        "uri": args.uri,
        "virsh": args.virsh,
    }


def add_vsphere_options(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --user and one of --tls-ca, --tls-thumbprint, --insecure."""
    parser.add_argument("--host", required=True, help="vCenter or ESXi host name or address")
    parser.add_argument("--port", type=int, default=443, help="API port (default 443)")
    parser.add_argument("--user", required=True, help="vSphere user, e.g. ir@vsphere.local")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signed the server's certificate")
    tls.add_argument(
        "--tls-thumbprint", metavar="SHA256", help="pin the server certificate's SHA-256 (or SHA-1)"
    )
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS (recorded in the evidence)")


def vsphere_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for VMwareAcquirer and survey_vmware from :func:`add_vsphere_options`."""
    return {
        "host": args.host,
        "port": args.port,
        "user": args.user,
        "password": _host_password(args),
        "tls_ca": args.tls_ca,
        "tls_thumbprint": args.tls_thumbprint,
        "insecure": args.insecure,
    }


def add_winrm_options(parser: argparse.ArgumentParser) -> None:
    """--host, --user and the "winrm" group: --auth, --http, --winrm-port, --tls-ca, --insecure."""
    parser.add_argument("--host", required=True, help="Hyper-V host name or address")
    parser.add_argument("--user", required=True, help="DOMAIN\\user or user")
    winrm = parser.add_argument_group("winrm")
    winrm.add_argument(
        "--auth",
        choices=("ntlm", "kerberos", "credssp", "basic"),
        default="ntlm",
        help="WinRM authentication",
    )
    winrm.add_argument(
        "--http",
        action="store_true",
        help="WinRM over HTTP 5985 with message encryption (NTLM/Kerberos/CredSSP only); default HTTPS 5986",
    )
    winrm.add_argument("--winrm-port", type=int, help="WinRM port (default 5986, or 5985 with --http)")
    winrm.add_argument("--tls-ca", metavar="PEM", help="CA bundle that issued the host's WinRM certificate")
    winrm.add_argument(
        "--insecure", action="store_true", help="do not verify the WinRM certificate (recorded)"
    )


def winrm_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for HyperVAcquirer and survey_hyperv from :func:`add_winrm_options`."""
    return {
        "host": args.host,
        "user": args.user,
        "password": _host_password(args),
        "transport": args.auth,
        "winrm_https": not args.http,
        "winrm_port": args.winrm_port,
        "ca_bundle": args.tls_ca,
        "verify_certificate": not args.insecure,
    }


def _host_password(args: argparse.Namespace) -> str:
    """The password of ``--user`` on ``--host``: environment, keyring, else a prompt."""
    return password_from_env_or_prompt(
        f"password for {args.user}@{args.host}: ", account=(args.host, args.user)
    )
