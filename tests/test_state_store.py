"""One ``StateStore`` contract over every implementation (in memory, one Redis, a Redis Cluster),
then what only the Redis store promises, on one Redis and on the cluster."""

from __future__ import annotations

import uuid
from typing import Callable

import numpy as np
import pytest
import redis
from redis.connection import Connection, UnixDomainSocketConnection
from redis.crc import key_slot

from connectors.embedded import EmbeddedRedis
from connectors.redis_store import (
    DEFAULT_TTL_S,
    RedisStateStore,
    StateDecodeError,
    StoreUnavailable,
    redact_url,
    redis_client_from_url,
)
from detector.memory import InMemoryStateStore
from detector.protocol import StateStore, is_outage
from detector.stream import EntityState

N = 3
ODD_NAMES = ["pump 7", "{braced}", "a}b{c", "}", "{", "", "泵-7 ✓", "ns:{x}:y", "tab\there"]


CLIENTS = {"redis": "redis_client", "cluster": "cluster_client"}


@pytest.fixture(params=["memory", *(pytest.param(k, marks=pytest.mark.integration) for k in CLIENTS)])
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return InMemoryStateStore(N)
    client = request.getfixturevalue(CLIENTS[request.param])
    return RedisStateStore(client, N, namespace=uuid.uuid4().hex)


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.integration) for k in CLIENTS])
def any_client(request: pytest.FixtureRequest) -> redis.Redis | redis.RedisCluster:
    """The worker's client on one Redis, then on the Redis Cluster."""
    return request.getfixturevalue(CLIENTS[request.param])


@pytest.fixture
def redis_store(any_client) -> RedisStateStore:
    return RedisStateStore(any_client, N, namespace=uuid.uuid4().hex)


def filled(entity: str, rows: int = 5, seed: int = 0) -> EntityState:
    rng = np.random.default_rng(seed)
    ts = np.arange(rows, dtype=np.int64) * 60_000 + 1_583_748_873_000
    return EntityState(
        entity=entity,
        n_channels=N,
        last_ts_ms=int(ts[-1]) if rows else None,
        count=rows + 7,
        ts=ts,
        values=rng.normal(size=(rows, N)),
        episode={"active": True, "start_ms": 1, "peak_score": 2.5, "peak_channels": ["P", "温度"]},
    )


def assert_same(a: EntityState, b: EntityState) -> None:
    assert (a.entity, a.n_channels) == (b.entity, b.n_channels)
    assert (a.last_ts_ms, a.count) == (b.last_ts_ms, b.count)
    assert a.ts.dtype == np.int64 and np.array_equal(a.ts, b.ts)
    assert a.values.shape == b.values.shape and a.values.dtype == np.float64
    # bit-exact, NaN payloads and signed zeros included
    assert np.array_equal(a.values.view(np.uint64), b.values.view(np.uint64))
    assert a.episode == b.episode


# ---- the contract, over every implementation ----


def test_unknown_entity_is_fresh(store: StateStore) -> None:
    state = store.load(["never-seen"])["never-seen"]
    assert state.version == 0 and state.last_ts_ms is None and state.count == 0
    assert state.ts.shape == (0,) and state.values.shape == (0, N) and state.episode == {}


def test_round_trip_is_bit_exact(store: StateStore) -> None:
    state = filled("pump-7")
    state.values[0] = [np.nan, -0.0, np.inf]
    state.values[1] = [5e-324, -np.inf, np.finfo(np.float64).max]
    state.ts[-1] = np.iinfo(np.int64).max
    state.episode = {"nested": {"list": [1, None, "x"]}, "peak_score": None, "normal_run": 3}
    assert store.save([state]) == [True]
    assert_same(store.load(["pump-7"])["pump-7"], state)


def test_empty_window_round_trip(store: StateStore) -> None:
    state = EntityState("warming", N, count=0)
    assert store.save([state]) == [True]
    loaded = store.load(["warming"])["warming"]
    assert_same(loaded, state)
    assert loaded.last_ts_ms is None


def test_version_bumps_on_each_save(store: StateStore) -> None:
    state = filled("v")
    assert store.save([state]) == [True]
    assert state.version == 1
    loaded = store.load(["v"])["v"]
    assert loaded.version == 1
    loaded.count += 1
    assert store.save([loaded]) == [True]
    assert loaded.version == 2
    assert store.load(["v"])["v"].version == 2


def test_second_writer_loses_compare_and_set(store: StateStore) -> None:
    for existing in (False, True):
        entity = f"shared-{existing}"
        if existing:
            store.save([filled(entity, seed=9)])
        first = store.load([entity])[entity]
        second = store.load([entity])[entity]
        first.values = np.full((2, N), 1.0)
        first.ts = np.array([1, 2], dtype=np.int64)
        second.values = np.full((3, N), 2.0)
        second.ts = np.array([1, 2, 3], dtype=np.int64)
        version = second.version
        assert store.save([first]) == [True]
        assert store.save([second]) == [False]
        assert second.version == version  # a lost write must not look like a saved one
        stored = store.load([entity])[entity]
        assert_same(stored, first)
        assert stored.version == first.version


