"""The worker on a real Kafka-protocol broker (tansu) and Redis, plus its Prometheus/health endpoints.

Every wait has a deadline; no assertion is about how long something took.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.embedded import EmbeddedRedis
from connectors.kafka import KafkaSink, KafkaSource
from connectors.prometheus import HealthServer, PrometheusMetrics
from connectors.redis_store import RedisStateStore, redis_client_from_url
from detector.alert import alert_id
from detector.metric import InMemoryMetrics
from detector.message import ParsedReading, parse_reading
from detector.protocol import Message
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig
from tests.contract import check
from tests.test_worker import CHANNELS, T0, THRESHOLD, W, messages, scenario, zscore

WAIT_S = 60


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def produce(bootstrap: str, topic: str, msgs: list[Message], partition_of=lambda m: 0) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for m in msgs:
            producer.send(topic, key=m.key, value=m.value, partition=partition_of(m))
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


class TopicReader:
    """Reads a whole topic from the beginning, without a group; every record read must satisfy
    ``schema`` (``ganwatch schema NAME``)."""

    def __init__(self, bootstrap: str, topic: str, schema: str, partitions: int = 1) -> None:
        self.schema = schema
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       auto_offset_reset="earliest", fetch_max_wait_ms=100)
        self._consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        self.records: list = []

    def poll(self) -> list:
        for batch in self._consumer.poll(timeout_ms=200).values():
            self.records.extend(batch)
        return self.records

    def json(self) -> list[dict]:
        return [check(json.loads(r.value), self.schema) for r in self.records]

    def wait_for(self, n: int, what: str) -> list[dict]:
        wait_until(lambda: len(self.poll()) >= n, f"{n} records of {what}")
        for _ in range(3):  # anything extra (duplicates) would show up now
            self.poll()
        return self.json()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class Running:
    """Runs ``worker.run`` in a thread for the duration of a ``with`` block."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.stop = worker, threading.Event()
        self.thread = threading.Thread(target=worker.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT_S)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def rig(kafka_bootstrap, redis_url, topic_factory, fast_consumer_config):
    """Builds workers on fresh topics, one group and one Redis namespace per test."""
    topics = {"alerts": topic_factory(), "dead": topic_factory()}
    group, namespace, made = f"g-{uuid.uuid4().hex}", uuid.uuid4().hex, []

    def make(readings: str, mode: str = "episode", url: str | None = None, **source_kw) -> Worker:
        client = redis_client_from_url(url or redis_url, socket_timeout_s=2, connect_timeout_s=1)
        source = KafkaSource([readings], group, kafka_bootstrap, max_poll_records=50,
                             **fast_consumer_config, **source_kw)
        sink = KafkaSink(kafka_bootstrap, flush_timeout_s=10)
        config = WorkerConfig(
            StreamConfig(W), alert_mode=mode, episode_end_windows=2, alerts_topic=topics["alerts"],
            dead_letter_topic=topics["dead"], max_batch=50, max_wait_ms=100,
            backoff_initial_s=0.05, backoff_max_s=0.5, lag_interval_s=0.5,
        )
        worker = Worker(source, sink, RedisStateStore(client, len(CHANNELS), namespace=namespace),
                        lambda: (zscore(), THRESHOLD), config, InMemoryMetrics())
        made.append((sink, client))
        return worker

    make.topics, make.group = topics, group
    yield make
    for sink, client in made:
        sink.close()
        client.close()


EPISODES = [("e1", "anomaly_start", 10), ("e1", "anomaly_end", 14), ("e2", "anomaly_start", 20),
            ("e2", "anomaly_end", 22)]
EXPECTED_IDS = {alert_id(e, T0 + t * 1000, kind, "z1") for e, kind, t in EPISODES}


