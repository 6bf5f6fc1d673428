"""``ganwatch serve``: wires Kafka, Redis, Prometheus and the model into the worker loop."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from detector.artifact import load_artifact
from detector.message import FieldNames
from detector.score import Detector, Threshold
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig, watch_file
from ganwatch.settings import Settings, add_serve_arguments

log = logging.getLogger(__name__)


class StartupError(ValueError):
    """A server named in the settings cannot be reached or bound (one line, exit status 2)."""


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="consume readings from Kafka and publish alerts")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def state_namespace(channels: list[str], window: int) -> str:
    """Models with other channels keep their windows apart; a retrained model shares them."""
    digest = hashlib.sha256(("\x1f".join(channels) + f"|{window}").encode()).hexdigest()
    return f"w{window}-{digest[:10]}"


@dataclass
class Running:
    """A started worker and what it needs to stop cleanly (also used by the demo and tests)."""

    worker: Worker
    stop: threading.Event
    thread: threading.Thread | None
    health: object | None
    store_client: object

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        if self.health is not None:
            self.health.stop()
        close = getattr(self.store_client, "close", None)
        if close:
            close()


def build_worker(settings: Settings, stop: threading.Event) -> tuple[Worker, object, object]:
    """Create the connectors named by ``settings``; return (worker, health server, redis client)."""
    from connectors.kafka import KafkaSink, KafkaSource, security_config
    from connectors.prometheus import HealthServer, PrometheusMetrics
    from connectors.redis_store import RedisStateStore, redis_client_from_url
    from kafka.errors import KafkaError

    model_dir = Path(settings.model)
    first = load_artifact(model_dir, device=settings.device)

    def loader() -> tuple[Detector, Threshold]:
        nonlocal first
        if first is not None:
            artifact, first = first, None
        else:
            artifact = load_artifact(model_dir, device=settings.device)
            log.info("loaded model %s", artifact.meta["model_version"])
        return artifact.detector, artifact.threshold

    channels, window = list(first.detector.channels), first.detector.window
    security = security_config(
        settings.security_protocol, sasl_mechanism=settings.sasl_mechanism,
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        ssl_cafile=settings.ssl_cafile, ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    compression = None if settings.compression_type == "none" else settings.compression_type
    source = None
    try:
        source = KafkaSource(
            settings.input_topics, settings.group_id, settings.bootstrap_servers, security,
            max_poll_records=settings.max_batch, session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        sink = KafkaSink(settings.bootstrap_servers, security, compression_type=compression)
    except KafkaError as exc:  # kafka-python gives up bootstrapping: one line, not a traceback
        if source is not None:
            source.close()
        reason = str(exc) or type(exc).__name__
        where = settings.bootstrap_servers
        raise StartupError(f"cannot connect to Kafka at {where}: {reason}") from None
    client = redis_client_from_url(
        settings.redis_url,
        password=settings.redis_password.get_secret_value() if settings.redis_password else None,
        ssl_ca=settings.redis_ssl_ca,
    )
    store = RedisStateStore(client, len(channels), prefix=settings.state_prefix,
                            namespace=state_namespace(channels, window), ttl_s=settings.state_ttl_s)
    metrics = PrometheusMetrics()
    config = WorkerConfig(
        stream=StreamConfig(window, settings.stride, int(settings.max_gap_s * 1000) or None),
        alert_mode=settings.alert_mode, episode_end_windows=settings.episode_end_windows,
        missing_channel=settings.missing_channel,
        fields=FieldNames(settings.entity_field, settings.ts_field, settings.values_field),
        alerts_topic=settings.alerts_topic, dead_letter_topic=settings.dead_letter_topic,
        scores_topic=settings.scores_topic, max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
    )
    worker = Worker(source, sink, store, loader, config, metrics)
    health = None
    if settings.metrics_port:
        try:
            health = HealthServer(
                settings.metrics_host, settings.metrics_port, metrics,
                ready_fn=lambda: worker.ready, live_fn=lambda: worker.alive,
            ).start()
        except OSError as exc:  # port taken, host not local...
            source.close()
            sink.close()
            client.close()
            raise StartupError(f"cannot serve metrics on {settings.metrics_host}:"
                               f"{settings.metrics_port}: {exc.strerror or exc}") from None
    if settings.reload_poll_s:
        watch_file(model_dir / "model.json", worker.request_reload, stop, settings.reload_poll_s)
    return worker, health, client


def start_worker(settings: Settings) -> Running:
    """Start a worker in a background thread (the demo and integration tests use this)."""
    stop = threading.Event()
    worker, health, client = build_worker(settings, stop)
    thread = threading.Thread(target=worker.run, args=(stop,), name="ganwatch-worker", daemon=True)
    thread.start()
    return Running(worker, stop, thread, health, client)


def cmd_serve(args: argparse.Namespace) -> int:
    cli = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command",
                                                                             "log_level", "config")}
    settings = Settings.load(cli, os.environ, getattr(args, "config", None))
    log.info("starting worker with %s", settings.redacted())
    stop = threading.Event()
    worker, health, client = build_worker(settings, stop)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: worker.request_reload())
    try:
        worker.run(stop)  # returns after the last batch is flushed and committed
    finally:
        if health is not None:
            health.stop()
        client.close()
    log.info("worker stopped")
    return 0
