"""A TCP proxy that can refuse service: the fault switch of the outage tests (a real socket between the farm and a
real service, so that the farm sees the very errors an outage gives it).

    proxy = SwitchableProxy("127.0.0.1", 5000)   # listens on 127.0.0.1:<free port>, forwards to 127.0.0.1:5000
    proxy.refuse()    # open connections are reset; new ones are accepted and reset at once
    proxy.restore()   # forwards again
    proxy.close()
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

_BUFFER = 65536
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST instead of a FIN


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    with contextlib.suppress(OSError):
        sock.close()


class SwitchableProxy:
    """Forwards TCP connections to `host:port` until `refuse()`; see the module's docstring."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._refusing = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0  # connections reset while refusing
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        self._refusing.set()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def restore(self) -> None:
        self._refusing.clear()

    def close(self) -> None:
        self._closed.set()
        self.refuse()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_BUFFER):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _reset(sock)
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)


@contextlib.contextmanager
def switchable_proxy(host: str, port: int) -> Iterator[SwitchableProxy]:
    proxy = SwitchableProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
