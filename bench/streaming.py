"""Streaming throughput and latency, in one run on the embedded broker (tansu) and Redis.

Figures (all from the same broker, Redis and default-shaped model):

- ``raw_consume``: kafka-python alone reading the pre-produced input topic (messages/s), the
  ceiling for anything that consumes it.
- ``worker_stride_10`` / ``worker_stride_1``: ``detector.worker.Worker`` in-process with the real
  ``KafkaSource``, ``KafkaSink`` and ``RedisStateStore`` on the same topic (a fresh group and Redis
  namespace each), readings/s from the start of the first poll that returned records to the commit
  of the last one. At stride 10 scoring is cheap, so this is the loop's own cost (parse, Redis,
  produce, commit); at stride 1 every reading completes a window and scoring dominates.
- ``pure_scoring``: ``bench.scoring.rate`` at the worker's batch size (windows/s).
- ``one_batch_at_a_time``: the worker figures and latency again with ``pipeline`` off (each batch
  polled, scored and committed before the next is polled), run interleaved with the pipelined
  ones; ``pipeline_speedup_*`` are pipelined / one-at-a-time.
- ``latency``: readings replayed at a fixed rate, stamped with the wall clock when sent; the worker
  alerts per window (``--alert-mode window``) with a threshold that about half the windows exceed;
  latency = ``detected_at`` - reading timestamp, p50 and p99 (``flushed_*``: up to the producer
  flush that delivered the alert, from the worker's ``event_to_alert_seconds`` histogram).

Torch runs with the thread count ``ganwatch serve`` uses (its ``torch_threads`` setting, applied by
the same ``ganwatch.runtime.apply_torch_threads``), the garbage collector tuned as serve tunes it
(``ganwatch.runtime.tune_gc``), and the worker with serve's ``max_batch`` and ``max_wait_ms``
defaults, so the figures are the ones serve would see. The raw consumer and pure
scoring use the same batch size.

Throughput runs use a threshold no window reaches (no alerts), so they measure the loop and the
model rather than the alerts topic. The consumer timings are the tests' fast ones (tansu holds a
group join for about session_timeout/2); the join is outside every measured interval.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from datetime import datetime
from typing import Callable

import numpy as np
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.scoring import N_CHANNELS, default_detector, rate
from connectors.embedded import EmbeddedKafka, EmbeddedRedis
from connectors.kafka import KafkaSink, KafkaSource, create_topics
from connectors.redis_store import RedisStateStore, redis_client_from_url
from detector.artifact import load_artifact, save_artifact
from detector.metric import InMemoryMetrics
from detector.model import LstmGanDetector, resolve_device
from detector.process import ProcessDetector
from detector.protocol import Message
from detector.score import Threshold
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig
from ganwatch.runtime import SERVE_GC_THRESHOLDS, apply_torch_threads, restore_gc, tune_gc
from ganwatch.settings import Settings

CONSUMER = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "fetch_max_wait_ms": 100}
MAX_WAIT_MS: int = Settings.model_fields["max_wait_ms"].default  # serve's poll wait
T0_MS = 1_700_000_000_000
DEADLINE_S = 120.0  # any single phase; a hung broker must not hang the benchmark
SERVE_TORCH_THREADS: int = Settings.model_fields["torch_threads"].default
SERVE_MAX_BATCH: int = Settings.model_fields["max_batch"].default
SERVE_FETCH_BYTES: int = Settings.model_fields["max_partition_fetch_bytes"].default


def reading(entity: str, ts_ms: int, row: np.ndarray) -> bytes:
    values = {f"c{j}": round(float(v), 4) for j, v in enumerate(row)}
    return json.dumps({"entity": entity, "ts": ts_ms, "values": values},
                      separators=(",", ":")).encode()


def produce_readings(bootstrap: str, topic: str, n: int, entities: int, seed: int = 0) -> None:
    """``n`` readings round-robin over ``entities``, one second apart per entity."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, N_CHANNELS))
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    try:
        for i in range(n):
            entity = f"e{i % entities}"
            producer.send(topic, key=entity.encode(),
                          value=reading(entity, T0_MS + 1000 * (i // entities), values[i]))
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def raw_consume_rate(bootstrap: str, topic: str, n: int, max_records: int) -> dict:
    """kafka-python alone, no group (assign + seek to the beginning), ``max_records`` per poll."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             fetch_max_wait_ms=CONSUMER["fetch_max_wait_ms"],
                             max_partition_fetch_bytes=SERVE_FETCH_BYTES,
                             max_poll_records=max_records)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got, first, last = 0, None, None
        deadline = time.monotonic() + DEADLINE_S
        while got < n and time.monotonic() < deadline:
            started = time.perf_counter()
            batch = consumer.poll(timeout_ms=500, max_records=max_records)
            count = sum(len(records) for records in batch.values())
            if count:
                first = started if first is None else first
                got += count
                last = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    if got < n or first is None or last is None:
        raise RuntimeError(f"raw consumer read {got} of {n} messages before the deadline")
    return {"messages": got, "seconds": round(last - first, 3),
            "messages_per_second": round(got / (last - first), 1)}


class TimedSource:
    """Wraps a ``Source``: hands out exactly ``n`` records; notes the first poll that returned
    records and the commit of the ``n``-th."""

    def __init__(self, make_source: Callable[[Callable[..., None]], KafkaSource], n: int) -> None:
        self.n = n
        self.consumed, self.first, self.last = 0, None, None
        self.done, self.assigned = threading.Event(), threading.Event()
        self.source = make_source(lambda parts: self.assigned.set())

    def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        left = self.n - self.consumed
        if left <= 0:
            time.sleep(timeout_ms / 1000)
            return []
        started = time.perf_counter()
        out = self.source.poll(min(max_records, left), timeout_ms)
        if out and self.first is None:
            self.first = started
        self.consumed += len(out)
        return out

    def commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        self.source.commit(offsets)
        # one partition from offset 0: the committed offsets count the records done
        done = self.consumed if offsets is None else sum(offsets.values())
        if done >= self.n and self.last is None:
            self.source.settle()  # an asynchronous last commit counts once the broker has it
            self.last = time.perf_counter()
            self.done.set()

    def lag(self) -> int | None:
        return self.source.lag()

    def close(self) -> None:
        self.source.close()


class Rig:
    """Builds workers on the embedded servers, each with its own group and Redis namespace."""

    def __init__(self, kafka: EmbeddedKafka, redis_server: EmbeddedRedis,
                 detector: LstmGanDetector, max_batch: int) -> None:
        self.kafka, self.detector, self.max_batch = kafka, detector, max_batch
        self.client = redis_client_from_url(redis_server.url)
        self._tmp = tempfile.TemporaryDirectory(prefix="ganwatch-bench-")
        self._processes: dict[int, ProcessDetector] = {}

    def process_detector(self) -> ProcessDetector:
        """The same model in a scoring process with torch's current thread count, as serve's
        pipelined loop runs it."""
        threads = torch.get_num_threads()
        if threads not in self._processes:
            d = self.detector
            extra = {"slow_channels": [c for c, s in zip(d.channels, d.slow) if s]
                     if d.slow is not None else [], "center_inputs": d.center_inputs}
            if d.level is not None:
                extra["level_model"] = d.level.to_dict()
            meta = save_artifact(self._tmp.name, d.networks, d.scaler, d.normaliser,
                                 Threshold(0.0), d.channels, extra=extra)
            inline = load_artifact(self._tmp.name, device=str(d.device)).detector
            assert inline.version == meta["model_version"]
            self._processes[threads] = ProcessDetector(self._tmp.name, inline, str(d.device),
                                                       threads)
        return self._processes[threads]

    def worker(self, topic: str, n: int, stride: int, threshold: Threshold,
               alerts_topic: str, pipeline: bool = True) -> tuple[Worker, TimedSource, KafkaSink]:
        group = f"bench-{uuid.uuid4().hex}"
        source = TimedSource(lambda on_assigned: KafkaSource(
            [topic], group, self.kafka.bootstrap, max_poll_records=self.max_batch,
            on_assigned=on_assigned, async_commit=pipeline, **CONSUMER,  # as serve sets them
            max_partition_fetch_bytes=SERVE_FETCH_BYTES,
        ), n)
        sink = KafkaSink(self.kafka.bootstrap)
        store = RedisStateStore(self.client, N_CHANNELS, prefix="bench",
                                namespace=uuid.uuid4().hex, ttl_s=3600)
        config = WorkerConfig(
            StreamConfig(self.detector.window, stride), alert_mode="window",
            alerts_topic=alerts_topic, dead_letter_topic=alerts_topic + "-dead",
            max_batch=self.max_batch, max_wait_ms=MAX_WAIT_MS, lag_interval_s=3600,
            pipeline=pipeline,
        )
        detector = self.process_detector() if pipeline else self.detector
        worker = Worker(source, sink, store, lambda: (detector, threshold), config,
                        InMemoryMetrics())
        return worker, source, sink

    def close(self) -> None:
        self.client.close()
        for process in self._processes.values():
            process.close()
        self._tmp.cleanup()


def run_worker(worker: Worker) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="bench-worker", daemon=True)
    thread.start()
    return thread, stop


def stop_worker(thread: threading.Thread, stop: threading.Event, sink: KafkaSink) -> None:
    stop.set()
    thread.join(DEADLINE_S)
    sink.close()


def worker_rate(rig: Rig, topic: str, n: int, stride: int, pipeline: bool = True) -> dict:
    worker, source, sink = rig.worker(topic, n, stride, Threshold(float("inf")), f"{topic}-alerts",
                                      pipeline)
    thread, stop = run_worker(worker)
    try:
        if not source.done.wait(DEADLINE_S):
            raise RuntimeError(f"worker consumed {source.consumed} of {n} before the deadline")
    finally:
        stop_worker(thread, stop, sink)
    seconds = source.last - source.first
    metrics = worker.metrics
    return {
        "stride": stride, "readings": n, "seconds": round(seconds, 3),
        "readings_per_second": round(n / seconds, 1),
        "windows_scored": int(metrics.count("windows_scored_total")),
        "windows_per_second": round(metrics.count("windows_scored_total") / seconds, 1),
    }


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


def measure(rig: Rig, topic: str, readings: int, stride_one_readings: int, raw_rate: float,
            latency_rate: float, latency_seconds: float, latency_entities: int,
            compare_pipeline: bool = False) -> dict:
    """Worker rates, pure scoring and latency with the current torch thread count; with
    ``compare_pipeline`` the worker figures again with ``pipeline`` off (``one_batch_at_a_time``),
    interleaved with the pipelined runs so both see the same machine."""
    out: dict = {"torch_threads": torch.get_num_threads()}
    # stride 1 reads the first stride_one_readings of the same topic again, with a fresh group
    n_one = min(stride_one_readings, readings)
    modes = (True, False) if compare_pipeline else (True,)
    runs = {mode: {"worker_stride_10": worker_rate(rig, topic, readings, 10, mode)}
            for mode in modes}
    for mode in modes:
        runs[mode]["worker_stride_1"] = worker_rate(rig, topic, n_one, 1, mode)
    out.update(runs[True])
    out["pure_scoring"] = {"batch": rig.max_batch,
                           "windows_per_second": round(rate(rig.detector, rig.max_batch), 1)}
    for mode in modes:
        runs[mode]["latency"] = latency(rig, latency_rate, latency_seconds, latency_entities, 1,
                                        mode)
    out["latency"] = runs[True]["latency"]
    scoring = out["pure_scoring"]["windows_per_second"]
    for figures in runs.values():
        figures["ratio_e2e_to_raw_stride_10"] = round(
            figures["worker_stride_10"]["readings_per_second"] / raw_rate, 3)
        figures["ratio_e2e_to_scoring_stride_1"] = round(
            figures["worker_stride_1"]["windows_per_second"] / scoring, 3)
    out["ratio_e2e_to_raw_stride_10"] = runs[True]["ratio_e2e_to_raw_stride_10"]
    out["ratio_e2e_to_scoring_stride_1"] = runs[True]["ratio_e2e_to_scoring_stride_1"]
    if compare_pipeline:
        out["one_batch_at_a_time"] = runs[False]
        out["pipeline_speedup_stride_10"] = round(
            out["worker_stride_10"]["readings_per_second"]
            / runs[False]["worker_stride_10"]["readings_per_second"], 3)
        out["pipeline_speedup_stride_1"] = round(
            out["worker_stride_1"]["windows_per_second"]
            / runs[False]["worker_stride_1"]["windows_per_second"], 3)
    return out


def run(readings: int = 100_000, entities: int = 50, stride_one_readings: int = 100_000,
        max_batch: int = SERVE_MAX_BATCH, latency_rate: float = 200.0, latency_seconds: float = 10.0,
        latency_entities: int = 10, device: str = "auto", torch_threads: int = SERVE_TORCH_THREADS,
        compare_default_threads: bool = True, quick: bool = False) -> dict:
    """All the figures of the module docstring, with e2e/raw (stride 10) and e2e/scoring (stride 1).

    The worker, scoring and latency figures use ``torch_threads`` as serve does (0 = torch's
    default). With ``compare_default_threads`` on a CPU whose torch default differs, they are
    measured again with torch's default thread count (``torch_default_threads``): LSTM inference
    is many tiny parallel regions, and on a small machine that also runs the broker and Redis,
    waiting for a descheduled second thread can cost more than it gains.
    """
    if quick:
        readings, entities, stride_one_readings, latency_seconds = 5_000, 20, 2_000, 5.0
    dev = resolve_device(device)
    detector = default_detector(str(dev))
    out: dict = {"device": str(dev), "window": detector.window, "channels": N_CHANNELS,
                 "max_batch": max_batch, "max_wait_ms": MAX_WAIT_MS, "entities": entities,
                 "consumer": dict(CONSUMER), "gc_thresholds": list(SERVE_GC_THRESHOLDS)}
    default_threads = torch.get_num_threads()
    with EmbeddedKafka() as kafka, EmbeddedRedis() as redis_server:
        rig = Rig(kafka, redis_server, detector, max_batch)
        try:
            topic = f"bench-readings-{uuid.uuid4().hex}"
            create_topics(kafka.bootstrap, [topic, f"{topic}-alerts", f"{topic}-alerts-dead"])
            started = time.perf_counter()
            produce_readings(kafka.bootstrap, topic, readings, entities)
            out["produce_seconds"] = round(time.perf_counter() - started, 3)
            # the raw reads as well as the worker run with the collector tuned as serve tunes it
            gc_before = tune_gc()
            try:
                out.update(_measure_all(rig, topic, readings, stride_one_readings, max_batch,
                                        latency_rate, latency_seconds, latency_entities,
                                        torch_threads, default_threads,
                                        compare_default_threads and dev.type == "cpu"))
            finally:
                restore_gc(gc_before)
        finally:
            torch.set_num_threads(default_threads)
            rig.close()
    return out


def _measure_all(rig: Rig, topic: str, readings: int, stride_one_readings: int, max_batch: int,
                 latency_rate: float, latency_seconds: float, latency_entities: int,
                 torch_threads: int, default_threads: int, compare_default_threads: bool) -> dict:
    out: dict = {}
    # a read takes a fraction of a second: the median of three steadies the reference
    runs = sorted((raw_consume_rate(rig.kafka.bootstrap, topic, readings, max_batch)
                   for _ in range(3)), key=lambda r: r["messages_per_second"])
    out["raw_consume"] = {**runs[1], "runs_messages_per_second":
                          [r["messages_per_second"] for r in runs]}
    args = (readings, stride_one_readings, out["raw_consume"]["messages_per_second"], latency_rate,
            latency_seconds, latency_entities)
    apply_torch_threads(torch_threads)
    out.update(measure(rig, topic, *args, compare_pipeline=True))
    if compare_default_threads and torch.get_num_threads() != default_threads:
        torch.set_num_threads(default_threads)
        out["torch_default_threads"] = measure(rig, topic, *args)
    return out
