"""The live half of ``ganwatch demo``: interleaved replay, topic readers, the worker's numbers.

Console output goes through ``say`` (this is CLI code): one lock keeps the alert reader's lines
and the main thread's progress lines whole.
"""

from __future__ import annotations

import heapq
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ganwatch import demo_report as report
from ganwatch.replay import messages

if TYPE_CHECKING:
    from connectors.file import Table

log = logging.getLogger(__name__)

ALERT_TYPES = ("anomaly_start", "anomaly_end", "anomaly")
_out_lock = threading.Lock()


def say(text: str = "") -> None:
    """One whole line to stdout, flushed at once (the demo is watched live)."""
    with _out_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def rows_from(table: Table, start: int) -> Table:
    """The rows of ``table`` from ``start`` on."""
    from connectors.file import Table

    return Table(table.channels, table.values[start:], table.ts_ms[start:],
                 list(table.timestamps[start:]), None, len(table.values) - start, table.source)


def replay_interleaved(tables: dict[str, Table], bootstrap: str, topic: str, speedup: float) -> int:
    """Publish every table's rows (key: entity) in timestamp order across tables, ``speedup``
    times faster than their own timing (0: as fast as possible); return how many were sent."""
    from connectors.kafka import KafkaSink

    streams = [((t, i, e, v) for t, v in messages(table, e, "iso", 0))
               for i, (e, table) in enumerate(tables.items())]
    total = sum(len(t.values) for t in tables.values())
    marks = {total * k // 4 for k in (1, 2, 3)}
    sink = KafkaSink(bootstrap, linger_ms=20)
    started, first_ts, sent = time.monotonic(), None, 0
    try:
        for ts, _, entity, value in heapq.merge(*streams):
            first_ts = ts if first_ts is None else first_ts
            wait = started + (ts - first_ts) / 1000 / speedup - time.monotonic() if speedup else 0
            if wait > 0:
                sink.flush()  # what is due goes out now, not after the pause
                time.sleep(wait)
            sink.send(topic, entity.encode(), value)
            sent += 1
            if sent in marks:
                say(f"      ... {100 * sent // total}% of {total} readings published")
        sink.flush()
    finally:
        sink.close()
    return sent


class TopicTail:
    """Reads a topic from the beginning in a thread (no consumer group) and keeps its JSON records."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 1,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       enable_auto_commit=False, auto_offset_reset="earliest",
                                       fetch_max_wait_ms=100)
        self._consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._on_record = on_record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tail-{topic}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=200)
            except Exception as exc:  # the broker went away: nothing more to read
                log.warning("reading stopped: %s", exc)
                return
            for batch in batches.values():
                for record in batch:
                    doc = json.loads(record.value)
                    with self._lock:
                        self._records.append(doc)
                    if self._on_record:
                        self._on_record(doc)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def count(self) -> int:
        with self._lock:
            return len(self._records)

    def __enter__(self) -> TopicTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close(autocommit=False)


def show_alert(alert: dict[str, Any]) -> None:
    say("      " + report.alert_line(alert))


def metric_sum(running: Any, name: str, **labels: str) -> float:
    """A worker metric from its Prometheus registry, summed over the label values not given."""
    registry = getattr(running.worker.metrics, "registry", None)
    total = 0.0
    for family in (registry.collect() if registry is not None else ()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_worker(running: Any, windows: int, alerts: TopicTail, scores: TopicTail,
                    timeout_s: float) -> bool:
    """Wait until the worker scored ``windows`` windows and the tails hold all it published."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running.thread.is_alive():
        if (metric_sum(running, "ganwatch_windows_scored_total") >= windows
                and alerts.count() >= metric_sum(running, "ganwatch_alerts_total")
                and scores.count() >= windows):
            return True
        time.sleep(0.2)
    say(f"      the worker did not catch up (stopped, or not within {timeout_s:.0f} s); "
        f"summarising what arrived")
    return False


def throughput(running: Any, published: int, seconds: float, caught_up: bool) -> dict[str, Any]:
    """Readings per second of the stream, and the scorer's own rate (windows per scoring second)."""
    readings = int(metric_sum(running, "ganwatch_readings_total"))
    scored = metric_sum(running, "ganwatch_windows_scored_total")
    scoring_s = metric_sum(running, "ganwatch_scoring_seconds_sum")
    return {
        "published": published, "readings": readings, "caught_up": caught_up,
        "stream_seconds": round(seconds, 2),
        "readings_per_s": round(readings / seconds, 1) if seconds else 0.0,
        "windows_scored": int(scored),
        "scoring_windows_per_s": round(scored / scoring_s, 1) if scoring_s else 0.0,
        "alerts": {t: int(metric_sum(running, "ganwatch_alerts_total", type=t)) for t in ALERT_TYPES},
        "dead_letters": int(metric_sum(running, "ganwatch_dead_letters_total")),
    }


def score_series(records: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score records of the scores topic as (ts_ms, score) arrays per entity, copies dropped."""
    by_entity: dict[str, dict[int, float]] = {}
    for r in records:
        score = r.get("score")
        by_entity.setdefault(r["entity"], {})[int(r["ts_ms"])] = np.nan if score is None else score
    out = {}
    for entity, points in by_entity.items():
        ts = np.array(sorted(points), dtype=np.int64)
        out[entity] = (ts, np.array([points[t] for t in ts.tolist()], dtype=np.float64))
    return out


def stop_worker(running: Any) -> None:
    """Stop the worker and release its clients (producer included), before the broker goes."""
    running.shutdown(timeout_s=30)


def keep_running_help(bootstrap: str, redis_url: str, metrics_port: int, topics: dict[str, str],
                      table: Table, csv: Path, window: int) -> str:
    """How to talk to the running demo with any Kafka client."""
    example = {"entity": "pump-99", "ts": report.iso(int(table.ts_ms[-1]) + 1000),
               "values": dict(zip(table.channels, table.values[-1].tolist()))}
    reading = json.dumps(example)
    return f"""
Broker, Redis and worker keep running. Send readings and read alerts with any Kafka client:
  bootstrap servers  {bootstrap}
  input topic        {topics['input']}  (key: entity name, value: a JSON reading as below)
  alerts topic       {topics['alerts']}
  dead letters       {topics['dead_letter']}
  window scores      {topics['scores']}
  Redis (state)      {redis_url}
  metrics / health   http://127.0.0.1:{metrics_port}/metrics  /healthz  /readyz
A reading (newer than its entity's last one; a window holds {window} readings):
  {reading}
Replay a simulated pump under a new name:
  ganwatch replay --data {csv} --timestamp-column ts --exclude-columns anomaly \\
      --bootstrap-servers {bootstrap} --topic {topics['input']} --entity pump-99 --rate 50
With kafka-python:
  import json; from kafka import KafkaConsumer, KafkaProducer
  reading = {reading}
  p = KafkaProducer(bootstrap_servers="{bootstrap}")
  p.send("{topics['input']}", key=b"pump-99", value=json.dumps(reading).encode()); p.flush()
  for m in KafkaConsumer("{topics['alerts']}", bootstrap_servers="{bootstrap}",
                         auto_offset_reset="earliest"):
      print(json.loads(m.value))
Press Ctrl-C to stop everything."""
