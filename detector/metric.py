"""The worker's metrics seam: a tiny ``Metrics`` protocol, an in-memory one for tests, a null one.

The worker only ever calls ``inc``, ``observe`` and ``set`` with the names below; the Prometheus
implementation lives in ``connectors/prometheus.py`` so that the core imports no exporter.

Names (labels in braces):

- ``readings_total``: messages consumed (valid or not)
- ``dead_letters_total{reason}``: messages sent to the dead-letter topic
- ``duplicates_total``, ``gaps_total``: readings skipped as replays / window restarts after a gap
- ``windows_scored_total``: windows passed to the detector
- ``alerts_total{type}``: alerts published (``anomaly``, ``anomaly_start``, ``anomaly_end``)
- ``batch_size``: histogram of messages per poll batch
- ``scoring_seconds``: histogram of one batched ``detector.score`` call
- ``event_to_alert_seconds``: histogram of (flush time - reading timestamp), one per alert
- ``consumer_lag``, ``ready``: gauges
- ``entities_new_total``: entities whose state was stored for the first time (or again after
  it expired); ``entities_known``: gauge of the distinct entities this worker process has stored
- ``store_conflicts_total``: states not saved because another worker moved the entity on
- ``commit_failures_total``: offset commits that failed (rebalances)
- ``rereads_total``: partitions read again from a batch's start because a save was refused
- ``retries_total{stage}``: batch attempts that failed, by the stage that failed (``poll``,
  ``load``, ``window``, ``score``, ``judge``, ``send``, ``flush``, ``save``, ``dead-letter``,
  ``internal``)
- ``set_aside_total{stage}``: readings set aside as dead letters after their entity kept failing
  at ``stage``; ``entities_set_aside_total``: entities set aside (once per batch)
- ``dead_letters_truncated_total``: dead letters cut to fit ``max_dead_letter_bytes``
- ``model_reloads_total{result}``: reload attempts (``ok`` / ``error``)
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, Protocol

log = logging.getLogger(__name__)

MAX_KNOWN = 1_000_000  # entity names kept for ``entities_known``: at most ~300 MB

COUNTERS: dict[str, tuple[str, ...]] = {
    "readings_total": (),
    "dead_letters_total": ("reason",),
    "duplicates_total": (),
    "gaps_total": (),
    "windows_scored_total": (),
    "alerts_total": ("type",),
    "store_conflicts_total": (),
    "commit_failures_total": (),
    "rereads_total": (),
    "retries_total": ("stage",),
    "model_reloads_total": ("result",),
    "entities_new_total": (),
    "set_aside_total": ("stage",),
    "entities_set_aside_total": (),
    "dead_letters_truncated_total": (),
}
HISTOGRAMS: tuple[str, ...] = ("batch_size", "scoring_seconds", "event_to_alert_seconds")
GAUGES: tuple[str, ...] = ("consumer_lag", "ready", "entities_known")

HELP: dict[str, str] = {
    "readings_total": "Messages consumed from the readings topic, valid or not.",
    "dead_letters_total": "Messages sent to the dead-letter topic, by reason.",
    "duplicates_total": "Readings skipped because their timestamp was not after the entity's last.",
    "gaps_total": "Window restarts caused by a gap longer than max_gap_ms.",
    "windows_scored_total": "Windows scored by the detector.",
    "alerts_total": "Alerts published, by type.",
    "store_conflicts_total": "Entity states not saved because another worker moved them on.",
    "commit_failures_total": "Offset commits that failed.",
    "rereads_total": "Partitions read again from a batch's start because a save was refused.",
    "retries_total": "Batch attempts that failed and were retried, by failing stage.",
    "model_reloads_total": "Model reload attempts, by result.",
    "entities_new_total": "Entities whose state was stored for the first time (or after expiring).",
    "set_aside_total": "Readings set aside as dead letters after their entity kept failing, by stage.",
    "entities_set_aside_total": "Entities set aside from a batch after they kept failing.",
    "dead_letters_truncated_total": "Dead letters cut to fit the broker's record size limit.",
    "entities_known": "Distinct entities this worker process has stored state for.",
    "batch_size": "Messages per poll batch.",
    "scoring_seconds": "Seconds per batched detector.score call.",
    "event_to_alert_seconds": "Seconds from a reading's timestamp to its alert being published.",
    "consumer_lag": "Messages behind the end of the assigned partitions.",
    "ready": "1 while the worker is ready (store and broker reachable, model loaded).",
}


class Metrics(Protocol):
    """What the worker reports through; label values are strings."""

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to a counter."""

    def observe(self, name: str, value: float) -> None:
        """Record one observation in a histogram."""

    def set(self, name: str, value: float) -> None:
        """Set a gauge."""


class NullMetrics:
    """Discards everything."""

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float) -> None:
        pass

    def set(self, name: str, value: float) -> None:
        pass


class InMemoryMetrics:
    """Keeps everything in dicts, for tests: ``counters[(name, labels)]``, ``observations[name]``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the health server may read while the worker writes
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[str, list[float]] = {}
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self.observations.setdefault(name, []).append(value)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def count(self, name: str, **labels: str) -> float:
        """A counter's value; with no labels given, the sum over all label values."""
        with self._lock:
            if labels:
                return self.counters.get((name, tuple(sorted(labels.items()))), 0)
            return sum(v for (n, _), v in self.counters.items() if n == name)


class KnownEntities:
    """The ``entities_known`` gauge: the distinct entities this process has stored, as a set of
    at most ``MAX_KNOWN`` names (bounded memory: past the cap the gauge says "at least")."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.names: set[str] = set()

    def add(self, entities: Iterable[str]) -> None:
        before = len(self.names)
        if before < MAX_KNOWN:
            for entity in entities:
                self.names.add(entity)
                if len(self.names) >= MAX_KNOWN:
                    log.warning("%d entities: entities_known stops counting", MAX_KNOWN)
                    break
        if len(self.names) != before:
            self.metrics.set("entities_known", len(self.names))
