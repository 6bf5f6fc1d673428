"""A small threaded TCP proxy for fault tests: 127.0.0.1:port forwards to 127.0.0.1:target_port.

``cut()`` closes every live connection (both sides see a reset or EOF); ``refuse(s)`` also closes
the listening socket for ``s`` seconds, so new connections are refused (the server is unreachable);
``stall(s)`` stops forwarding in both directions for ``s`` seconds: connections stay open, new ones
are accepted, bytes wait in the kernel buffers and flow again afterwards (a hung server or link).
``close()`` stops the proxy; everything it started is a daemon thread it joins.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Self

log = logging.getLogger(__name__)

_CHUNK = 65536
_TICK_S = 0.05


class TcpProxy:
    """Forwards one loopback port to another, with cut / refuse / stall faults."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._stalled_until = 0.0
        self._refused_until = 0.0
        self.accepted = 0  # connections accepted so far (tests check traffic really went through)

    def start(self) -> Self:
        self._listen()
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    # ---- faults ----

    def cut(self) -> int:
        """Close every live connection; return how many there were."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for sock in conns:
            _close(sock)
        log.info("proxy %d: cut %d sockets", self.port, len(conns))
        return len(conns)

    def refuse(self, seconds: float) -> None:
        """Cut everything and refuse new connections for ``seconds``."""
        with self._lock:
            self._refused_until = time.monotonic() + seconds
            listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        self.cut()

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds``."""
        self._stalled_until = time.monotonic() + seconds

    @property
    def faulty(self) -> bool:
        now = time.monotonic()
        return now < self._stalled_until or now < self._refused_until

    # ---- plumbing ----

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(_TICK_S)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener

    def _spawn(self, target, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                if time.monotonic() >= self._refused_until:
                    self._listen()
                else:
                    time.sleep(_TICK_S)
                continue
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError as exc:
                log.info("proxy %d: upstream %d unreachable: %s", self.port, self.target_port, exc)
                _close(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, upstream))
                self.accepted += 1
            self._spawn(self._pump, "proxy-up", client, upstream)
            self._spawn(self._pump, "proxy-down", upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if time.monotonic() < self._stalled_until:
                    time.sleep(_TICK_S)
                    continue
                readable, _, _ = select.select([src], [], [], _TICK_S)
                if not readable:
                    continue
                if time.monotonic() < self._stalled_until:
                    continue  # a stall began meanwhile: leave the bytes where they are
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):  # the other pump or a cut closed a socket
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
