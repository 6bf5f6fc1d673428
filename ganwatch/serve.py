"""``ganwatch serve``: wires Kafka, Redis, Prometheus and the model into the worker loop."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from detector.artifact import load_artifact
from detector.message import FieldNames
from detector.process import ProcessDetector
from detector.reload import watch_file
from detector.score import Detector, Threshold
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig, describe
from ganwatch.runtime import apply_torch_threads, configure_logging, restore_torch_threads, tune_gc
from ganwatch.security import kafka_security
from ganwatch.settings import Settings

if TYPE_CHECKING:
    from connectors.prometheus import HealthServer

log = logging.getLogger(__name__)


class StartupError(ValueError):
    """A server named in the settings cannot be reached or bound (one line, exit status 2)."""


def state_namespace(channels: list[str], window: int) -> str:
    """Models with other channels keep their windows apart; a retrained model shares them."""
    digest = hashlib.sha256(("\x1f".join(channels) + f"|{window}").encode()).hexdigest()
    return f"w{window}-{digest[:10]}"


@dataclass
class Running:
    """A worker and what it needs to stop cleanly (``serve`` itself, the demo and tests use this)."""

    worker: Worker
    stop: threading.Event
    thread: threading.Thread | None  # None: the caller runs ``worker.run(stop)`` itself
    health: HealthServer | None
    store_client: Any
    torch_threads_before: int | None = None  # put back on shutdown (in-process workers)
    closed: bool = False

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the loop, then flush and close the producer, leave the consumer group (unless the
        loop did already), close the health server and the Redis client, and give torch back its
        thread count. Idempotent."""
        self.stop.set()
        if self.closed:
            return
        self.closed = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        if self.thread is not None and self.thread.is_alive():
            # kafka-python's consumer is not thread-safe: never close it under a running poll
            log.warning("worker did not stop within %.0fs; leaving its consumer open", timeout_s)
        elif not getattr(self.worker.source, "closed", False):  # the loop closes it on stop
            _close("Kafka consumer", self.worker.source)
        _close("Kafka producer", self.worker.sink)  # flushes first; alerts must not be dropped
        if self.health is not None:
            _close("health server", self.health, "stop")
        _close("Redis client", self.store_client)
        _close("scoring process", self.worker.detector)
        if self.torch_threads_before is not None:
            restore_torch_threads(self.torch_threads_before)


def _close(what: str, obj: object, method: str = "close") -> None:
    close = getattr(obj, method, None)
    if close is None:
        return
    try:
        close()
    except Exception as exc:  # shutting down: report, and release the rest anyway
        log.warning("closing the %s failed: %s", what, describe(exc))


def build_worker(settings: Settings, stop: threading.Event) -> Running:
    """Create the connectors named by ``settings`` and the worker; the loop is not started.

    Applies ``torch_threads`` first (process-wide), so every path that runs a worker scores with
    the same thread count. If a later step fails, whatever was created is closed again.
    """
    with contextlib.ExitStack() as undo:
        running = _build(settings, stop, undo)
        undo.pop_all()  # from here on Running.shutdown releases everything
    return running


