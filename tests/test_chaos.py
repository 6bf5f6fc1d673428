"""Chaos: up to three ``ganwatch serve`` members on a 6-partition backlog, joining, SIGTERMed and
SIGKILLed mid-stream, again and again. Afterwards the alerts are exactly offline scoring's (copies
carry the same ids), every ``anomaly_start`` has its ``anomaly_end`` unless the stream ends inside
the episode, each entity's stored window is its last readings, and the group's committed offsets
never went backwards.
"""

from __future__ import annotations

import signal
import threading

import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.file import Table
from connectors.kafka import KafkaSink
from connectors.redis_store import redis_client_from_url
from detector.artifact import load_artifact
from ganwatch.replay import messages
from tests.fleet_support import assert_window_is_the_last_readings, expected_alerts, stored_states
from tests.test_serve_e2e import (  # noqa: F401  (module fixtures, used by name)
    END_WINDOWS, WAIT_S, Rig, Serve, data_csv, model_dir, rows, serve_env, table, tracebacks,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
BACKLOG = 120  # rows per entity published before the first member starts
STEP = 30  # rows per entity published before each event
ENDS_INSIDE = 224  # the short entities stop inside the pressure episode (rows 220-225)


class CommitSampler:
    """Reads the group's committed offsets every 0.2 s from a consumer outside the group."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.seen: dict[int, list[int]] = {p.partition: [] for p in self.parts}
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                       enable_auto_commit=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for tp in self.parts:
                try:
                    committed = self._consumer.committed(tp)
                except Exception:  # the coordinator is busy with a rebalance: try again
                    continue
                self.seen[tp.partition].append(-1 if committed is None else committed)
            self._stop.wait(0.2)

    def total(self) -> int:
        return sum(max(v, default=0) for v in self.seen.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close(autocommit=False)


def publish_rows(tables: dict[str, Table], bootstrap: str, topic: str, start: int,
                 stop: int) -> int:
    """Rows ``start:stop`` of every entity, one row of each in turn; return the count."""
    sink = KafkaSink(bootstrap, {}, linger_ms=5)
    streams = [list(messages(t, e, "iso", 0))[start:stop] for e, t in tables.items()]
    sent = 0
    try:
        for i in range(max(map(len, streams))):
            for key, stream in zip(tables, streams):
                if i < len(stream):
                    sink.send(topic, key.encode(), stream[i][1])
                    sent += 1
        sink.flush()
    finally:
        sink.close()
    return sent


def test_members_join_and_die_mid_stream_and_nothing_is_lost(
        kafka_bootstrap, redis_url, topic_factory, fast_consumer_config, tmp_path, model_dir,
        table):
    artifact = load_artifact(model_dir, device="cpu")
    short = rows(table, 0, ENDS_INSIDE)
    tables = {f"pump-{i}": (table if i % 2 else short) for i in range(12)}
    want = {e: expected_alerts(artifact, t, e, END_WINDOWS) for e, t in tables.items()}
    assert want["pump-0"][-1]["type"] == "anomaly_start"  # the short ones end inside an episode
    assert want["pump-1"][-1]["type"] == "anomaly_end"
    want_ids = {a["alert_id"] for alerts in want.values() for a in alerts}
    total = sum(len(t.ts_ms) for t in tables.values())
    topics = {"readings": topic_factory(PARTITIONS, prefix="chaos-readings"),
              **{name: topic_factory(prefix=f"chaos-{name}") for name in ("alerts", "dead")}}
    rig = Rig(kafka_bootstrap, redis_url, topics, serve_env(fast_consumer_config), tmp_path)
    # a backlog first, then one more slice of the rows before each event, the rest at the end
    cuts = [0, BACKLOG, *range(BACKLOG + STEP, len(table.ts_ms), STEP), len(table.ts_ms)]
    slices = list(zip(cuts, cuts[1:]))
    published = [0]
    sampler = CommitSampler(rig.bootstrap, rig.group, topics["readings"])
    reader = rig.reader("alerts")
    live: list[Serve] = []
    events: list[str] = []

    def publish_next() -> None:
        before = published[0]
        first, last = slices.pop(0)
        published[0] += publish_rows(tables, rig.bootstrap, topics["readings"], first, last)
        assert published[0] > before

    def start() -> None:
        """One more member; back once the group gave it partitions (it joined)."""
        serve = rig.start(model_dir, "--max-batch", "20")
        live.append(serve)
        wait_until(lambda: "partitions assigned: [TopicPartition" in serve.log.read_text(),
                   "the new member's partitions", *live)
        events.append(f"start {len(rig.started) - 1}")

    def into_the_next_slice(what: str) -> None:
        """Publish a slice, and wait until the members are working on it."""
        before = published[0]
        publish_next()
        wait_until(lambda: sampler.total() > before, what, *live)
        events.append(f"at {sampler.total()}/{published[0]}")

    def stop(i: int, sig: int) -> None:
        serve = live[i]
        if sig == signal.SIGTERM:  # its handler is in place once start-up is over
            wait_until(lambda: "start-up objects frozen" in serve.log.read_text(), "start-up",
                       serve)
        live.pop(i)
        serve.proc.send_signal(sig)
        rc = serve.proc.wait(30)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), (events, serve.tail())
        events.append(f"{signal.Signals(sig).name} {rig.started.index(serve)}")

    try:
        publish_next()  # the backlog
        start()
        start()
        into_the_next_slice("progress before a third member joins")
        start()
        into_the_next_slice("progress before the first SIGKILL")
        stop(0, signal.SIGKILL)
        into_the_next_slice("progress before a SIGTERM")
        stop(0, signal.SIGTERM)
        start()
        into_the_next_slice("progress before the second SIGKILL")
        stop(0, signal.SIGKILL)
        start()
        into_the_next_slice("progress before the second SIGTERM")
        stop(1, signal.SIGTERM)
        while slices:
            publish_next()
        assert published[0] == total
        wait_until(lambda: {a["alert_id"] for a in reader.poll()} >= want_ids
                   and sampler.total() == total, "every alert and every commit", *live,
                   timeout_s=2 * WAIT_S)
        for i in range(len(live) - 1, -1, -1):
            stop(i, signal.SIGTERM)
        got = reader.settle()
    finally:
        sampler.close()
        for serve in rig.started:
            serve.stop()
        reader.close()
    assert len([e for e in events if not e.startswith("at ")]) == 10, events
    by_id: dict[str, tuple] = {}
    for a in got:  # copies (replays after a kill) are the same alert
        assert by_id.setdefault(a["alert_id"], (a["entity"], a["type"], a["ts_ms"], a["score"])
                                ) == (a["entity"], a["type"], a["ts_ms"], a["score"])
    assert set(by_id) == want_ids
    for entity, alerts in want.items():  # starts and ends pair up, per entity, in order
        types = [v[1] for _, v in sorted(by_id.items(), key=lambda kv: kv[1][2])
                 if v[0] == entity]
        assert types == [a["type"] for a in alerts]
        assert types[::2] == ["anomaly_start"] * len(types[::2])
        assert types[1::2] == ["anomaly_end"] * len(types[1::2])
        assert len(types) % 2 == (1 if len(tables[entity].ts_ms) == ENDS_INSIDE else 0)
    for partition, offsets in sampler.seen.items():
        assert offsets == sorted(offsets), f"partition {partition} went backwards: {offsets}"
    client = redis_client_from_url(redis_url)
    try:
        states = stored_states(client, artifact, rig.prefix, list(tables))
    finally:
        client.close()
    for entity, t in tables.items():
        assert_window_is_the_last_readings(states[entity], t, artifact.detector.window)
    assert all(s.episode.get("active", False) == (len(tables[e].ts_ms) == ENDS_INSIDE)
               for e, s in states.items())
    # the members saw rebalances and each one's log is clean
    logs = "".join(s.log.read_text(errors="replace") for s in rig.started)
    assert not tracebacks(logs) and "partitions revoked" in logs
