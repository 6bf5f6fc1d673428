"""Shared fixtures: real Kafka-protocol broker and Redis, started here unless the environment names them.

``KAFKA_BOOTSTRAP``, ``REDIS_URL`` and ``REDIS_CLUSTER_URL`` (``redis+cluster://host:port,...``) point
the suite at servers someone else runs; tests then isolate themselves with unique topic, group, prefix
and namespace names and never flush a database.
Tests that use a server fixture are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest
import redis

from connectors.embedded import EmbeddedKafka, EmbeddedRedis
from connectors.kafka import create_topics
from connectors.redis_store import redis_client_from_url
from tests.redis_cluster import EmbeddedRedisCluster, cluster_mode_missing

SERVER_FIXTURES = {"kafka_bootstrap", "redis_url", "embedded_redis", "redis_client", "topic_factory",
                   "redis_cluster", "redis_cluster_url", "cluster_client"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a broker for the whole session (memory-only tansu unless KAFKA_BOOTSTRAP)."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis for the whole session (a private redis-server unless REDIS_URL)."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A private three-master Redis Cluster for the whole session (skipped where the
    ``redis-server`` binary cannot run one)."""
    missing = cluster_mode_missing()
    if missing:
        pytest.skip(f"no Redis Cluster: {missing}")
    with EmbeddedRedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis+cluster://`` URL of a Redis Cluster (the private one unless REDIS_CLUSTER_URL)."""
    return os.environ.get("REDIS_CLUSTER_URL") or request.getfixturevalue("redis_cluster").url


@pytest.fixture
def cluster_client(redis_cluster_url: str) -> Iterator[redis.RedisCluster]:
    """A cluster client configured as the worker's, on the shared cluster."""
    client = redis_client_from_url(redis_cluster_url)
    yield client
    client.close()


@pytest.fixture
def embedded_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis the test may stop and restart (``restart`` keeps the port, loses the data)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client configured as the worker's (binary, no client-side retries) on the shared Redis."""
    client = redis_client_from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("group")`` -> ``"group-<uuid hex>"``: names no other test (or earlier run) uses."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture
def topic_factory(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., str]:
    """``topic_factory(partitions=1)`` creates a new uniquely named topic and returns its name.

    Topics are never reused or deleted: on tansu, producing to a missing topic is accepted and a
    re-created topic misbehaves, so every test gets fresh ones.
    """

    def make(partitions: int = 1, prefix: str = "test") -> str:
        name = unique_name(prefix)
        create_topics(kafka_bootstrap, [name], partitions=partitions)
        return name

    return make


@pytest.fixture
def fast_consumer_config() -> dict[str, int]:
    """Consumer timings for tests: tansu holds a group join about session_timeout/2."""
    return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "fetch_max_wait_ms": 100}
