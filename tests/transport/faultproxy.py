"""A TCP proxy on loopback that cuts connections after a chosen number of bytes (fault injection).

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        proxy.cut_after(5_000_000)          # the next connection dies after 5 MB server→client
        connect to ("127.0.0.1", proxy.port)

Each new connection takes the next planned cut (``None`` = never cut). A cut closes both sockets
abruptly (RST), as a failing link or a killed peer would.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import struct
import threading


class FaultProxy:
    """Forward 127.0.0.1:port → ``target``; planned connections die after N downstream bytes."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1"):
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._plan: collections.deque[int | None] = collections.deque()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        self.cuts = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def cut_after(self, *byte_counts: int | None) -> None:
        """Plan the next connections: each dies after that many server→client bytes (None: lives)."""
        with self._lock:
            self._plan.extend(byte_counts)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                limit = self._plan.popleft() if self._plan else None
                self.connections += 1
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            pair = _Pair(client, server, limit, self._count_cut)
            threading.Thread(target=pair.pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=pair.pump, args=(server, client, True), daemon=True).start()

    def _count_cut(self) -> None:
        with self._lock:
            self.cuts += 1

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _reset(sock)
            self._sockets.clear()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket, limit: int | None, on_cut):
        self.client = client
        self.server = server
        self.remaining = limit
        self.on_cut = on_cut
        self.cut = False

    def pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        try:
            while data := source.recv(262144):
                if downstream and self.remaining is not None:
                    if len(data) >= self.remaining:
                        sink.sendall(data[: self.remaining])
                        self._cut()
                        return
                    self.remaining -= len(data)
                sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(self.client)
            _reset(self.server)

    def _cut(self) -> None:
        if not self.cut:
            self.cut = True
            self.on_cut()
        _reset(self.client)
        _reset(self.server)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the peer sees a broken connection, not a clean end.

    ``shutdown(SHUT_RD)`` first wakes the other pump thread blocked in ``recv`` on this socket, so
    the close really happens now.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
