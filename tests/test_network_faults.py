"""Network faults between ``ganwatch serve`` and its servers, through ``tests/proxy.py``: the broker
unreachable for 10 s and Redis stalled for 7 s while the worker is inside a backlog.

Afterwards nothing is lost (every alert and score offline scoring predicts arrives), copies carry
the same ids and values, each entity's stored window is its last readings, and ``/readyz`` went
503 during the fault and is 200 again. The broker advertises the proxy's port, so every Kafka
client (serve, and this test's publisher and readers) goes through the proxy.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from connectors.embedded import EmbeddedKafka, EmbeddedRedis, free_port
from connectors.kafka import create_topics
from connectors.redis_store import redis_client_from_url
from detector.artifact import load_artifact
from detector.offline import score_series
from detector.stream import StreamConfig
from tests.fleet_support import (
    assert_window_is_the_last_readings, expected_alerts, publish_all, stored_states,
)
from tests.proxy import TcpProxy
from tests.test_serve_e2e import (  # noqa: F401  (module fixtures, used by name)
    END_WINDOWS, Rig, data_csv, model_dir, rows, serve_env, table, tracebacks, wait_until,
)

pytestmark = pytest.mark.integration

ENTITIES = [f"pump-{c}" for c in "abcdef"]
HEAD = 100  # rows per entity published before the fault; the rest is the backlog it hits
FAULT_WAIT_S = 150


class ProxiedKafka(EmbeddedKafka):
    """A tansu broker that advertises ``advertised_port`` (a proxy's) instead of its own."""

    def __init__(self, advertised_port: int) -> None:
        super().__init__()
        self.advertised_port = advertised_port

    def _command(self) -> list[str]:
        command = super()._command()
        at = command.index("--advertised-listener-url") + 1
        command[at] = f"tcp://127.0.0.1:{self.advertised_port}"
        return command


class ReadySampler:
    """Polls ``/readyz`` in a thread and keeps every answer: 200, 503, or 0 (no answer)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def status(self) -> int:
        try:
            return urllib.request.urlopen(self.url, timeout=2).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append(self.status())
            self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def proxied(fast_consumer_config, tmp_path) -> Iterator[tuple[Rig, TcpProxy, TcpProxy]]:
    """A rig whose broker and Redis are reached only through proxies."""
    kafka_port = free_port()
    kafka_proxy = TcpProxy(0, kafka_port)  # the broker's port is known once it is made
    kafka = ProxiedKafka(advertised_port=kafka_port)
    kafka_proxy.target_port = kafka.port
    redis_server = EmbeddedRedis()
    started: list = []
    try:
        started.append(kafka_proxy.start())
        started.append(kafka.start())
        kafka_proxy.target_port = kafka.port  # in case start() had to pick another port
        started.append(redis_server.start())
        redis_proxy = TcpProxy(redis_server.port).start()
        started.append(redis_proxy)
        bootstrap = f"127.0.0.1:{kafka_port}"
        topics = {name: f"nf-{name}-{time.monotonic_ns()}" for name in ("readings", "alerts",
                                                                      "dead", "scores")}
        create_topics(bootstrap, list(topics.values()))
        rig = Rig(bootstrap, f"redis://127.0.0.1:{redis_proxy.port}/0", topics,
                  serve_env(fast_consumer_config), tmp_path)
        try:
            yield rig, kafka_proxy, redis_proxy
        finally:
            for serve in rig.started:
                serve.stop()
            for reader in rig.readers:
                reader.close()
    finally:
        for thing in reversed(started):
            thing.close()


def run_through_a_fault(rig: Rig, model_dir: Path, table, fault, proxy: TcpProxy) -> None:
    """Publish a head, let serve catch up, publish the backlog, start ``fault()``, then check
    everything came out once the fault is over."""
    artifact = load_artifact(model_dir, device="cpu")
    window = artifact.detector.window
    want_ids = {a["alert_id"]: (a["entity"], a["type"], a["ts_ms"])
                for e in ENTITIES for a in expected_alerts(artifact, table, e, END_WINDOWS)}
    scored = score_series(artifact.detector, artifact.threshold, table.ts_ms, table.values,
                          StreamConfig(window, 1, artifact.max_gap_ms()))
    want_scores = {(e, int(t)): s for e in ENTITIES
                   for t, s in zip(table.ts_ms, scored.scores) if not np.isnan(s)}
    assert len(want_ids) == 4 * len(ENTITIES)
    alerts, scores = rig.reader("alerts"), rig.reader("scores")
    port = free_port()
    serve = rig.start(model_dir, "--scores-topic", rig.topics["scores"], "--max-batch", "10",
                      "--metrics-port", str(port))
    sampler = ReadySampler(port)
    try:
        head = rows(table, 0, HEAD)
        assert publish_all(head, ENTITIES, rig.bootstrap, rig.topics["readings"]) == len(
            ENTITIES) * HEAD
        head_keys = {(e, int(t)) for e in ENTITIES for t in head.ts_ms[window - 1:]}
        wait_until(lambda: {(r["entity"], r["ts_ms"]) for r in scores.poll()} >= head_keys,
                   "the head's scores", serve)
        wait_until(lambda: sampler.seen[-1:] == [200], "readiness before the fault", serve)
        before = len(sampler.seen)
        tail = rows(table, HEAD)
        assert publish_all(tail, ENTITIES, rig.bootstrap, rig.topics["readings"]) == len(
            ENTITIES) * len(tail.ts_ms)
        # the fault starts once serve is inside the backlog
        wait_until(lambda: any(r["ts_ms"] > head.ts_ms[-1] for r in scores.poll()),
                   "the backlog's first scores", serve)
        accepted = proxy.accepted
        fault()
        done_at_fault = {(d["entity"], d["ts_ms"]) for d in map(json.loads, (
            r.value for r in scores.records))}
        assert len(done_at_fault) < len(want_scores), "the backlog was done: not mid-stream"
        wait_until(lambda: not proxy.faulty, "the end of the fault", serve, timeout_s=30)
        wait_until(lambda: {(r["entity"], r["ts_ms"]) for r in scores.poll()} >= set(want_scores)
                   and set(a["alert_id"] for a in alerts.poll()) >= set(want_ids),
                   "every score and alert after the fault", serve, timeout_s=FAULT_WAIT_S)
        wait_until(lambda: sampler.seen[-1:] == [200], "readiness after the fault", serve)
    finally:
        sampler.close()
    assert 503 in sampler.seen[before:], "never went not-ready during the fault"
    assert proxy.accepted > accepted  # serve reconnected through the proxy after the fault
    got_alerts, got_scores = alerts.settle(), scores.settle()
    by_id: dict[str, tuple] = {}
    for a in got_alerts:  # nothing lost or invented; a copy is the same alert
        assert by_id.setdefault(a["alert_id"], (a["entity"], a["type"], a["ts_ms"], a["score"])
                                ) == (a["entity"], a["type"], a["ts_ms"], a["score"])
    assert {k: v[:3] for k, v in by_id.items()} == want_ids
    for r in got_scores:
        assert r["score"] == pytest.approx(want_scores[(r["entity"], r["ts_ms"])], abs=1e-5), r
    client = redis_client_from_url(rig.redis_url)
    try:
        states = stored_states(client, artifact, rig.prefix, ENTITIES)
    finally:
        client.close()
    for entity in ENTITIES:
        assert_window_is_the_last_readings(states[entity], table, window)
    assert serve.running and not tracebacks(serve.tail())


def test_broker_unreachable_for_10s_mid_backlog(proxied, model_dir, table):
    rig, kafka_proxy, _ = proxied
    run_through_a_fault(rig, model_dir, table, lambda: kafka_proxy.refuse(10), kafka_proxy)


def test_redis_cut_then_stalled_for_7s_mid_backlog(proxied, model_dir, table):
    rig, _, redis_proxy = proxied

    def fault() -> None:
        redis_proxy.cut()
        redis_proxy.stall(7)

    run_through_a_fault(rig, model_dir, table, fault, redis_proxy)
