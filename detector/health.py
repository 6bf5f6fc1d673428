"""The worker's health as its probes read it: readiness, liveness and the lag gauge."""

from __future__ import annotations

import logging
from typing import Callable

from detector.config import describe
from detector.metric import Metrics
from detector.protocol import Source, StateStore

log = logging.getLogger(__name__)


class LoopHealth:
    """Ready: the last batch (or, when idle, a store ping) succeeded and the source reaches its
    broker now. Alive: the loop runs and has made progress (or retried) within
    ``live_timeout_s``."""

    def __init__(self, source: Source, store: StateStore, metrics: Metrics,
                 clock: Callable[[], float], live_timeout_s: float, lag_interval_s: float) -> None:
        self.source, self.store, self.metrics, self.clock = source, store, metrics, clock
        self.live_timeout_s, self.lag_interval_s = live_timeout_s, lag_interval_s
        self.running = False
        self._ready = False
        self._heartbeat = clock()
        self._lag_at = float("-inf")

    @property
    def ready(self) -> bool:
        """Read live from the source, so a batch blocked on a lost broker shows it."""
        return self._ready and self.reachable()

    @property
    def alive(self) -> bool:
        return self.running and self.clock() - self._heartbeat < self.live_timeout_s

    def beat(self) -> None:
        """The loop made progress (a step returned, a batch finished, or it is idle)."""
        self._heartbeat = self.clock()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.set("ready", 1 if ready else 0)

    def ping(self) -> bool:
        """The state store answers."""
        try:
            return bool(self.store.ping())
        except Exception as exc:
            log.warning("state store unreachable: %s", describe(exc))
            return False

    def reachable(self) -> bool:
        """The source's own view of its broker (``reachable()``, optional: a source without one
        counts as reachable); it must be safe to call from any thread."""
        reachable = getattr(self.source, "reachable", None)
        try:
            return reachable is None or bool(reachable())
        except Exception as exc:
            log.debug("source reachability unknown: %s", describe(exc))
            return False

    def report_lag(self) -> None:
        """Set ``consumer_lag`` at most once per ``lag_interval_s``."""
        now = self.clock()
        if now - self._lag_at < self.lag_interval_s:
            return
        self._lag_at = now
        try:
            lag = self.source.lag()
        except Exception as exc:
            log.debug("lag unavailable: %s", describe(exc))
            return
        if lag is not None:
            self.metrics.set("consumer_lag", lag)
