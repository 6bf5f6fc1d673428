"""``ganwatch serve`` with its state on a real three-master Redis Cluster (``redis+cluster://``):
the alerts of several entities come out as offline scoring says, and their windows land on every
master."""

from __future__ import annotations

from collections import Counter

import pytest

from connectors.redis_store import redis_client_from_url
from detector.artifact import load_artifact
from tests.fleet_support import (
    assert_window_is_the_last_readings, expected_alerts, publish_all, stored_states,
)
from tests.test_serve_e2e import (  # noqa: F401  (module fixtures, used by name)
    END_WINDOWS, ROWS, VALID, data_csv, error_line, model_dir, run_serve, running_rig, table,
    tracebacks, wait_until,
)


def entities_on_every_master(client, per_master: int = 2) -> list[str]:
    """``pump-N`` names, ``per_master`` of them hashing to each master's slots."""
    chosen: dict[str, list[str]] = {n.name: [] for n in client.get_primaries()}
    for i in range(1000):
        name = f"pump-{i}"
        owner = chosen[client.get_node_from_key(f"{{{name}}}").name]
        if len(owner) < per_master:
            owner.append(name)
        if all(len(v) == per_master for v in chosen.values()):
            return sorted(n for names in chosen.values() for n in names)
    raise AssertionError("could not place entities on every master")


@pytest.fixture
def cluster_rig(kafka_bootstrap, redis_cluster, topic_factory, fast_consumer_config, tmp_path):
    with running_rig(kafka_bootstrap, redis_cluster.url, topic_factory, fast_consumer_config,
                     tmp_path, "cl") as made:
        yield made


@pytest.fixture
def cluster_client(redis_cluster):
    """A client on the private cluster (the one whose masters the test counts keys on)."""
    client = redis_client_from_url(redis_cluster.url)
    yield client
    client.close()


def test_serve_on_a_redis_cluster_alerts_and_spreads_state(cluster_rig, redis_cluster,
                                                          cluster_client, model_dir, table):
    rig = cluster_rig
    artifact = load_artifact(model_dir, device="cpu")
    entities = entities_on_every_master(cluster_client)
    want = {e: expected_alerts(artifact, table, e, END_WINDOWS) for e in entities}
    assert all(len(w) == 4 for w in want.values())  # two episodes each
    want_ids = {a["alert_id"]: (a["entity"], a["type"], a["ts_ms"])
                for alerts in want.values() for a in alerts}
    assert publish_all(table, entities, rig.bootstrap, rig.topics["readings"]) == ROWS * 6
    reader = rig.reader("alerts")
    serve = rig.start(model_dir)
    wait_until(lambda: len(reader.poll()) >= len(want_ids), "every entity's alerts", serve)
    got = reader.settle()
    assert {a["alert_id"]: (a["entity"], a["type"], a["ts_ms"]) for a in got} == want_ids
    assert len(got) == len(want_ids)  # one run, no fault: no copies
    for entity in entities:  # per entity, in order
        assert [a["alert_id"] for a in got if a["entity"] == entity] == [
            a["alert_id"] for a in want[entity]]
    # every entity's window is its last readings, and the keys sit on all three masters
    window = artifact.detector.window
    states = stored_states(cluster_client, artifact, rig.prefix, entities)
    for entity in entities:
        assert_window_is_the_last_readings(states[entity], table, window)
    per_master = redis_cluster.keys_per_node(f"{rig.prefix}:*")
    assert sorted(per_master.values()) == [2, 2, 2], per_master
    assert Counter(cluster_client.get_node_from_key(f"{{{e}}}").port for e in entities) == Counter(
        {port: 2 for port in redis_cluster.ports})
    assert not tracebacks(serve.tail())


def test_an_unreachable_cluster_at_start_is_one_line_without_the_password(model_dir,
                                                                         kafka_bootstrap):
    args = [a.format(model=model_dir) for a in VALID] + [
        "--bootstrap-servers", kafka_bootstrap, "--metrics-port", "0",
        "--redis-url", "redis+cluster://:s3cret@127.0.0.1:9,127.0.0.1:9"]
    done = run_serve(args)
    line = error_line(done)
    assert "cannot reach the Redis Cluster at redis+cluster://:***@127.0.0.1:9" in line, line
    assert "s3cret" not in done.stderr
