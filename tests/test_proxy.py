"""The fault-test TCP proxy forwards, cuts, refuses and stalls as it says."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from tests.proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback echo server (one thread per connection), closed at the end."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(5)
    server.close()


def roundtrip(sock: socket.socket, data: bytes, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    sock.sendall(data)
    return sock.recv(4096)


def test_forward_cut_refuse_and_stall(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        address = ("127.0.0.1", proxy.port)
        with socket.create_connection(address) as sock:
            assert roundtrip(sock, b"hello") == b"hello"
            assert proxy.cut() == 2  # both ends of the one connection
            try:
                got = roundtrip(sock, b"x")
            except (ConnectionResetError, BrokenPipeError):
                got = b""
            assert got == b""  # EOF or a reset: the connection is gone
        proxy.refuse(1.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=1).close()
        assert proxy.faulty
        for _ in range(100):  # refused for a second, then accepted again
            try:
                sock = socket.create_connection(address, timeout=1)
                break
            except ConnectionRefusedError:
                threading.Event().wait(0.05)
        with sock:
            assert roundtrip(sock, b"back") == b"back"
            proxy.stall(1.0)
            with pytest.raises(socket.timeout):
                roundtrip(sock, b"held", timeout_s=0.3)  # nothing comes back while stalled
            assert roundtrip(sock, b"", timeout_s=10) == b"held"  # then the bytes flow again
        assert proxy.accepted == 2 and not proxy.faulty