def test_replay_publishes_alerts_and_dead_letters(kafka_bootstrap, topic_factory, rig):
    readings = topic_factory()
    junk = messages([b"\xffnot json", b'{"entity": "e1", "ts": "soon", "values": {"a": 1}}'])
    produce(kafka_bootstrap, readings, scenario()[:30] + junk + scenario()[30:])
    alerts_reader = TopicReader(kafka_bootstrap, rig.topics["alerts"], "alert")
    dead_reader = TopicReader(kafka_bootstrap, rig.topics["dead"], "dead-letter")
    worker = rig(readings)
    with Running(worker):
        got = alerts_reader.wait_for(4, "alerts")
        dead = dead_reader.wait_for(2, "dead letters")
        wait_until(lambda: worker.metrics.count("readings_total") == 92, "all readings consumed")
        wait_until(lambda: worker.ready, "ready")
    assert [(a["entity"], a["type"], a["ts_ms"]) for a in got] == [(e, k, T0 + t * 1000) for e, k, t in EPISODES]
    assert {a["alert_id"] for a in got} == EXPECTED_IDS
    assert [r.key for r in alerts_reader.records] == [b"e1", b"e1", b"e2", b"e2"]
    end = got[1]
    assert end["peak_ts_ms"] == T0 + 11_000 and end["episode_start"] == "2020-03-09T10:14:43.000Z"
    assert [c["name"] for c in got[0]["channels"]] == ["a", "b"] and got[0]["window_start_ms"] == T0 + 7_000
    assert [(d["reason"], d["source"]["topic"], d["source"]["offset"]) for d in dead] == [
        ("not_json", readings, 30), ("bad_ts", readings, 31)]
    assert dead[1]["value_text"].startswith('{"entity": "e1"')
    alerts_reader.close()
    dead_reader.close()


def test_a_new_worker_in_the_group_resumes_without_losing_alerts(kafka_bootstrap, topic_factory, rig):
    readings = topic_factory()
    msgs = scenario()
    produce(kafka_bootstrap, readings, msgs[:36])  # up to t=11: e1's episode is open
    reader = TopicReader(kafka_bootstrap, rig.topics["alerts"], "alert")
    first = rig(readings)
    with Running(first):
        reader.wait_for(1, "the first alert")
        wait_until(lambda: first.metrics.count("readings_total") == 36, "the first half consumed")
    produce(kafka_bootstrap, readings, msgs[36:])
    second = rig(readings)
    with Running(second):
        got = reader.wait_for(4, "all alerts")
        wait_until(lambda: second.metrics.count("readings_total") >= 54, "the second half consumed")
    assert {a["alert_id"] for a in got} == EXPECTED_IDS and len(got) == 4
    assert second.metrics.count("readings_total") == 54  # resumed at the commit, no replay
    assert second.metrics.count("duplicates_total") == 0
    reader.close()


def test_two_workers_share_a_two_partition_topic(kafka_bootstrap, topic_factory, rig):
    readings = topic_factory(partitions=2)
    spikes = {("e1", 10): 6.0, ("e2", 20): 7.0, ("e4", 15): 5.0}
    rows = [(e, t, spikes.get((e, t), 0.1), 0.1) for t in range(25) for e in ("e1", "e2", "e3", "e4")]
    assigned: dict[int, list] = {}
    workers = [rig(readings, mode="window", on_assigned=lambda parts, i=i: assigned.__setitem__(i, parts))
               for i in range(2)]
    reader = TopicReader(kafka_bootstrap, rig.topics["alerts"], "alert")
    with Running(workers[0]), Running(workers[1]):
        wait_until(lambda: len(assigned) == 2 and all(len(p) == 1 for p in assigned.values()),
                   "one partition each")
        assert assigned[0] != assigned[1]
        produce(kafka_bootstrap, readings, messages(rows), partition_of=lambda m: int(m.key[1:]) % 2)
        got = reader.wait_for(3, "alerts")
        wait_until(lambda: sum(w.metrics.count("readings_total") for w in workers) >= 100, "all consumed")
    assert sorted((a["entity"], a["ts_ms"]) for a in got) == sorted((e, T0 + t * 1000) for e, t in spikes)
    assert all(w.metrics.count("readings_total") > 0 for w in workers)
    reader.close()


