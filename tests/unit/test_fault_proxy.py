"""`tests.fault_proxy.FaultProxy`, the one TCP fault proxy of the outage tests and the fault suite, against a real
echo server on loopback: it passes bytes, refuses (connections refused, open ones reset), hangs, and comes back on
the same port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.fault_proxy import FaultProxy

CLIENT_TIMEOUT_S = 5.0


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A server that sends back whatever it receives, one thread per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port, name="echo-proxy") as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = CLIENT_TIMEOUT_S) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_it_passes_bytes_both_ways_and_names_its_address_as_a_url(proxy: FaultProxy) -> None:
    assert urlparse(proxy.url).port == proxy.port
    with connect(proxy) as sock:
        assert echo(sock, b"hello" * 10_000) == b"hello" * 10_000
    assert proxy.connections == 1


def test_refusing_resets_open_connections_refuses_new_ones_and_restore_reopens_the_same_port(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    with connect(proxy) as open_before:
        assert echo(open_before, b"a") == b"a"
        # Switched from another thread, as an engine stand-in does in the middle of a job.
        switch = threading.Thread(target=proxy.refuse)
        switch.start()
        switch.join()
        assert proxy.mode == "refusing"
        with pytest.raises(ConnectionResetError):  # reset under the client
            open_before.recv(1)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)

    proxy.restore()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert echo(sock, b"back") == b"back"


def test_hanging_accepts_and_answers_nothing_until_restored(proxy: FaultProxy) -> None:
    with connect(proxy) as open_before:
        assert echo(open_before, b"x") == b"x"
        with proxy.hanging():
            with connect(proxy, timeout=0.5) as hung:  # accepted...
                hung.sendall(b"anyone?")
                with pytest.raises(TimeoutError):  # ...and never answered
                    hung.recv(1)
            open_before.settimeout(0.5)
            open_before.sendall(b"y")
            with pytest.raises(TimeoutError):  # an open connection is frozen too
                open_before.recv(1)
        open_before.settimeout(CLIENT_TIMEOUT_S)
        assert open_before.recv(1) == b"y"  # the frozen bytes move once the hang ends
