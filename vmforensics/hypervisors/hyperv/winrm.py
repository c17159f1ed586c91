"""Remote PowerShell over WinRM (pywinrm): run one reviewed script, get its JSON back.

Security of the channel is decided here, before anything is sent: HTTPS (5986) verifies the
server's certificate against the system store or a given CA bundle; plain HTTP (5985) is allowed
only with message encryption (NTLM, Kerberos or CredSSP seal every SOAP message) and Basic
authentication is refused there. Each script runs in a fresh Windows Remote Shell whose only
input is the script's constant text and the ``VMFORENSICS_ARGS`` environment variable (data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Literal

import requests
from winrm.exceptions import InvalidCredentialsError, WinRMError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol

from vmforensics.errors import (
    AuthenticationError,
    ConnectionError_,
    HostVerificationError,
    SourceError,
    UsageError,
    VMNotFoundError,
)
from vmforensics.hypervisors.hyperv.scripts import ARGUMENTS_VARIABLE, Script, encode_arguments

log = logging.getLogger(__name__)

WinRMAuth = Literal["ntlm", "kerberos", "credssp", "basic"]
_ENCRYPTING = ("ntlm", "kerberos", "credssp")
_POWERSHELL = "powershell.exe"
_POWERSHELL_ARGS = (
    "-NoLogo",
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-EncodedCommand",
)
_UTF8_CODEPAGE = 65001

#: Called after each script with (script, arguments, exit status) — the acquirer writes the ledger.
ScriptObserver = Callable[[Script, dict[str, Any], int], None]


class HyperVCommandError(SourceError):
    """A Hyper-V cmdlet failed on the host; ``category`` and ``error_id`` are PowerShell's."""

    def __init__(self, script: str, category: str, error_id: str, message: str):
        self.script = script
        self.category = category
        self.error_id = error_id
        super().__init__(f"{script}: {message} ({category}, {error_id})")


class HyperVAccessDeniedError(HyperVCommandError):
    """The account may use WinRM but not Hyper-V: it needs Hyper-V Administrators membership."""