def test_many_entities_in_one_call(store: StateStore) -> None:
    names = [f"e{i}" for i in range(20)]
    states = [filled(n, rows=i % 4, seed=i) for i, n in enumerate(names)]
    assert store.save(states) == [True] * 20
    stale = store.load(["e3"])["e3"]
    stale.version = 0  # as if loaded before the save above
    fresh = store.load(["e4"])["e4"]
    assert store.save([stale, fresh, filled("new")]) == [False, True, True]
    loaded = store.load(names + ["e0", "unknown"])  # duplicates are fine
    assert set(loaded) == set(names) | {"unknown"}
    for i, n in enumerate(names):
        assert_same(loaded[n], states[i])
    assert loaded["e4"].version == 2 and loaded["e3"].version == 1
    assert loaded["unknown"].version == 0


def test_empty_calls(store: StateStore) -> None:
    assert store.load([]) == {}
    assert store.save([]) == []
    assert store.ping() is True


def test_odd_entity_names_stay_separate(store: StateStore) -> None:
    states = [filled(name, rows=i + 1, seed=i) for i, name in enumerate(ODD_NAMES)]
    assert store.save(states) == [True] * len(states)
    loaded = store.load(ODD_NAMES)
    for state in states:
        assert_same(loaded[state.entity], state)


# ---- Redis only ----


def test_key_layout_hash_tag_and_ttl(redis_store: RedisStateStore, any_client) -> None:
    redis_client = any_client
    redis_store.save([filled("pump-7")])
    key = f"ganwatch:{redis_store.namespace}:{{pump-7}}"
    assert redis_store.key("pump-7") == key
    assert redis_client.exists(key) == 1
    assert key_slot(key.encode()) == key_slot(b"pump-7")
    assert 0 < redis_client.ttl(key) <= DEFAULT_TTL_S
    assert redis_client.hget(key, "version") == b"1"

    forever = RedisStateStore(redis_client, N, prefix="gw", namespace=redis_store.namespace, ttl_s=None)
    forever.save([filled("pump-7")])
    assert redis_client.ttl(f"gw:{redis_store.namespace}:{{pump-7}}") == -1


def test_namespaces_and_channel_mismatch(redis_store: RedisStateStore, any_client) -> None:
    redis_client = any_client
    redis_store.save([filled("pump-7")])
    other_ns = RedisStateStore(redis_client, 2, namespace=redis_store.namespace + "-2ch")
    assert other_ns.load(["pump-7"])["pump-7"].version == 0
    same_ns = RedisStateStore(redis_client, 2, namespace=redis_store.namespace)
    with pytest.raises(StateDecodeError, match="own namespace"):
        same_ns.load(["pump-7"])


