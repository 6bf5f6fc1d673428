"""Poison cases through ``ganwatch serve`` (a subprocess) on the real broker and Redis: each is
set aside as dead letters with its source offsets while the rest of the stream goes on, and
every offset gets committed. Every wait has a deadline (``wait_until``)."""

from __future__ import annotations

import base64

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.redis_store import redis_client_from_url
from detector.artifact import load_artifact
from ganwatch.serve import state_namespace
from tests.test_serve_e2e import (  # noqa: F401  (fixtures)
    CHANNELS, ENTITY, ROWS, data_csv, expected_alerts, model_dir, publish, rig, rows, table,
    wait_until,
)

OTHER = "pump-2"


def committed(rig) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=rig.bootstrap, group_id=rig.group,
                             enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(rig.topics["readings"], 0))
    finally:
        consumer.close(autocommit=False)


def test_a_foreign_value_under_an_entitys_key_sets_only_that_entity_aside(rig, model_dir, table):
    artifact = load_artifact(model_dir, device="cpu")
    key = f"{rig.prefix}:{state_namespace(CHANNELS, artifact.detector.window)}:{{{OTHER}}}"
    client = redis_client_from_url(rig.redis_url)
    try:
        client.set(key, b"somebody else's value")  # a string where a hash is expected
        assert publish(rows(table, 0, 20), OTHER, rig.bootstrap, rig.topics["readings"]) == 20
        assert rig.publish(table) == ROWS
        want = expected_alerts(artifact, table)
        alerts, dead = rig.reader("alerts"), rig.reader("dead")
        serve = rig.start(model_dir, "--max-retries", "1")
        wait_until(lambda: len(alerts.poll()) >= len(want) and len(dead.poll()) >= 20
                   and committed(rig) == ROWS + 20, "the alerts, dead letters and commit", serve)
        letters = dead.settle()
        assert [a["alert_id"] for a in alerts.settle()] == [a["alert_id"] for a in want]
        assert {d["reason"] for d in letters} == {"failed_load"} and len(letters) == 20
        assert sorted(d["source"]["offset"] for d in letters) == list(range(20))
        assert {base64.b64decode(d["key_b64"]) for d in letters} == {OTHER.encode()}
        assert "WRONGTYPE" in letters[0]["detail"]
        assert client.get(key) == b"somebody else's value"  # left alone
    finally:
        client.close()


def test_a_700kb_rejected_value_is_dead_lettered_within_the_broker_limit(rig, model_dir, table):
    artifact = load_artifact(model_dir, device="cpu")
    big = b"<not json>" + b"x" * 700_000
    producer = KafkaProducer(bootstrap_servers=rig.bootstrap, max_request_size=2 << 20)
    try:
        producer.send(rig.topics["readings"], key=ENTITY.encode(), value=big).get(30)
    finally:
        producer.close(10)
    assert rig.publish(table) == ROWS
    want = expected_alerts(artifact, table)
    alerts, dead = rig.reader("alerts"), rig.reader("dead")
    serve = rig.start(model_dir)
    wait_until(lambda: len(dead.poll()) >= 1 and len(alerts.poll()) >= len(want)
               and committed(rig) == ROWS + 1, "the dead letter, alerts and commit", serve)
    [letter] = dead.settle()
    assert letter["reason"] == "not_json" and letter["source"]["offset"] == 0
    assert letter["truncated"] is True and "value_text" not in letter  # the text copy went
    assert base64.b64decode(letter["value_b64"]) == big  # the bytes themselves fit whole
    assert len(dead.records[0].value) <= 1_000_000
    assert [a["alert_id"] for a in alerts.settle()] == [a["alert_id"] for a in want]


def test_redis_at_its_memory_limit_sets_the_readings_aside_instead_of_stalling(
        rig, model_dir, table, embedded_redis):
    admin = redis_client_from_url(embedded_redis.url)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # every write is refused with OOM
        rig.redis_url = embedded_redis.url
        assert rig.publish(rows(table, 0, 30)) == 30
        dead = rig.reader("dead")
        serve = rig.start(model_dir, "--max-retries", "1")
        wait_until(lambda: len(dead.poll()) >= 30 and committed(rig) == 30,
                   "the dead letters and the commit", serve)
        letters = dead.settle()
        assert {d["reason"] for d in letters} == {"failed_save"} and "OOM" in letters[0]["detail"]
        assert sorted(d["source"]["offset"] for d in letters) == list(range(30))
        assert serve.running
    finally:
        admin.close()
