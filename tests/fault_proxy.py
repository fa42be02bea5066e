"""The one TCP fault proxy of the tests: put it between the farm (its processes, or the code under test in this
process) and a real service (S3, PostgreSQL) and switch the service "off" in the ways networks and servers really
fail, so that the farm sees the very errors an outage gives it.

    with FaultProxy("127.0.0.1", 5000) as proxy:   # listens on 127.0.0.1:<free port> (proxy.port, proxy.url)
        proxy.refuse()    # ... or proxy.hang(), proxy.reset_all(), proxy.refusing_for(30)
        proxy.restore()

- `passing`: bytes flow both ways (the default).
- `refusing`: connections are refused (the listening socket is closed: connect() gets ECONNREFUSED) and every open
  connection is reset (RST), as when the service's host is up and the service is not.
- `hanging`: new connections are accepted and nothing is answered; open connections stop moving bytes either way.
  What a stuck server or a black-holed route looks like: only the clients' own timeouts end the wait.
- `reset_all()`: reset every open connection once (a server restart, a NAT table flush), then keep passing.

The proxy runs in threads of the test process (one accept loop, two pumps per connection), so a test switches modes
with plain method calls, from any thread (an engine stand-in may switch S3 off in the middle of a job).
`refusing_for(s)` / `hanging_for(s)` are the fault windows of the fault suite: a fault's duration is a timer by
nature, the only sleeps here.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["passing", "refusing", "hanging"]

CHUNK = 64 * 1024
POLL_S = 0.05  # how often a pump looks at the mode while no bytes move (a hang stops it within this)


@dataclass(eq=False)  # hashed by identity: the proxy keeps its open links in a set
class _Link:
    """One proxied connection: the client's socket and the service's."""

    client: socket.socket
    upstream: socket.socket
    closed: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        """End both sides with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()
        self.closed.set()


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`; the mode decides what happens to the bytes."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self._mode: Mode = "passing"
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._hung: list[socket.socket] = []  # connections accepted while hanging: held, never answered
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self.port = port
        self.connections = 0  # accepted connections, in all modes (tests read it to see the proxy was in the path)
        self.refused_windows = 0
        self._open_listener()
        self.port = self._port_of_listener()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------------------
    # Modes

    @property
    def url(self) -> str:
        """The proxy's address as an HTTP endpoint (what a client of an HTTP service, S3, is given)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def refuse(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self._mode = "refusing"
            self.refused_windows += 1
            listener, self._listener = self._listener, None
        if listener is not None:
            _stop_listening(listener)
        self.reset_all()

    def hang(self) -> None:
        """Accept and never answer; open connections freeze."""
        with self._lock:
            self._mode = "hanging"

    def restore(self) -> None:
        """Pass bytes again. Connections accepted during a hang are reset (their requests were never forwarded,
        and a real server that comes back does not answer them either)."""
        with self._lock:
            was = self._mode
            self._mode = "passing"
            hung, self._hung = self._hung, []
        for sock in hung:
            _reset_socket(sock)
        if was == "refusing":
            self._open_listener()

    def reset_all(self) -> None:
        """Reset every open connection (RST both ways)."""
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            link.reset()

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        self.refuse()
        try:
            yield
        finally:
            self.restore()

    @contextlib.contextmanager
    def hanging(self) -> Iterator[None]:
        self.hang()
        try:
            yield
        finally:
            self.restore()

    def refusing_for(self, seconds: float) -> None:
        """Refuse for `seconds` (the fault's duration), then pass again."""
        with self.refusing():
            time.sleep(seconds)

    def hanging_for(self, seconds: float) -> None:
        """Hang for `seconds` (the fault's duration), then pass again."""
        with self.hanging():
            time.sleep(seconds)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            listener, self._listener = self._listener, None
            hung, self._hung = self._hung, []
        if listener is not None:
            _stop_listening(listener)
        for sock in hung:
            _reset_socket(sock)
        self.reset_all()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing

    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        listener.settimeout(POLL_S)
        with self._lock:
            self._listener = listener

    def _port_of_listener(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:  # refusing: nothing listens; wait for restore()
                time.sleep(POLL_S)
                continue
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us by refuse()
                continue
            self.connections += 1
            client.settimeout(None)
            if self._mode == "hanging":
                with self._lock:
                    self._hung.append(client)
                continue
            threading.Thread(target=self._connect_and_pump, args=(client,), daemon=True).start()

    def _connect_and_pump(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset_socket(client)
            return
        upstream.settimeout(None)
        link = _Link(client, upstream)
        with self._lock:
            if self._mode == "refusing":
                link.reset()
                return
            self._links.add(link)
        forward = threading.Thread(target=self._pump, args=(link, client, upstream), daemon=True)
        forward.start()
        self._pump(link, upstream, client)
        forward.join()
        with self._lock:
            self._links.discard(link)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes from `source` to `sink` until either side ends; frozen while hanging."""
        while not link.closed.is_set():
            if self._mode == "hanging":
                time.sleep(POLL_S)
                continue
            try:
                ready, _, _ = select.select([source], [], [], POLL_S)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            if self._mode == "hanging":
                continue  # the bytes stay in the kernel's buffer until the hang ends
            try:
                data = source.recv(CHUNK)
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        link.closed.set()


def _stop_listening(listener: socket.socket) -> None:
    """Stop accepting at once. close() alone leaves the socket listening while the accept loop's poll still holds
    it (up to POLL_S): connections made then would be accepted by the kernel, then reset, instead of refused."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def _reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
