"""The streaming benchmark's rig: workers on the embedded broker and Redis with serve's settings.

``Rig`` builds each worker with the real ``KafkaSource``, ``KafkaSink`` and ``RedisStateStore``, its
own group and Redis namespace; ``TimedSource`` times the first poll that returned records to the
commit of the last one.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from typing import Callable

import numpy as np
import torch

from bench.scoring import N_CHANNELS
from connectors.embedded import EmbeddedKafka, EmbeddedRedis
from connectors.kafka import KafkaSink, KafkaSource
from connectors.redis_store import RedisStateStore, redis_client_from_url
from detector.artifact import load_artifact, save_artifact
from detector.metric import InMemoryMetrics
from detector.model import LstmGanDetector
from detector.process import ProcessDetector
from detector.protocol import Message
from detector.score import Threshold
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig
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
            meta = save_artifact(self._tmp.name, d.networks, d.spec, Threshold(0.0), {})
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