def _build(settings: Settings, stop: threading.Event, undo: contextlib.ExitStack) -> Running:
    from connectors.kafka import KafkaSink, KafkaSource
    from connectors.prometheus import HealthServer, PrometheusMetrics
    from connectors.redis_store import (
        RedisStateStore, StoreUnavailable, redact_url, redis_client_from_url,
    )
    from kafka.errors import KafkaError

    threads_before = apply_torch_threads(settings.torch_threads)
    undo.callback(restore_torch_threads, threads_before)
    model_dir = Path(settings.model)
    first = load_artifact(model_dir, device=settings.device)
    max_gap_ms = first.max_gap_ms(settings.max_gap_s)  # a reloaded model keeps the stream rules

    def loader() -> tuple[Detector, Threshold]:
        nonlocal first
        if first is not None:
            artifact, first = first, None
        else:
            artifact = load_artifact(model_dir, device=settings.device)
            log.info("loaded model %s", artifact.meta["model_version"])
        if settings.pipeline == "off":
            return artifact.detector, artifact.threshold
        # pipelined: the model scores in its own process, so polling and parsing overlap it
        return ProcessDetector(model_dir, artifact.detector, settings.device,
                               settings.torch_threads, timeout_s=settings.score_timeout_s
                               ), artifact.threshold

    channels, window = list(first.detector.channels), first.detector.window
    security = kafka_security(settings)
    compression = None if settings.compression_type == "none" else settings.compression_type
    rebalance: dict[str, Worker] = {}  # the consumer exists before the worker its callbacks call

    def revoked(partitions: list[tuple[str, int]]) -> None:
        if "worker" in rebalance:
            rebalance["worker"].on_revoked(partitions)

    def assigned(partitions: list[tuple[str, int]]) -> None:
        if "worker" in rebalance:
            rebalance["worker"].on_assigned(partitions)

    try:
        source = KafkaSource(
            settings.input_topics, settings.group_id, settings.bootstrap_servers, security,
            on_revoked=revoked, on_assigned=assigned,
            max_poll_records=settings.max_batch, session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            async_commit=settings.pipeline,  # the pipelined loop's commits overlap the next batch
        )
        undo.callback(_close, "Kafka consumer", source)
        sink = KafkaSink(settings.bootstrap_servers, security, compression_type=compression,
                         max_request_size=max(1 << 20, settings.max_dead_letter_bytes + 65536))
        undo.callback(_close, "Kafka producer", sink)
    except KafkaError as exc:  # kafka-python gives up bootstrapping: one line, not a traceback
        reason = str(exc) or type(exc).__name__
        raise StartupError(f"cannot connect to Kafka at {settings.bootstrap_servers}: {reason}"
                           ) from None
    try:
        client = redis_client_from_url(
            settings.redis_url,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            ssl_ca=settings.redis_ssl_ca,
        )
    except StoreUnavailable as exc:  # a cluster client must learn the slot layout at start
        raise StartupError(f"cannot reach the Redis Cluster at {redact_url(settings.redis_url)}: "
                           f"{exc}") from None
    undo.callback(_close, "Redis client", client)
    store = RedisStateStore(client, len(channels), prefix=settings.state_prefix,
                            namespace=state_namespace(channels, window), ttl_s=settings.state_ttl_s)
    metrics = PrometheusMetrics()
    config = WorkerConfig(
        stream=StreamConfig(window, settings.stride, max_gap_ms),
        alert_mode=settings.alert_mode, episode_end_windows=settings.episode_end_windows,
        missing_channel=settings.missing_channel,
        fields=FieldNames(settings.entity_field, settings.ts_field, settings.values_field),
        alerts_topic=settings.alerts_topic, dead_letter_topic=settings.dead_letter_topic,
        scores_topic=settings.scores_topic, max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms, pipeline=settings.pipeline == "on",
        max_future_s=settings.max_future_s, max_retries=settings.max_retries,
        max_dead_letter_bytes=settings.max_dead_letter_bytes,
        score_timeout_s=settings.score_timeout_s, live_timeout_s=settings.live_timeout_s,
    )
    worker = Worker(source, sink, store, loader, config, metrics)
    rebalance["worker"] = worker
    health = None
    if settings.metrics_port:
        try:
            health = HealthServer(
                settings.metrics_host, settings.metrics_port, metrics,
                ready_fn=lambda: worker.ready, live_fn=lambda: worker.alive,
            ).start()
        except OSError as exc:  # port taken, host not local...
            raise StartupError(f"cannot serve metrics on {settings.metrics_host}:"
                               f"{settings.metrics_port}: {exc.strerror or exc}") from None
    if settings.reload_poll_s:
        watch_file(model_dir / "model.json", worker.request_reload, stop, settings.reload_poll_s)
    return Running(worker, stop, None, health, client, threads_before)


def start_worker(settings: Settings) -> Running:
    """Start a worker in a background thread (the demo and integration tests use this)."""
    stop = threading.Event()
    running = build_worker(settings, stop)
    running.thread = threading.Thread(target=running.worker.run, args=(stop,),
                                      name="ganwatch-worker", daemon=True)
    running.thread.start()
    return running


def load_serve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from the parsed command line (unset flags are None), ``env`` and the config file."""
    cli = {k: v for k, v in vars(args).items()
           if v is not None and k not in ("func", "command", "config")}
    return Settings.load(cli, env, getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_serve_settings(args, os.environ)
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secrets())
    unknown = Settings.unknown_env(os.environ)
    if unknown:
        log.warning("ignoring unknown settings variables: %s", ", ".join(unknown))
    log.info("starting worker with %s", settings.redacted())
    stop = threading.Event()
    running = build_worker(settings, stop)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: running.worker.request_reload())
    tune_gc()  # after start-up: the model and clients are frozen out of later collections
    try:
        running.worker.run(stop)  # returns after the last batch is flushed and committed
    finally:
        running.shutdown()
    log.info("worker stopped")
    return 0
