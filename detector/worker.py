"""The streaming worker: readings in, per-entity windows in the state store, batched scores, alerts out.

One batch (``run_once``): poll -> parse (rejects become dead letters) -> group by entity (arrival
order kept) -> ``store.load`` -> fill missing channels -> ``advance`` each entity -> score ALL the
batch's windows in one ``detector.score`` call -> alerts / score records -> ``sink.send`` ->
``sink.flush`` -> ``store.save`` (compare-and-set) -> ``source.commit``.

Why this order: the store is written only AFTER the producer flush and BEFORE the offset commit.

- A crash before the save leaves the store and the committed offsets where they were, so the
  replayed batch recomputes exactly the same windows and re-publishes the same alerts (same
  ``alert_id``); nothing is lost, the copies are bounded by one batch.
- A crash after the save but before the commit replays readings that are now duplicates (their
  timestamps are not after the stored ``last_ts_ms``), so they are skipped; their alerts were
  already flushed before the save. Again nothing is lost.
- Saving before the flush would be wrong: a crash between the two would skip the replayed readings
  as duplicates and their alerts would never be published.

Faults: when loading, scoring, sending, flushing or saving raises, the worker turns not-ready, logs
(type and message only, never connection settings), sleeps with exponential backoff and retries the
WHOLE batch from the state load; the polled messages stay in memory and nothing is committed until
the batch succeeds. If a stop is requested meanwhile it exits without committing. A commit failure
(a rebalance took the partitions away) is counted and logged, not fatal: the next owner replays.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from detector.alert import ALERT_MODES, EPISODE, AlertContext, encode, judge, make_alerts, score_record
from detector.message import (
    FieldNames, ParsedReading, Rejection, dead_letter, fill_missing, parse_reading,
)
from detector.metric import Metrics, NullMetrics
from detector.protocol import Sink, Source, StateStore
from detector.score import Detector, Threshold
from detector.stream import EntityState, StreamConfig, WindowRef, advance

log = logging.getLogger(__name__)

CARRY, DEAD_LETTER = "carry", "dead-letter"
ModelLoader = Callable[[], tuple[Detector, Threshold]]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the loop needs besides its collaborators."""

    stream: StreamConfig
    alert_mode: str = EPISODE
    episode_end_windows: int = 3
    missing_channel: str = CARRY
    fields: FieldNames = field(default_factory=FieldNames)
    alerts_topic: str = "ganwatch.alerts"
    dead_letter_topic: str = "ganwatch.dead-letter"
    scores_topic: str | None = None
    max_batch: int = 500
    max_wait_ms: int = 500
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    lag_interval_s: float = 5.0
    live_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.alert_mode not in ALERT_MODES:
            raise ValueError(f"alert_mode must be one of {ALERT_MODES}, got {self.alert_mode!r}")
        if self.missing_channel not in (CARRY, DEAD_LETTER):
            raise ValueError(f"missing_channel must be {CARRY!r} or {DEAD_LETTER!r}")
        if self.episode_end_windows < 1 or self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("episode_end_windows and max_batch must be >= 1, max_wait_ms >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")


class _StageFailed(Exception):
    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(stage)
        self.stage, self.cause = stage, cause


# What one successful attempt did, as (metric, labels) -> amount; reported once the batch succeeds
# so retries don't inflate the counters.
_Outcome = Counter[tuple[str, tuple[tuple[str, str], ...]]]


def describe(exc: BaseException) -> str:
    """Type and (truncated) message; tracebacks and connection settings stay out of the logs."""
    return f"{type(exc).__name__}: {exc}"[:300]


