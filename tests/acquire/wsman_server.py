"""A WS-Management endpoint for tests: the Windows Remote Shell wire protocol pywinrm speaks.

This is a test double, not Windows: no Windows host and no PowerShell can run here (LAB.md). It
is an ``http.server`` in a thread that implements what pywinrm sends — SOAP envelopes for Create
(a shell, with its environment variables), Command, Receive, Signal and Delete — with real
authentication: NTLM through pyspnego's acceptor (``NTLM_USER_FILE``), including WinRM message
encryption over plain HTTP (MS-WSMV 2.2.9.1: ``multipart/encrypted`` with NTLM seal/sign), and,
over HTTPS, TLS with a test CA and optionally Basic. A command line ``powershell.exe ...
-EncodedCommand <b64>`` is decoded and handed to ``app(script_text, environment, user)``, which
returns (stdout, stderr, exit status); everything it received is kept in ``requests`` for tests.
"""

from __future__ import annotations

import base64
import http.server
import os
import ssl
import struct
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

import spnego

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "create",
    f"{SHELL}/Command": "command",
    f"{SHELL}/Receive": "receive",
    f"{SHELL}/Signal": "signal",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "delete",
}
BOUNDARY = b"--Encrypted Boundary"
SPNEGO_ENCRYPTED = b"application/HTTP-SPNEGO-session-encrypted"

App = Callable[[str, dict[str, str], str], tuple[bytes, bytes, int]]


