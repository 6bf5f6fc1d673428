"""The state store on a real three-master Redis Cluster: URLs, placement, redirects, a master down.

The store contract itself runs on the cluster in ``tests/test_state_store.py``; here is what only a
cluster has. Tests that change a cluster (auth, a slot moved, a master stopped) get a private one.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
import redis

from connectors.redis_cluster import cluster_nodes, is_unreachable
from connectors.redis_store import RedisStateStore, StoreUnavailable, redis_client_from_url
from detector.protocol import is_outage
from detector.stream import EntityState
from tests.redis_cluster import EmbeddedRedisCluster, cluster_mode_missing
from tests.test_state_store import N, assert_same, filled


@pytest.fixture
def private_cluster() -> Iterator[EmbeddedRedisCluster]:
    missing = cluster_mode_missing()
    if missing:
        pytest.skip(f"no Redis Cluster: {missing}")
    with EmbeddedRedisCluster() as cluster:
        yield cluster


pytestmark = pytest.mark.integration


def test_cluster_urls_name_their_seed_nodes() -> None:
    assert cluster_nodes("redis+cluster://a:7000,b:7001, [::1]:7002") == [
        ("a", 7000), ("b", 7001), ("::1", 7002)]
    assert cluster_nodes("rediss+cluster://user:pw@a") == [("a", 6379)]
    with pytest.raises(ValueError, match="only database 0"):
        redis_client_from_url("redis+cluster://a:7000/3")
    with pytest.raises(ValueError, match="rediss"):
        redis_client_from_url("redis+cluster://a:7000", ssl_ca="/etc/ca.pem")
    with pytest.raises(ValueError, match="'b:x' has a bad port") as info:
        redis_client_from_url("redis+cluster://:s3cret@a:1,b:x")
    assert "s3cret" not in str(info.value)


def test_an_unreachable_cluster_is_an_outage_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as info:
        redis_client_from_url("redis+cluster://:s3cret@127.0.0.1:9", connect_timeout_s=0.5)
    assert is_outage(info.value) and "s3cret" not in str(info.value)
    assert "cannot be connected" in str(info.value)


def test_any_reachable_seed_finds_the_whole_cluster(redis_cluster: EmbeddedRedisCluster) -> None:
    ports = redis_cluster.ports
    client = redis_client_from_url(f"redis+cluster://127.0.0.1:9,127.0.0.1:{ports[1]}",
                                   connect_timeout_s=0.5)
    try:
        assert sorted(n.port for n in client.get_primaries()) == sorted(ports)
        assert RedisStateStore(client, N).ping() is True
    finally:
        client.close()


def test_entities_spread_over_every_master(redis_cluster: EmbeddedRedisCluster,
                                           cluster_client: redis.RedisCluster) -> None:
    store = RedisStateStore(cluster_client, N, namespace=uuid.uuid4().hex)
    names = [f"pump-{i}" for i in range(60)]
    assert store.save([filled(n, seed=i) for i, n in enumerate(names)]) == [True] * 60
    per_node = redis_cluster.keys_per_node(f"ganwatch:{store.namespace}:*")
    assert sum(per_node.values()) == 60 and min(per_node.values()) > 0, per_node
    for name in names[:10]:  # each lives on the master its slot names
        port = cluster_client.get_node_from_key(store.key(name)).port
        with redis_cluster.node_client(port) as node:
            assert node.exists(store.key(name)) == 1
    loaded = store.load(names)
    for i, name in enumerate(names):
        assert_same(loaded[name], filled(name, seed=i))


def test_a_moved_slot_is_followed(private_cluster: EmbeddedRedisCluster) -> None:
    client = redis_client_from_url(private_cluster.url)
    try:
        store = RedisStateStore(client, N, namespace="moved")
        key = store.key("pump-7")
        slot = client.keyslot(key)
        old = client.get_node_from_key(key)
        new = next(n for n in client.get_primaries() if n.name != old.name)
        with private_cluster.node_client(new.port) as target:
            new_id = target.execute_command("CLUSTER MYID")
        for port in private_cluster.ports:  # the slot is empty: hand it over everywhere
            with private_cluster.node_client(port) as node:
                node.execute_command("CLUSTER SETSLOT", slot, "NODE", new_id)
        assert client.get_node_from_key(key).name == old.name  # the client does not know yet
        state = filled("pump-7")
        assert store.save([state]) == [True]  # MOVED, followed
        assert_same(store.load(["pump-7"])["pump-7"], state)
        with private_cluster.node_client(new.port) as target:
            assert target.exists(key) == 1
    finally:
        client.close()


def test_a_password_flag_beats_the_one_in_a_cluster_url(
        private_cluster: EmbeddedRedisCluster) -> None:
    for port in private_cluster.ports:
        with private_cluster.node_client(port) as node:
            node.config_set("requirepass", "right")
    wrong = private_cluster.url.replace("redis+cluster://", "redis+cluster://:wrong@")
    client = redis_client_from_url(wrong, password="right")
    try:
        assert RedisStateStore(client, N).ping() is True
    finally:
        client.close()
    with pytest.raises((redis.AuthenticationError, StoreUnavailable)):
        redis_client_from_url(wrong).close()


def test_a_master_down_is_an_outage_until_it_is_back(private_cluster: EmbeddedRedisCluster) -> None:
    client = redis_client_from_url(private_cluster.url, connect_timeout_s=0.5, socket_timeout_s=1)
    try:
        store = RedisStateStore(client, N, namespace="down")
        names = [f"pump-{i}" for i in range(30)]
        assert store.save([filled(n) for n in names]) == [True] * 30
        victim = private_cluster.nodes[1]
        on_victim = [n for n in names if client.get_node_from_key(store.key(n)).port == victim.port]
        elsewhere = [n for n in names if n not in on_victim]
        assert on_victim and elsewhere
        victim.stop()
        assert store.ping() is False  # every master must answer
        for call in (lambda: store.load(names),
                     lambda: store.save([filled(on_victim[0]), EntityState(elsewhere[0], N)])):
            with pytest.raises(StoreUnavailable) as info:
                call()
            assert is_outage(info.value) and is_unreachable(info.value.__cause__)
        assert store.load(elsewhere)[elsewhere[0]].version == 1  # the other masters still serve
        victim.start()
        private_cluster.wait_ok()
        assert any(store.ping() for _ in range(20))
        loaded = store.load(names)  # the victim kept its slots but lost its data
        assert {n for n in names if loaded[n].version == 0} == set(on_victim)
        assert store.save(list(loaded.values())) == [True] * 30  # NOSCRIPT on the victim handled
    finally:
        client.close()