class Worker:
    """Consumes readings from ``source`` and publishes alerts to ``sink``, one batch at a time."""

    def __init__(
        self, source: Source, sink: Sink, store: StateStore, model_loader: ModelLoader,
        config: WorkerConfig, metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.source, self.sink, self.store, self.config = source, sink, store, config
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self._loader = model_loader
        self.detector, self.threshold = model_loader()
        self._check_model(self.detector, None)
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._ready = False
        self._running = False
        self._abandoned = False  # a batch was given up on stop: never commit after it
        self._heartbeat = clock()
        self._lag_at = float("-inf")

    @property
    def ready(self) -> bool:
        """Model loaded and the last batch (or, when idle, a store ping) succeeded."""
        return self._ready

    @property
    def alive(self) -> bool:
        """The loop runs and has made progress (or retried) recently."""
        return self._running and self.clock() - self._heartbeat < self.config.live_timeout_s

    def request_reload(self) -> None:
        """Ask for ``model_loader`` to run between batches; safe from signal handlers and threads."""
        self._reload.set()

    def run(self, stop: threading.Event) -> None:
        """Loop over batches until ``stop`` is set, then flush, commit and close the source."""
        self._stop, self._running = stop, True
        self._set_ready(self._ping())
        delay = self.config.backoff_initial_s
        try:
            while not stop.is_set():
                self._heartbeat = self.clock()
                try:
                    self.run_once()
                    delay = self.config.backoff_initial_s
                except Exception as exc:  # poll and the like: nothing is in flight, wait and go on
                    self._set_ready(False)
                    self.metrics.inc("retries_total", stage="poll")
                    log.warning("poll failed (retrying in %.2fs): %s", delay, describe(exc))
                    stop.wait(delay)
                    delay = min(delay * 2, self.config.backoff_max_s)
            if not self._abandoned:
                try:
                    self.sink.flush()
                    self._commit()
                except Exception as exc:  # every batch was flushed already; this is a formality
                    log.warning("final flush failed: %s", describe(exc))
        finally:
            self._running = False
            self.source.close()

    def run_once(self) -> int:
        """Process one poll batch end to end; return the number of messages consumed."""
        if self._abandoned:
            return 0
        self._maybe_reload()
        messages = self.source.poll(self.config.max_batch, self.config.max_wait_ms)
        self.metrics.observe("batch_size", len(messages))
        self._report_lag()
        if not messages:  # idle: the store ping keeps readiness honest between batches
            self._set_ready(self._ping())
            return 0
        self.metrics.inc("readings_total", len(messages))
        parsed = [parse_reading(m, self.detector.channels, self.config.fields) for m in messages]
        delay = self.config.backoff_initial_s
        while True:
            try:
                outcome = self._attempt(parsed)
                break
            except _StageFailed as exc:
                self._set_ready(False)
                self.metrics.inc("retries_total", stage=exc.stage)
                log.warning(
                    "batch of %d failed at %s, retrying whole batch in %.2fs: %s",
                    len(messages), exc.stage, delay, describe(exc.cause),
                )
                self._heartbeat = self.clock()
                if self._stop.wait(delay):
                    self._abandoned = True
                    log.warning("stop requested; leaving %d messages uncommitted", len(messages))
                    return len(messages)
                delay = min(delay * 2, self.config.backoff_max_s)
        self._set_ready(True)
        self._report(outcome)
        self._commit()
        return len(messages)

    def _attempt(self, parsed: list[ParsedReading | Rejection]) -> _Outcome:
        out: _Outcome = Counter()
        rejects = [p for p in parsed if isinstance(p, Rejection)]
        by_entity: dict[str, list[ParsedReading]] = {}
        for p in parsed:
            if isinstance(p, ParsedReading):
                by_entity.setdefault(p.entity, []).append(p)
        stage = "load"
        try:
            states = self.store.load(list(by_entity)) if by_entity else {}
            stage = "window"
            windows: list[WindowRef] = []
            changed: list[EntityState] = []
            for entity, readings in by_entity.items():
                state = states[entity]
                kept, dropped = fill_missing(
                    readings, state, self.config.missing_channel == CARRY, self.detector.channels
                )
                rejects.extend(dropped)
                if not kept:
                    continue
                ts = np.array([r.ts_ms for r in kept], dtype=np.int64)
                refs, stats = advance(state, ts, np.stack([r.values for r in kept]), self.config.stream)
                out["duplicates_total", ()] += stats.duplicates
                out["gaps_total", ()] += stats.gaps
                windows.extend(refs)
                if stats.accepted:
                    changed.append(state)
            stage = "score"
            verdicts = judge(self.detector, self.threshold, windows, self.config.max_batch, self.metrics)
            out["windows_scored_total", ()] = len(verdicts)
            ctx = AlertContext(
                self.detector.channels, self.threshold.value, self.detector.version,
                int(self.clock() * 1000),
            )
            stage = "send"
            for rejection in rejects:
                key, value = dead_letter(rejection, ctx.now_ms)
                self.sink.send(self.config.dead_letter_topic, key, value)
                out["dead_letters_total", (("reason", rejection.reason),)] += 1
            alert_ts: list[int] = []
            for v in verdicts:
                for alert in make_alerts(
                    v, states[v.entity].episode, self.config.alert_mode,
                    self.config.episode_end_windows, ctx,
                ):
                    self.sink.send(self.config.alerts_topic, v.entity.encode("utf-8"), encode(alert))
                    out["alerts_total", (("type", alert["type"]),)] += 1
                    alert_ts.append(v.ts_ms)
                if self.config.scores_topic:
                    self.sink.send(
                        self.config.scores_topic, v.entity.encode("utf-8"), encode(score_record(v, ctx))
                    )
            stage = "flush"
            self.sink.flush()
            now = self.clock()
            for ts_ms in alert_ts:
                self.metrics.observe("event_to_alert_seconds", now - ts_ms / 1000)
            stage = "save"
            saved = self.store.save(changed) if changed else []
        except Exception as exc:
            raise _StageFailed(stage, exc) from exc
        lost = [s.entity for s, ok in zip(changed, saved) if not ok]
        if lost:
            out["store_conflicts_total", ()] = len(lost)
            log.warning("state of %d entities moved on in another worker, not saved: %s",
                        len(lost), ", ".join(lost[:10]))
        return out

    def _report(self, out: _Outcome) -> None:
        for (name, labels), n in out.items():
            if n:
                self.metrics.inc(name, n, **dict(labels))

    def _commit(self) -> None:
        try:
            self.source.commit()
        except Exception as exc:
            self.metrics.inc("commit_failures_total")
            log.warning("offset commit failed (the next owner replays the batch): %s", describe(exc))

    def _maybe_reload(self) -> None:
        if not self._reload.is_set():
            return
        self._reload.clear()
        try:
            detector, threshold = self._loader()
            self._check_model(detector, self.detector)
        except Exception as exc:
            self.metrics.inc("model_reloads_total", result="error")
            log.error("model reload failed, keeping %s: %s", self.detector.version, describe(exc))
            return
        log.info("model reloaded: %s -> %s", self.detector.version, detector.version)
        self.detector, self.threshold = detector, threshold
        self.metrics.inc("model_reloads_total", result="ok")

    def _check_model(self, detector: Detector, current: Detector | None) -> None:
        if detector.window != self.config.stream.window:
            raise ValueError(f"model window {detector.window} != stream window {self.config.stream.window}")
        if current is not None and list(detector.channels) != list(current.channels):
            raise ValueError("a reloaded model must keep the channels (the stored windows use them)")

    def _report_lag(self) -> None:
        now = self.clock()
        if now - self._lag_at < self.config.lag_interval_s:
            return
        self._lag_at = now
        try:
            lag = self.source.lag()
        except Exception as exc:
            log.debug("lag unavailable: %s", describe(exc))
            return
        if lag is not None:
            self.metrics.set("consumer_lag", lag)

    def _ping(self) -> bool:
        try:
            return bool(self.store.ping())
        except Exception as exc:
            log.warning("state store unreachable: %s", describe(exc))
            return False

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.set("ready", 1 if ready else 0)


def watch_file(
    path: str | os.PathLike[str], on_change: Callable[[], None], stop: threading.Event,
    interval_s: float = 2.0,
) -> threading.Thread:
    """Call ``on_change`` (e.g. ``Worker.request_reload``) whenever ``path`` changes; polls its stat.

    Point it at the file written last when an artifact is replaced (``model.json``), so a reload
    never sees half a model; the loader still validates whatever it reads.
    """

    def signature() -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def loop() -> None:
        seen = signature()
        while not stop.wait(interval_s):
            now = signature()
            if now != seen and now is not None:
                log.info("%s changed; requesting a model reload", path)
                on_change()
            seen = now

    thread = threading.Thread(target=loop, name="ganwatch-model-watch", daemon=True)
    thread.start()
    return thread