def test_redis_restart_under_a_running_worker(kafka_bootstrap, topic_factory, rig,
                                              embedded_redis: EmbeddedRedis):
    readings = topic_factory()
    before = [("e1", t, 6.0 if t == 10 else 0.1, 0.1) for t in range(15)]
    after = [("e1", t, 6.0 if t == 30 else 0.1, 0.1) for t in range(20, 35)]
    worker = rig(readings, mode="window", url=embedded_redis.url)
    redis_down, commits_while_down, commits = threading.Event(), [], []
    commit = worker.source.commit

    def counting_commit(offsets=None):  # the worker's own signature: a TypeError here would hide
        (commits_while_down if redis_down.is_set() else commits).append(offsets)
        commit(offsets)

    worker.source.commit = counting_commit
    metrics = PrometheusMetrics()
    counts, worker.metrics = worker.metrics, Tee(worker.metrics, metrics)
    reader = TopicReader(kafka_bootstrap, rig.topics["alerts"], "alert")
    with HealthServer("127.0.0.1", 0, metrics, lambda: worker.ready, lambda: worker.alive) as health, \
            Running(worker):
        produce(kafka_bootstrap, readings, messages(before))
        reader.wait_for(1, "the alert before the outage")
        wait_until(lambda: counts.count("readings_total") == 15, "the first readings consumed")
        wait_until(lambda: http_status(health.url + "/readyz") == 200, "ready")
        wait_until(lambda: any(o and o.get((readings, 0)) == 15 for o in commits),
                   "the first readings committed")
        redis_down.set()
        embedded_redis.stop()
        produce(kafka_bootstrap, readings, messages(after))
        wait_until(lambda: counts.count("retries_total", stage="load") >= 2, "the batch retried while down")
        assert not worker.ready
        assert http_status(health.url + "/readyz") == 503 and http_status(health.url + "/healthz") == 200
        redis_down.clear()  # before start: a commit needs a successful save, so none can slip in
        embedded_redis.start()  # same port, empty: the entity's window starts again
        got = reader.wait_for(2, "the alert after the outage")
        wait_until(lambda: worker.ready, "ready again")
        wait_until(lambda: any(o and o.get((readings, 0)) == 30 for o in commits),
                   "the readings after the outage committed")
        assert http_status(health.url + "/readyz") == 200
        text = urllib.request.urlopen(health.url + "/metrics", timeout=10).read().decode()
    assert commits_while_down == []
    assert counts.count("commit_failures_total") == 0
    committed = [o[(readings, 0)] for o in commits if o]
    assert committed == sorted(committed)  # offsets only move forward
    assert [a["ts_ms"] for a in got] == [T0 + 10_000, T0 + 30_000]
    assert 'ganwatch_retries_total{stage="load"}' in text and "ganwatch_alerts_total" in text
    reader.close()


class Tee:
    """Reports to several ``Metrics`` at once (countable in-memory ones and Prometheus)."""

    def __init__(self, *targets) -> None:
        self.targets = targets

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        for t in self.targets:
            t.inc(name, value, **labels)

    def observe(self, name: str, value: float) -> None:
        for t in self.targets:
            t.observe(name, value)

    def set(self, name: str, value: float) -> None:
        for t in self.targets:
            t.set(name, value)


def http_status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_health_server_and_prometheus_metrics():
    metrics, state = PrometheusMetrics(), {"ready": False, "live": True}

    def broken() -> bool:
        raise RuntimeError("probe bug")

    metrics.inc("dead_letters_total", reason="not_json")
    metrics.inc("readings_total", 3)
    metrics.observe("batch_size", 7)
    metrics.set("consumer_lag", 42)
    with HealthServer("127.0.0.1", 0, metrics, lambda: state["ready"], lambda: state["live"]) as health:
        assert health.port > 0
        assert http_status(health.url + "/readyz") == 503 and http_status(health.url + "/healthz") == 200
        state.update(ready=True, live=False)
        assert http_status(health.url + "/readyz") == 200 and http_status(health.url + "/healthz") == 503
        assert http_status(health.url + "/nope") == 404
        response = urllib.request.urlopen(health.url + "/metrics", timeout=10)
        text = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'ganwatch_dead_letters_total{reason="not_json"} 1.0' in text
    assert "ganwatch_readings_total 3.0" in text and "ganwatch_consumer_lag 42.0" in text
    assert "ganwatch_batch_size_count 1.0" in text and "process_" in text
    with HealthServer("127.0.0.1", 0, metrics, broken, broken) as health:
        assert http_status(health.url + "/readyz") == 503


