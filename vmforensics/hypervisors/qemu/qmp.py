"""A small QMP client over any byte stream (a unix socket here, ``socat`` on an SSH channel there).

QMP is line-delimited JSON: the server greets, the client negotiates with ``qmp_capabilities``,
then each command carries an ``id`` that its reply repeats; asynchronous events arrive between
replies. The peer runs on the examined host, so everything it sends is bounded: one message at
most :data:`MESSAGE_LIMIT` bytes, at most :data:`EVENT_LIMIT` unread events kept, and every read
has a deadline.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from vmforensics.errors import ConnectionError_, SourceError

log = logging.getLogger(__name__)

#: One QMP message (``query-block`` of a VM with many disks is far smaller).
MESSAGE_LIMIT = 8 << 20
#: Unclaimed asynchronous events kept; older ones are dropped (and counted).
EVENT_LIMIT = 1024


class QMPError(SourceError):
    """QEMU answered a command with an error (its class and description are in the message)."""

    def __init__(self, command: str, error_class: str, description: str):
        super().__init__(f"QMP {command} failed: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class ByteStream(Protocol):
    """What the client needs of its stream: a socket or a paramiko channel both fit."""

    def recv(self, size: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...

    def settimeout(self, timeout: float | None) -> None: ...

    def close(self) -> None: ...


class QMPClient:
    """One QMP session: greeting read and capabilities negotiated at construction."""

    def __init__(self, stream: ByteStream, *, where: str, timeout: float = 30.0):
        self._stream = stream
        self.where = where
        self.timeout = timeout
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_LIMIT)
        self.dropped_events = 0
        self.greeting = self._read_message(
            time.monotonic() + timeout,
            "QMP greeting (a QMP socket serves one client at a time: another one, such as Proxmox's "
            "qm or pvestatd, may hold it; try again)",
        )
        if not isinstance(self.greeting.get("QMP"), dict):
            raise SourceError(f"{where} did not greet as a QMP server: {_short(self.greeting)}")
        self.execute("qmp_capabilities")

    @property
    def version(self) -> dict[str, Any]:
        """``{"qemu": {"major": …}, "package": …}`` from the greeting."""
        version = self.greeting["QMP"].get("version")
        return version if isinstance(version, dict) else {}

    def execute(self, command: str, timeout: float | None = None, **arguments: Any) -> Any:
        """Run one command and return its ``return`` value; an error reply raises QMPError."""
        ident = f"vmf-{next(self._ids)}"
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        log.debug("%s <- %s", self.where, command)
        self._send(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self._keep_event(reply)
                continue
            if reply.get("id") != ident:
                log.warning("%s: reply to another command ignored: %s", self.where, _short(reply))
                continue
            if "error" in reply:
                error = reply["error"] if isinstance(reply["error"], dict) else {}
                raise QMPError(command, str(error.get("class")), str(error.get("desc")))
            if "return" not in reply:
                raise SourceError(f"{self.where}: QMP reply to {command} has no return: {_short(reply)}")
            return reply["return"]

    def wait_event(
        self, accept: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first event (already received or still to come) for which ``accept`` is true."""
        for event in list(self.events):
            if accept(event):
                self.events.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline, what)
            if "event" not in message:
                log.warning("%s: unexpected reply while waiting: %s", self.where, _short(message))
                continue
            if accept(message):
                return message
            self._keep_event(message)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as exc:
            log.debug("closing QMP stream: %s", exc)

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire --------------------------------------------------------------------------------

    def _keep_event(self, event: dict[str, Any]) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped_events += 1
        self.events.append(event)

    def _send(self, data: bytes) -> None:
        try:
            self._stream.settimeout(self.timeout)
            self._stream.sendall(data)
        except (OSError, EOFError) as exc:
            raise ConnectionError_(f"{self.where}: QMP connection lost while sending: {exc}") from exc

    def _read_message(self, deadline: float, what: str = "a QMP reply") -> dict[str, Any]:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).strip()
                del self._buffer[: end + 1]
                if not line:
                    continue
                return self._decode(line)
            if len(self._buffer) > MESSAGE_LIMIT:
                raise SourceError(f"{self.where}: a QMP message is longer than {MESSAGE_LIMIT} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(f"{self.where}: no {what} before the time limit")
            try:
                self._stream.settimeout(min(remaining, 5.0))
                chunk = self._stream.recv(65536)
            except TimeoutError:
                continue
            except (OSError, EOFError) as exc:
                raise ConnectionError_(f"{self.where}: QMP connection lost: {exc}") from exc
            if not chunk:
                raise ConnectionError_(f"{self.where}: the QMP server closed the connection")
            self._buffer += chunk

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.where}: QMP sent a line that is not JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise SourceError(f"{self.where}: QMP sent a JSON value that is not an object")
        return message


def _short(message: Any) -> str:
    text = json.dumps(message)
    return text if len(text) <= 300 else text[:300] + "…"