def test_rejects_bad_arguments(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisStateStore(redis_client, N, namespace="{x}")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStateStore(redis.Redis(decode_responses=True), N)
    store = RedisStateStore(redis_client, N, namespace=uuid.uuid4().hex)
    bad = EntityState("x", N, ts=np.array([1], dtype=np.int64), values=np.zeros((1, N + 1)))
    with pytest.raises(ValueError, match="shape"):
        store.save([bad])


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Counts writes to Redis sockets: one per command, or one per whole pipeline."""
    calls = [0]
    original = Connection.send_packed_command

    def counting(self: Connection, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_packed_command", counting)

    def take() -> int:
        n, calls[0] = calls[0], 0
        return n

    return take


def test_load_and_save_are_one_round_trip(
    redis_store: RedisStateStore, any_client, round_trips: Callable[[], int]
) -> None:
    """One round trip per call on one Redis; on a cluster one per master holding the keys."""
    redis_client = any_client
    names = [f"e{i}" for i in range(25)]
    masters = 1
    if isinstance(redis_client, redis.RedisCluster):
        masters = len({redis_client.get_node_from_key(redis_store.key(n)).name for n in names})
        assert masters > 1  # 25 entities do not all hash to one master's slots
    redis_store.save([filled(n) for n in names])  # connections to every master, script loaded
    round_trips()
    for n in names[:5]:
        redis_client.hgetall(redis_store.key(n))
    assert round_trips() == 5  # the counter sees separate commands
    loaded = redis_store.load(names)
    assert round_trips() == masters
    assert redis_store.save(list(loaded.values())) == [True] * len(names)
    assert round_trips() == masters


def test_save_survives_script_flush(redis_store: RedisStateStore, any_client) -> None:
    redis_client = any_client  # on a cluster SCRIPT FLUSH empties every master's cache
    state = filled("s")
    assert redis_store.save([state]) == [True]
    redis_client.script_flush()
    state.count += 1
    stale = redis_store.load(["s"])["s"]
    stale.version = 0
    assert redis_store.save([state, stale]) == [True, False]
    loaded = redis_store.load(["s"])["s"]
    assert loaded.version == 2 and loaded.count == state.count


def test_store_recovers_after_redis_restart(embedded_redis: EmbeddedRedis) -> None:
    client = redis_client_from_url(embedded_redis.url)
    store = RedisStateStore(client, N)
    try:
        assert store.save([filled("r")]) == [True]
        embedded_redis.restart()
        # The pooled connection is dead and the client does not retry: at most a failed ping or
        # two before it reconnects (the worker retries with backoff in the same way).
        assert any(store.ping() for _ in range(3))
        assert store.load(["r"])["r"].version == 0  # no persistence: the state is gone
        state = filled("r")
        assert store.save([state]) == [True]  # script cache was lost too: NOSCRIPT handled
        assert_same(store.load(["r"])["r"], state)
    finally:
        client.close()


def test_ping_false_when_redis_is_down(embedded_redis: EmbeddedRedis) -> None:
    client = redis_client_from_url(embedded_redis.url, connect_timeout_s=0.5, socket_timeout_s=0.5)
    store = RedisStateStore(client, N)
    assert store.ping() is True
    embedded_redis.stop()
    assert store.ping() is False
    with pytest.raises(StoreUnavailable) as info:  # an outage, which the worker waits out
        store.load(["x"])
    assert is_outage(info.value) and isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(StoreUnavailable):
        store.save([EntityState("x", N)])
    client.close()


def test_errors_about_particular_keys_are_not_outages(any_client) -> None:
    redis_client = any_client
    store = RedisStateStore(redis_client, N, namespace=uuid.uuid4().hex)
    redis_client.set(store.key("plain"), b"not a hash")  # a foreign value under an entity's key
    redis_client.hset(store.key("alien"), "colour", "green")
    for entity in ("plain", "alien"):
        with pytest.raises(Exception) as info:
            store.load([entity])
        assert not is_outage(info.value), info.value
    with pytest.raises(redis.ResponseError) as info:
        store.save([EntityState("plain", N)])
    assert not is_outage(info.value)


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379/0?password=s3cret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert "s3cret" not in redact_url("redis://u:s3cret@[::1]:6379/0")
    assert redact_url("unix:///run/r.sock?db=1&password=s3cret") == "unix:///run/r.sock?db=1&password=***"
    assert redact_url("unix:///run/r.sock?db=1") == "unix:///run/r.sock?db=1"


def test_client_factory_options() -> None:
    with pytest.raises(ValueError, match="redis://, rediss:// or unix://") as info:
        redis_client_from_url("http://:pw@h/0")
    assert "pw" not in str(info.value)
    with pytest.raises(ValueError, match="socket path"):
        redis_client_from_url("unix://")
    with pytest.raises(ValueError, match="rediss://"):
        redis_client_from_url("unix:///run/redis.sock", ssl_ca="/etc/ca.pem")
    with pytest.raises(ValueError, match="rediss://"):
        redis_client_from_url("redis://h/0", ssl_ca="/etc/ca.pem")
    client = redis_client_from_url("rediss://h:6380/2", password="pw", ssl_ca="/etc/ca.pem")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["db"] == 2
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_timeout"] == 5.0
    assert not kwargs.get("decode_responses")


def test_unix_socket_url_gives_a_worker_client() -> None:
    client = redis_client_from_url("unix:///run/redis/redis.sock?db=3", password="pw")
    pool = client.connection_pool
    assert pool.connection_class is UnixDomainSocketConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["path"], kwargs["db"], kwargs["password"]) == ("/run/redis/redis.sock", 3, "pw")
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_connect_timeout"] == 5.0


@pytest.mark.integration
def test_store_over_a_unix_socket() -> None:
    with EmbeddedRedis(unix_socket=True) as server:
        assert server.unix_url.startswith("unix:///") and server.unix_url.endswith("redis.sock?db=0")
        client = redis_client_from_url(server.unix_url)
        try:
            store = RedisStateStore(client, N, namespace=uuid.uuid4().hex)
            state = filled("over-uds")
            assert store.ping() is True and store.save([state]) == [True]
            assert_same(store.load(["over-uds"])["over-uds"], state)
            # the same data over TCP: it really was this server, reached through its socket
            with redis.Redis.from_url(server.url) as tcp:
                assert tcp.exists(store.key("over-uds")) == 1
        finally:
            client.close()


def test_the_password_argument_beats_one_in_the_url() -> None:
    for url in ("redis://:from-url@h:6379/0", "redis://user:from-url@h/0",
                "redis://h/0?password=from-url", "unix:///run/r.sock?db=1&password=from-url"):
        kwargs = redis_client_from_url(url, password="flag").connection_pool.connection_kwargs
        assert kwargs["password"] == "flag", url
    kwargs = redis_client_from_url("redis://user:from-url@h/0").connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("user", "from-url")  # no flag: the URL's


@pytest.mark.integration
def test_a_server_with_a_password_takes_the_flag_over_a_wrong_one_in_the_url(
        embedded_redis) -> None:
    admin = redis_client_from_url(embedded_redis.url)
    admin.config_set("requirepass", "right")
    admin.close()
    wrong = f"redis://:wrong@127.0.0.1:{embedded_redis.port}/0"
    client = redis_client_from_url(wrong, password="right")
    try:
        assert client.ping()
    finally:
        client.close()
    refused = redis_client_from_url(wrong)
    try:
        with pytest.raises(redis.AuthenticationError):
            refused.ping()
    finally:
        refused.close()
