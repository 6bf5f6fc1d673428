"""Event-to-alert latency of the streaming worker at a fixed input rate (see ``bench.streaming``).

Readings are replayed at a fixed rate, stamped with the wall clock when sent; the worker alerts
per window (``--alert-mode window``) with a threshold that about half the windows exceed;
latency = ``detected_at`` - reading timestamp, p50 and p99 (``flushed_*``: up to the producer
flush that delivered the alert, from the worker's ``event_to_alert_seconds`` histogram).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.rig import DEADLINE_S, Rig, reading, run_worker, stop_worker
from bench.scoring import N_CHANNELS
from connectors.kafka import create_topics
from detector.model import LstmGanDetector
from detector.score import Threshold



def median_threshold(detector: LstmGanDetector, seed: int = 1) -> Threshold:
    """A threshold about half of random windows reach, so alerts are frequent."""
    windows = np.random.default_rng(seed).normal(size=(512, detector.window, N_CHANNELS))
    return Threshold(float(np.median(detector.score(windows).scores)), "bench: median")


def paced_replay(bootstrap: str, topic: str, rate_per_s: float, seconds: float,
                 entities: int) -> int:
    """Send readings at ``rate_per_s`` (round-robin over entities), each stamped when sent."""
    rng = np.random.default_rng(2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    last = [0] * entities
    sent, started = 0, time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate_per_s) + 1
            while sent < due:
                k = sent % entities
                ts = max(int(time.time() * 1000), last[k] + 1)  # strictly increasing per entity
                last[k] = ts
                producer.send(topic, key=f"e{k}".encode(),
                              value=reading(f"e{k}", ts, rng.normal(size=N_CHANNELS)))
                sent += 1
            time.sleep(0.005)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return sent


def read_topic(bootstrap: str, topic: str, want: int) -> list[dict]:
    """Every record of a one-partition topic (JSON), polling until ``want`` or a quiet deadline."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[dict] = []
        deadline = time.monotonic() + 30
        while len(out) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        consumer.close(autocommit=False)


def iso_to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def latency(rig: Rig, rate_per_s: float, seconds: float, entities: int, stride: int,
            pipeline: bool = True) -> dict:
    topic, alerts = (f"bench-paced-{uuid.uuid4().hex}", f"bench-alerts-{uuid.uuid4().hex}")
    create_topics(rig.kafka.bootstrap, [topic, alerts, alerts + "-dead"])
    threshold = median_threshold(rig.detector)
    worker, source, sink = rig.worker(topic, 1 << 62, stride, threshold, alerts, pipeline)
    thread, stop = run_worker(worker)
    try:
        if not source.assigned.wait(DEADLINE_S):  # the group join stays out of the latencies
            raise RuntimeError("the latency worker never got its partition")
        sent = paced_replay(rig.kafka.bootstrap, topic, rate_per_s, seconds, entities)
        deadline = time.monotonic() + DEADLINE_S
        while source.consumed < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the last batch's flush
    finally:
        stop_worker(thread, stop, sink)
    published = int(worker.metrics.count("alerts_total", type="anomaly"))
    docs = read_topic(rig.kafka.bootstrap, alerts, published)
    lat = np.array([iso_to_ms(a["detected_at"]) - a["ts_ms"] for a in docs], dtype=np.float64)
    if not len(lat):
        raise RuntimeError("no alerts to measure latency on")
    # the worker's own histogram: reading timestamp to the producer flush that delivered the alert
    flushed = 1000 * np.asarray(worker.metrics.observations.get("event_to_alert_seconds", [0.0]))
    return {
        "rate_readings_per_second": rate_per_s, "seconds": seconds, "entities": entities,
        "stride": stride, "readings": sent,
        "windows_scored": int(worker.metrics.count("windows_scored_total")), "alerts": len(docs),
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()), "flushed_p50_ms": round(float(np.percentile(flushed, 50)), 1),
        "flushed_p99_ms": round(float(np.percentile(flushed, 99)), 1),
    }