junk_bytes = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["entity", "ts", "values", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                  st.dictionaries(st.sampled_from(["a", "b"]), st.one_of(st.floats(), st.text(max_size=4))),
                  ), max_size=4)),
)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking on a broker: too slow
@given(values=st.lists(junk_bytes, min_size=5, max_size=40))
def test_fuzzed_bytes_are_dead_lettered_with_the_original_bytes(
    values, kafka_bootstrap, topic_factory, rig
):
    """Arbitrary bytes and JSON shapes on the real broker: every record is either accepted or
    dead-lettered with its exact bytes and offset, the loop keeps going, nothing is lost."""
    readings = topic_factory()
    produce(kafka_bootstrap, readings, messages(values))
    dead_reader = TopicReader(kafka_bootstrap, rig.topics["dead"], "dead-letter")
    worker = rig(readings)
    try:
        with Running(worker):
            wait_until(lambda: worker.metrics.count("readings_total") == len(values), "all consumed")
            # examples share the fixture's dead-letter topic: count this example's records only
            def ours() -> dict[int, dict]:
                dead_reader.poll()
                return {d["source"]["offset"]: d for d in dead_reader.json()
                        if d["source"]["topic"] == readings}

            wait_until(lambda: len(ours()) == worker.metrics.count("dead_letters_total"),
                       "dead letters on the topic")
        dead = ours()
        parsed = [parse_reading(m, CHANNELS) for m in messages(values)]
        rejected = {i for i, p in enumerate(parsed) if not isinstance(p, ParsedReading)}
        assert rejected <= set(dead), "a rejected record never reached the dead-letter topic"
        for offset, d in dead.items():
            assert base64.b64decode(d["value_b64"]) == (values[offset] or b"")
            assert d["reason"]
        assert worker.ready
    finally:
        dead_reader.close()


def test_a_rebalance_finishes_the_revoked_batch_and_commits_only_owned_partitions(
        kafka_bootstrap, topic_factory, rig):
    readings = topic_factory(partitions=2)
    msgs = scenario()
    half, rest = msgs[:45], msgs[45:]  # t < 15, then the rest
    part = lambda m: int(m.key[1:]) % 2  # noqa: E731  e2 on 0, e1 and e3 on 1
    ends = {p: sum(1 for m in msgs if part(m) == p) for p in (0, 1)}
    watcher = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=rig.group,
                            enable_auto_commit=False)

    def committed() -> dict:
        return {p: watcher.committed(TopicPartition(readings, p)) for p in (0, 1)}

    workers, commits, in_callback, revokes, assigned = [], {0: [], 1: []}, set(), [], {}

    def hooks(i: int) -> dict:
        def revoked(parts):
            in_callback.add(i)
            try:
                revokes.append((i, parts))
                workers[i].on_revoked(parts)
            finally:
                in_callback.discard(i)

        def on_assigned(parts):
            assigned[i] = parts
            workers[i].on_assigned(parts)
        return {"on_revoked": revoked, "on_assigned": on_assigned}

    for i in range(2):
        workers.append(rig(readings, **hooks(i)))
        commit = workers[i].source.commit

        def recording(offsets=None, i=i, commit=commit):
            owned = set(workers[i].source.assignment())
            commits[i].append((dict(offsets or {}), owned, i in in_callback))
            commit(offsets)

        workers[i].source.commit = recording
    reader = TopicReader(kafka_bootstrap, rig.topics["alerts"], "alert")
    produce(kafka_bootstrap, readings, half, partition_of=part)
    with Running(workers[0]):
        wait_until(lambda: workers[0].metrics.count("readings_total") >= len(half), "the first half")
        with Running(workers[1]):  # joins: the group rebalances under a running worker
            wait_until(lambda: len(assigned) == 2 and all(len(p) == 1 for p in assigned.values()),
                       "one partition each")
            produce(kafka_bootstrap, readings, rest, partition_of=part)
            got = reader.wait_for(4, "all alerts")
            wait_until(lambda: sum(w.metrics.count("readings_total") for w in workers) >= 90,
                       "all consumed")
            wait_until(lambda: committed() == ends, "every offset committed")
    watcher.close(autocommit=False)
    assert assigned[0] != assigned[1] and any(i == 0 for i, _ in revokes)  # A gave one up
    assert {a["alert_id"] for a in got} == EXPECTED_IDS
    for i in range(2):
        last: dict = {}
        for offsets, owned, during_revoke in commits[i]:
            assert during_revoke or set(offsets) <= owned, (i, offsets, owned)
            for tp, o in offsets.items():
                assert o > last.get(tp, -1), (i, tp, o, last)  # never backwards
                last[tp] = o
    reader.close()