class FaultError(Exception):
    """A WS-Management fault: HTTP 500 with a SOAP Fault carrying a WSManFault code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class WSManServer:
    """One endpoint on 127.0.0.1: ``http://127.0.0.1:PORT/wsman`` (or https with ``certificate``)."""

    def __init__(
        self,
        app: App,
        users: dict[str, str],
        *,
        certificate: tuple[str, str] | None = None,
        allow_basic: bool = False,
        host: str = "127.0.0.1",
        user_file: str,
    ) -> None:
        """``users``: name -> password (NTLM and Basic); ``user_file``: where to write NTLM_USER_FILE."""
        self.app = app
        self.users = users
        self.allow_basic = allow_basic
        self.https = certificate is not None
        self.requests: list[dict[str, Any]] = []  # every SOAP request: action, encrypted, user
        self.shells: dict[str, dict[str, Any]] = {}
        self.denied_users: set[str] = set()  # WinRM itself refuses these (no Remote Management rights)
        self._user_file = user_file
        with open(user_file, "w") as handle:
            handle.writelines(f":{name}:{password}\n" for name, password in users.items())
        os.environ["NTLM_USER_FILE"] = user_file
        handler = type("Handler", (_Handler,), {"endpoint": self})
        self.httpd = http.server.ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WSManServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- WS-Man operations ----------------------------------------------------------------------

    def dispatch(self, body: bytes, user: str, encrypted: bool) -> bytes:
        root = ET.fromstring(body)
        header = root.find("s:Header", NS)
        action = header.findtext("a:Action", default="", namespaces=NS) if header is not None else ""
        message_id = header.findtext("a:MessageID", default="", namespaces=NS) if header is not None else ""
        shell_id = ""
        if header is not None:
            for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
                if selector.get("Name") == "ShellId":
                    shell_id = selector.text or ""
        operation = ACTIONS.get(action)
        self.requests.append({"action": operation or action, "encrypted": encrypted, "user": user})
        if user.split("\\")[-1] in self.denied_users:
            raise FaultError(5, "Access is denied.")
        if operation is None:
            raise FaultError(2150858843, f"The action {action} is not supported by the service.")
        body_node = root.find("s:Body", NS)
        content = getattr(self, "_" + operation)(body_node, shell_id, user)
        return _envelope(action + "Response", message_id, content)

    def _create(self, body: ET.Element, shell_id: str, user: str) -> str:
        new_id = str(uuid.uuid4()).upper()
        environment = {
            v.get("Name", ""): v.text or ""
            for v in body.iterfind("rsp:Shell/rsp:Environment/rsp:Variable", NS)
        }
        self.shells[new_id] = {"environment": environment, "commands": {}, "user": user}
        return (
            "<x:ResourceCreated xmlns:x='http://schemas.xmlsoap.org/ws/2004/09/transfer'>"
            f"<a:Address>{'https' if self.https else 'http'}://127.0.0.1:{self.port}/wsman</a:Address>"
            f"<a:ReferenceParameters><w:ResourceURI>{SHELL}/cmd</w:ResourceURI>"
            f"<w:SelectorSet><w:Selector Name='ShellId'>{new_id}</w:Selector></w:SelectorSet>"
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{new_id}</rsp:ShellId><rsp:ResourceUri>{SHELL}/cmd</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(user)}</rsp:Owner><rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
        )

    def _command(self, body: ET.Element, shell_id: str, user: str) -> str:
        shell = self._shell(shell_id)
        command = body.findtext("rsp:CommandLine/rsp:Command", default="", namespaces=NS)
        arguments = (body.findtext("rsp:CommandLine/rsp:Arguments", default="", namespaces=NS) or "").split()
        if command.lower() != "powershell.exe" or "-EncodedCommand" not in arguments:
            result = (b"", f"'{command}' is not recognized by this test endpoint".encode(), 1)
        else:
            encoded = arguments[arguments.index("-EncodedCommand") + 1]
            script = base64.b64decode(encoded).decode("utf-16-le")
            result = self.app(script, dict(shell["environment"]), user)
        command_id = str(uuid.uuid4()).upper()
        shell["commands"][command_id] = result
        return f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"

    def _receive(self, body: ET.Element, shell_id: str, user: str) -> str:
        shell = self._shell(shell_id)
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.get("CommandId", "") if desired is not None else ""
        if command_id not in shell["commands"]:
            raise FaultError(2150858843, "The command id is not valid.")
        stdout, stderr, status = shell["commands"][command_id]
        streams = "".join(
            f"<rsp:Stream Name='{name}' CommandId='{command_id}'>{base64.b64encode(data[i : i + 8192]).decode()}</rsp:Stream>"
            for name, data in (("stdout", stdout), ("stderr", stderr))
            for i in range(0, len(data), 8192)
        )
        ends = "".join(
            f"<rsp:Stream Name='{n}' CommandId='{command_id}' End='true'/>" for n in ("stdout", "stderr")
        )
        return (
            f"<rsp:ReceiveResponse>{streams}{ends}<rsp:CommandState CommandId='{command_id}' "
            f"State='{SHELL}/CommandState/Done'><rsp:ExitCode>{status}</rsp:ExitCode></rsp:CommandState>"
            "</rsp:ReceiveResponse>"
        )

    def _signal(self, body: ET.Element, shell_id: str, user: str) -> str:
        self._shell(shell_id)
        return "<rsp:SignalResponse/>"

    def _delete(self, body: ET.Element, shell_id: str, user: str) -> str:
        self.shells.pop(shell_id, None)
        return ""

    def _shell(self, shell_id: str) -> dict[str, Any]:
        if shell_id not in self.shells:
            raise FaultError(
                2150858843,
                "The request for the Windows Remote Shell with ShellId failed because the shell was not found.",
            )
        return self.shells[shell_id]


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' "
        "xmlns:a='http://schemas.xmlsoap.org/ws/2004/08/addressing' "
        "xmlns:w='http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd' "
        f"xmlns:rsp='{SHELL}'><s:Header><a:Action>{action}</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _fault(fault: FaultError) -> bytes:
    return (
        "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope'><s:Body><s:Fault>"
        "<s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:AccessDenied</s:Value></s:Subcode></s:Code>"
        f"<s:Reason><s:Text xml:lang=''>{escape(fault.message)}</s:Text></s:Reason><s:Detail>"
        "<f:WSManFault xmlns:f='http://schemas.microsoft.com/wbem/wsman/1/wsmanfault' "
        f"Code='{fault.code}' Machine='127.0.0.1'><f:Message>{escape(fault.message)}</f:Message></f:WSManFault>"
        "</s:Detail></s:Fault></s:Body></s:Envelope>"
    ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One TCP connection: NTLM authenticates the connection, so its context lives here."""

    protocol_version = "HTTP/1.1"
    endpoint: WSManServer

    def setup(self) -> None:
        super().setup()
        self.context: Any = None
        self.user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Negotiate ") or authorization.startswith("NTLM "):
            scheme, _, token = authorization.partition(" ")
            if self.context is None or self.context.complete:
                self.context = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
                self.user = None
            try:
                answer = self.context.step(base64.b64decode(token))
            except spnego.exceptions.SpnegoError:
                self.context = None
                return self._reply(401, b"", {"WWW-Authenticate": "Negotiate"})
            if not self.context.complete:
                return self._reply(
                    401, b"", {"WWW-Authenticate": f"{scheme} {base64.b64encode(answer or b'').decode()}"}
                )
            self.user = self.context.client_principal or ""
        elif authorization.startswith("Basic ") and self.endpoint.allow_basic:
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.endpoint.users.get(name) != password:
                return self._reply(401, b"", {"WWW-Authenticate": "Basic realm='WSMAN'"})
            self.user = name
            self.context = None
        if self.user is None:
            offer = {"WWW-Authenticate": "Negotiate"}
            return self._reply(401, b"", offer)
        if not body:
            return self._reply(200, b"", {})
        encrypted = self.headers.get("Content-Type", "").startswith("multipart/encrypted")
        if encrypted:
            if self.context is None:
                return self._reply(400, b"encryption needs an NTLM session", {})
            body = self._unseal(body)
        elif not self.endpoint.https:
            # WinRM's default (AllowUnencrypted=false) refuses clear-text SOAP over HTTP.
            self.endpoint.requests.append(
                {"action": "refused-unencrypted", "encrypted": False, "user": self.user}
            )
            return self._reply(401, b"", {"WWW-Authenticate": "Negotiate"})
        try:
            status, answer = 200, self.endpoint.dispatch(body, self.user, encrypted)
        except FaultError as fault:
            status, answer = 500, _fault(fault)
        if encrypted:
            return self._reply(status, self._seal(answer), {"Content-Type": _encrypted_type()})
        return self._reply(status, answer, {"Content-Type": "application/soap+xml;charset=UTF-8"})

    def _unseal(self, body: bytes) -> bytes:
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        header, payload = parts[0], parts[1]
        length = int(header.strip().split(b"Length=")[1])
        payload = payload.removesuffix(BOUNDARY + b"--\r\n").replace(
            b"\tContent-Type: application/octet-stream\r\n", b"", 1
        )
        signature_length = struct.unpack("<i", payload[:4])[0]
        signature = payload[4 : 4 + signature_length]
        message = self.context.unwrap(signature + payload[4 + signature_length :]).data
        if len(message) != length:
            raise ValueError("encrypted length does not match")
        return message

    def _seal(self, message: bytes) -> bytes:
        wrapped = self.context.wrap(message, encrypt=True).data
        signature, sealed = wrapped[:16], wrapped[16:]
        return (
            BOUNDARY + b"\r\n\tContent-Type: " + SPNEGO_ENCRYPTED + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message)).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<i", len(signature))
            + signature
            + sealed
            + BOUNDARY
            + b"--\r\n"
        )

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _encrypted_type() -> str:
    return f'multipart/encrypted;protocol="{SPNEGO_ENCRYPTED.decode()}";boundary="Encrypted Boundary"'
