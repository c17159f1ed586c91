"""SSH host-key verification: a known_hosts file, a pinned ``SHA256:`` fingerprint, or an explicit opt-out.

Every check happens before authentication, so no credential reaches an unverified server.
Unknown and changed keys raise :class:`HostVerificationError` naming the fingerprint seen.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

import attrs
import paramiko

from vmforensics.errors import HostVerificationError, UsageError

log = logging.getLogger(__name__)

KNOWN_HOSTS = "known_hosts"
PINNED = "pinned"
INSECURE = "insecure-opt-out"

_FINGERPRINT = re.compile(r"^SHA256:([A-Za-z0-9+/]{43})=?$")


def key_fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style ``SHA256:…`` fingerprint of a public key (as ``ssh-keygen -l`` prints it)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """``SHA256:`` + 43 base64 characters; anything else (MD5, hex, typos) is a UsageError."""
    match = _FINGERPRINT.match(text.strip())
    if not match:
        raise UsageError(
            f"host_key_fingerprint {text!r} is not an OpenSSH SHA256 fingerprint "
            "(expected 'SHA256:' and 43 base64 characters, as `ssh-keygen -lf KEY` prints)"
        )
    return f"SHA256:{match.group(1)}"


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a server: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


@attrs.frozen
class HostKeyCheck:
    """How the server's host key is verified; ``mode`` is recorded in the manifest."""

    mode: str
    known_hosts: Path | None = None
    pin: str | None = None

    @classmethod
    def from_options(
        cls, known_hosts: str | Path | None, host_key_fingerprint: str | None, insecure: bool
    ) -> HostKeyCheck:
        """Validate the user's choice; at most one of pin, known_hosts file and opt-out."""
        if insecure and (known_hosts or host_key_fingerprint):
            raise UsageError("insecure_accept_any_host_key excludes known_hosts and host_key_fingerprint")
        if host_key_fingerprint and known_hosts:
            raise UsageError("give either --known-hosts or --host-key-fingerprint, not both")
        if insecure:
            return cls(INSECURE)
        if host_key_fingerprint:
            return cls(PINNED, pin=normalize_fingerprint(host_key_fingerprint))
        path = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        return cls(KNOWN_HOSTS, known_hosts=path)

    def configure(self, client: paramiko.SSHClient, name: str, same_as: paramiko.PKey | None = None) -> None:
        """Load the trusted keys into ``client`` and install the refusing policy.

        ``same_as`` (on reconnect) trusts exactly the key the first connection verified, so a key
        that changes between two connections of one acquisition is refused whatever the mode.
        """
        host_keys = client.get_host_keys()
        if same_as is not None:
            host_keys.add(name, same_as.get_name(), same_as)
            client.set_missing_host_key_policy(_Refuse(self, name))
            return
        if self.mode == KNOWN_HOSTS and self.known_hosts is not None:
            if self.known_hosts.is_file():
                try:
                    host_keys.load(str(self.known_hosts))
                except (OSError, paramiko.SSHException) as exc:
                    raise UsageError(f"cannot read known_hosts file {self.known_hosts}: {exc}") from exc
            else:
                log.warning("known_hosts file %s does not exist: every host key is unknown", self.known_hosts)
        client.set_missing_host_key_policy(_Refuse(self, name))

    def changed_key_error(
        self, name: str, expected: paramiko.PKey, seen: paramiko.PKey
    ) -> HostVerificationError:
        """The error for a server whose key differs from the trusted one."""
        where = f"in {self.known_hosts}" if self.mode == KNOWN_HOSTS else "from the first connection"
        return _error(
            f"SSH host key of {name} CHANGED: trusted {expected.get_name()} {key_fingerprint(expected)} "
            f"{where}, server presented {seen.get_name()} {key_fingerprint(seen)}; refusing to connect "
            "(possible man-in-the-middle)",
            seen,
        )


class _Refuse(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy with the fingerprint in the message; accepts only the pin or the opt-out."""

    def __init__(self, check: HostKeyCheck, name: str):
        self._check = check
        self._name = name

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = key_fingerprint(key)
        if self._check.mode == PINNED and self._check.pin == seen:
            log.info("SSH host key of %s matches the pinned fingerprint %s", self._name, seen)
            return
        if self._check.mode == INSECURE:
            log.warning(
                "SSH host key of %s (%s %s) accepted WITHOUT verification", self._name, key.get_name(), seen
            )
            return
        if self._check.mode == PINNED:
            raise _error(
                f"SSH host key of {self._name} is {key.get_name()} {seen}, not the pinned {self._check.pin}; "
                "refusing to connect",
                key,
            )
        raise _error(
            f"SSH host key of {self._name} ({key.get_name()} {seen}) is not in the trusted keys "
            f"({self._check.known_hosts}); verify it out of band, then add it to known_hosts or pass "
            f"host_key_fingerprint='{seen}'",
            key,
        )


def _error(message: str, seen: paramiko.PKey) -> HostVerificationError:
    error = HostVerificationError(message)
    error.fingerprint = key_fingerprint(seen)  # type: ignore[attr-defined]
    return error
