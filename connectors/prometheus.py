"""Prometheus metrics for the worker and the small HTTP server that exposes them with health probes.

``PrometheusMetrics`` implements ``detector.metric.Metrics`` (names get the ``ganwatch_`` prefix).
``HealthServer`` serves ``/metrics`` (Prometheus text), ``/healthz`` (200 while the worker loop is
alive) and ``/readyz`` (200 only while ``ready_fn`` says the worker can do its job, else 503).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.metric import COUNTERS, GAUGES, HELP, HISTOGRAMS

log = logging.getLogger(__name__)

PREFIX = "ganwatch_"
BUCKETS: dict[str, tuple[float, ...]] = {
    "batch_size": (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
    "scoring_seconds": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    "event_to_alert_seconds": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
}


class PrometheusMetrics:
    """``Metrics`` backed by prometheus_client; a private registry unless one is given.

    A private registry (with the process, platform and GC collectors) keeps several workers in one
    process, as in tests, from colliding on the global default registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._gauges: dict[str, Gauge] = {}
        for name, labels in COUNTERS.items():
            self._counters[name] = self._counter(name, labels)
        for name in HISTOGRAMS:
            self._histograms[name] = self._histogram(name)
        for name in GAUGES:
            self._gauges[name] = self._gauge(name)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        counter = self._counters.get(name)
        if counter is None:
            with self._lock:
                counter = self._counters.get(name) or self._counter(name, tuple(sorted(labels)))
                self._counters[name] = counter
        (counter.labels(**labels) if labels else counter).inc(value)

    def observe(self, name: str, value: float) -> None:
        histogram = self._histograms.get(name)
        if histogram is None:
            with self._lock:
                histogram = self._histograms.get(name) or self._histogram(name)
                self._histograms[name] = histogram
        histogram.observe(value)

    def set(self, name: str, value: float) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            with self._lock:
                gauge = self._gauges.get(name) or self._gauge(name)
                self._gauges[name] = gauge
        gauge.set(value)

    def text(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def _counter(self, name: str, labels: tuple[str, ...]) -> Counter:
        return Counter(PREFIX + name, HELP.get(name, name), labels, registry=self.registry)

    def _histogram(self, name: str) -> Histogram:
        buckets = BUCKETS.get(name, Histogram.DEFAULT_BUCKETS)
        return Histogram(PREFIX + name, HELP.get(name, name), buckets=buckets, registry=self.registry)

    def _gauge(self, name: str) -> Gauge:
        return Gauge(PREFIX + name, HELP.get(name, name), registry=self.registry)


class HealthServer:
    """A threaded HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

    It binds in the constructor, so ``port=0`` gives an ephemeral port readable as ``.port`` at
    once; ``start`` serves from a daemon thread and ``stop`` shuts it down and closes the socket.
    """

    def __init__(
        self, host: str, port: int, metrics: PrometheusMetrics,
        ready_fn: Callable[[], bool], live_fn: Callable[[], bool],
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.text()),
            "/healthz": lambda: _probe(live_fn, "alive", "not alive"),
            "/readyz": lambda: _probe(ready_fn, "ready", "not ready"),
        }
        self._server = ThreadingHTTPServer((host, port), _handler(routes))
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="ganwatch-health", daemon=True,
        )
        self._thread.start()
        log.info("health server on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "HealthServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe(fn: Callable[[], bool], ok: str, bad: str) -> tuple[int, str, bytes]:
    try:
        up = bool(fn())
    except Exception as exc:  # a probe that raises means "not ok", never a 500 loop
        log.debug("probe failed: %s", type(exc).__name__)
        up = False
    return (200, "text/plain; charset=utf-8", ok.encode()) if up else (
        503, "text/plain; charset=utf-8", bad.encode())


def _handler(routes: dict[str, Callable[[], tuple[int, str, bytes]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found"
            else:
                status, ctype, body = route()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
