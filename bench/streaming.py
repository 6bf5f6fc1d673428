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
- ``latency``: event-to-alert latency at a fixed input rate (``bench.latency``).

Torch runs with the thread count ``ganwatch serve`` uses (its ``torch_threads`` setting, applied by
the same ``ganwatch.runtime.apply_torch_threads``), the garbage collector tuned as serve tunes it
(``ganwatch.runtime.tune_gc``), and the worker with serve's ``max_batch``, ``max_wait_ms`` and
``max_partition_fetch_bytes`` defaults and its asynchronous commits, so the figures are the ones
serve would see (``bench.rig``). The raw consumer uses the same batch and fetch sizes, and pure
scoring the same batch size.

Throughput runs use a threshold no window reaches (no alerts), so they measure the loop and the
model rather than the alerts topic. The consumer timings are the tests' fast ones (tansu holds a
group join for about session_timeout/2); the join is outside every measured interval.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.latency import latency
from bench.rig import (CONSUMER, DEADLINE_S, MAX_WAIT_MS, SERVE_FETCH_BYTES, SERVE_MAX_BATCH,
                       SERVE_TORCH_THREADS, T0_MS, Rig, reading, run_worker,
                       stop_worker)
from bench.scoring import N_CHANNELS, default_detector, rate
from connectors.embedded import EmbeddedKafka, EmbeddedRedis
from connectors.kafka import create_topics
from detector.model import resolve_device
from detector.score import Threshold
from ganwatch.runtime import SERVE_GC_THRESHOLDS, apply_torch_threads, restore_gc, tune_gc


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