def _fault_text(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


class PowerShellSession:
    """One WinRM endpoint of one Hyper-V host, with verified transport security."""

    def __init__(
        self,
        host: str,
        *,
        user: str,
        password: str,
        auth: WinRMAuth = "ntlm",
        https: bool = True,
        port: int | None = None,
        ca_bundle: str | None = None,
        verify_certificate: bool = True,
        read_timeout: int = 120,
        observer: ScriptObserver | None = None,
    ) -> None:
        if auth not in ("ntlm", "kerberos", "credssp", "basic"):
            raise UsageError(f"WinRM auth must be ntlm, kerberos, credssp or basic, not {auth!r}")
        if not https and auth not in _ENCRYPTING:
            raise UsageError(
                "Basic authentication over plain HTTP would send the password and every script in the "
                "clear: use HTTPS (without --http) or NTLM/Kerberos/CredSSP (--auth) with message encryption"
            )
        if not https and not verify_certificate:
            raise UsageError("verify_certificate only applies to HTTPS")
        self.host = host
        self.user = user
        self.auth = auth
        self.https = https
        self.port = port or (5986 if https else 5985)
        self.ca_bundle = ca_bundle
        self.verify_certificate = verify_certificate
        self.observer = observer
        self.endpoint = f"{'https' if https else 'http'}://{_bracket(host)}:{self.port}/wsman"
        self._protocol = Protocol(
            self.endpoint,
            transport=auth,
            username=user,
            password=password,
            server_cert_validation="validate" if verify_certificate else "ignore",
            ca_trust_path=ca_bundle,  # None: the default CA store, never environment variables
            read_timeout_sec=read_timeout,
            operation_timeout_sec=max(read_timeout - 10, 5),
            message_encryption="auto" if https else "always",
            proxy=None,
        )

    def describe(self) -> dict[str, Any]:
        """How the endpoint was reached and verified (never secrets), for the manifest."""
        facts: dict[str, Any] = {
            "protocol": "winrm",
            "endpoint": self.endpoint,
            "auth": self.auth,
            "user": self.user,
            "message_encryption": not self.https,  # over HTTPS, TLS protects the messages
        }
        if self.https:
            facts["tls_verification"] = (
                ("ca-bundle:" + self.ca_bundle if self.ca_bundle else "system-ca")
                if self.verify_certificate
                else "none"
            )
            facts["tls_certificate_sha256"] = self._peer_certificate_sha256()
        return facts

    def run(self, script: Script, **arguments: Any) -> Any:
        """Run ``script`` with ``arguments`` as data; return its parsed JSON or raise its error."""
        stdout, stderr, status = self._execute(script, arguments)
        if self.observer is not None:
            self.observer(script, arguments, status)
        text = stdout.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
        try:
            value = json.loads(text) if text else None
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("vmforensics_error"), dict):
            raise _script_error(script.name, value["vmforensics_error"])
        if status != 0 or value is None:
            detail = (stderr.decode("utf-8", errors="replace") or text)[-500:]
            raise SourceError(f"{script.name}: PowerShell exited with status {status}: {detail.strip()}")
        return value

    def close(self) -> None:
        self._protocol.transport.close_session()

    # -- internals ------------------------------------------------------------------------------

    def _execute(self, script: Script, arguments: dict[str, Any]) -> tuple[bytes, bytes, int]:
        log.debug("running %s (sha256 %s) on %s", script.name, script.sha256, self.endpoint)
        try:
            shell = self._protocol.open_shell(
                env_vars={ARGUMENTS_VARIABLE: encode_arguments(arguments)},
                codepage=_UTF8_CODEPAGE,
                noprofile=True,
            )
            try:
                command = self._protocol.run_command(
                    shell, _POWERSHELL, [*_POWERSHELL_ARGS, script.encoded], skip_cmd_shell=True
                )
                try:
                    return self._protocol.get_command_output(shell, command)
                finally:
                    self._protocol.cleanup_command(shell, command)
            finally:
                self._protocol.close_shell(shell)
        except InvalidCredentialsError as exc:
            raise AuthenticationError(
                f"WinRM {self.endpoint} refused the credentials of {self.user!r}"
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise HostVerificationError(
                f"WinRM {self.endpoint}: the TLS certificate could not be verified ({exc}); give --tls-ca "
                "with the CA that issued the host's WinRM certificate"
            ) from exc
        except WSManFaultError as exc:
            if exc.wsman_fault_code == 5 or "access is denied" in _fault_text(exc).lower():
                raise AuthenticationError(
                    f"WinRM {self.endpoint}: access denied for {self.user!r} (needs Remote Management Users "
                    "or Administrators membership)"
                ) from exc
            raise SourceError(f"WinRM {self.endpoint}: {_fault_text(exc)}") from exc
        except (requests.exceptions.RequestException, WinRMTransportError, OSError) as exc:
            raise ConnectionError_(f"WinRM {self.endpoint}: {exc}") from exc
        except WinRMError as exc:
            raise ConnectionError_(f"WinRM {self.endpoint}: {exc}") from exc

    def _peer_certificate_sha256(self) -> str | None:
        """The SHA-256 of the certificate the endpoint presents (verified as the session verifies)."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=30) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLError as exc:
            raise HostVerificationError(f"WinRM {self.endpoint}: TLS verification failed ({exc})") from exc
        except OSError as exc:
            raise ConnectionError_(f"WinRM {self.endpoint}: {exc}") from exc
        return hashlib.sha256(der).hexdigest() if der else None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _script_error(script: str, error: dict[str, Any]) -> HyperVCommandError:
    category = str(error.get("category") or "NotSpecified")
    error_id = str(error.get("error_id") or "")
    message = str(error.get("message") or "no message")
    if (
        category == "PermissionDenied"
        or "AccessDenied" in error_id
        or "UnauthorizedAccess" in str(error.get("exception"))
    ):
        return HyperVAccessDeniedError(
            script,
            category,
            error_id,
            message
            + " — the account needs membership of Hyper-V Administrators (or Administrators) on the host",
        )
    if error_id.endswith("Commands.GetVM") and category in ("InvalidArgument", "ObjectNotFound"):
        return _VMNotFoundError(script, category, error_id, message)
    return HyperVCommandError(script, category, error_id, message)


class _VMNotFoundError(HyperVCommandError, VMNotFoundError):
    """Get-VM found no VM with that id."""
