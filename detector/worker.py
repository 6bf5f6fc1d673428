"""The streaming worker: readings in, per-entity windows in the state store, batched scores, alerts out.

One batch: poll -> parse (rejects become dead letters) -> group by entity (arrival
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

One loop (``step``), with a pipeline depth of 1 (``pipeline``, ``run``'s default) or 0. At depth 1
batch N scores on a background thread while N+1 is polled and prepared from copies of N's states;
then N is published, flushed, saved and committed with its own offsets (``offsets_after``), never
the position after N+1. At depth 0 each batch is scored on the loop's own thread and finished
before the next poll. The order per batch and the reasoning above hold at both depths; a stage
failure redoes every batch in flight from the store (see ``detector/batch.py``). Each batch carries
its phase (``detector/phase.py``), and a move its phase does not allow fails the batch like any
other fault. The background thread mostly waits: the model it calls should score elsewhere
(``detector.process.ProcessDetector``, as ``serve`` wires it), because a model scored on the
thread itself needs the GIL the main thread holds while it parses.

Faults: when any step of a batch raises (load, window, score, judge, send, flush, save, or
anything else: ``internal``), the worker turns not-ready, logs (type and message only, never
connection settings), sleeps with exponential backoff and retries the WHOLE batch from the state
load; the polled messages stay in memory and nothing is committed until the batch succeeds. An
outage (``detector.protocol.is_outage``) is retried while it lasts; any other failure
``max_retries`` times per stage, then the batch is finished entity by entity and the entities that
still fail are set aside as dead letters (``detector/isolate.py``). Liveness (``alive``) fails once
one batch has taken longer than ``live_timeout_s``, however many retries that was. If a stop is
requested meanwhile it exits without committing. A commit failure (a rebalance took the
partitions away) is counted and logged, not fatal: the next owner replays.

Rebalances (``on_revoked`` / ``on_assigned``, the consumer's callbacks, and
``detector/commit.py``): the batch in flight is finished or dropped before partitions go, lost
partitions are never committed, offsets never move backwards, and the partitions of a save
another worker refused are read again from the batch's start instead of being committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import wait
from typing import Callable

from detector.batch import (
    Outcome, Prepared, Routing, Scored, StageFailed, finish, follow_versions, offsets_after,
    prepare,
)
from detector.commit import Commits, reread
from detector.config import CARRY, DEAD_LETTER, WorkerConfig, describe
from detector.decoder import ReadingDecoder
from detector.health import LoopHealth
from detector.isolate import isolate
from detector.message import ParsedReading, Rejection, reject_future
from detector.metric import KnownEntities, Metrics, NullMetrics
from detector.phase import Batch, Phase
from detector.protocol import Message, Sink, Source, StateStore, is_outage
from detector.reload import ModelLoader, check_model, swap_model
from detector.scorer import ScoreTimeout, ThreadScorer
from detector.stream import EntityState

__all__ = ["CARRY", "DEAD_LETTER", "ModelLoader", "ScoreTimeout", "Worker", "WorkerConfig",
           "describe"]

log = logging.getLogger(__name__)


def _as_stage(exc: Exception) -> StageFailed:
    """Any exception of a batch step as a ``StageFailed``; one outside the stage guards (a bug,
    say) is ``internal``, and the batch is redone from the store like any other failure."""
    return exc if isinstance(exc, StageFailed) else StageFailed("internal", exc)


class Worker:
    """Consumes readings from ``source`` and publishes alerts to ``sink``, batch after batch."""

    def __init__(
        self, source: Source, sink: Sink, store: StateStore, model_loader: ModelLoader,
        config: WorkerConfig, metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.source, self.sink, self.store, self.config = source, sink, store, config
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self._loader = model_loader
        self.detector, self.threshold = model_loader()
        check_model(self.detector, None, config.stream.window)
        # a reload keeps the channels (``check_model``), so one decoder serves every model
        self._decoder = ReadingDecoder(self.detector.channels, config.fields, config.fast_decode)
        self._routing = Routing(config.alerts_topic, config.dead_letter_topic, config.scores_topic,
                                config.alert_mode, config.episode_end_windows,
                                config.max_dead_letter_bytes)
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._health = LoopHealth(source, store, self.metrics, clock, config.live_timeout_s,
                                  config.lag_interval_s)
        self._abandoned = False  # a batch was given up on stop: never commit after it
        self._pending: Batch | None = None  # in flight (depth 1)
        self._known = KnownEntities(self.metrics)
        self._commits = Commits(source, self.metrics)
        self._scorer = ThreadScorer(self.depth, config.max_batch, self.metrics,
                                    config.score_timeout_s)

    @property
    def ready(self) -> bool:
        """Model loaded, the last batch (or, when idle, a store ping) succeeded, and the source
        reaches its broker now (read live, so a batch blocked on a lost broker shows it)."""
        return self._health.ready

    @property
    def alive(self) -> bool:
        """The loop runs and has made progress (or retried) recently."""
        return self._health.alive

    def request_reload(self) -> None:
        """Ask for ``model_loader`` to run between batches; safe from signal handlers and threads."""
        self._reload.set()

    def run(self, stop: threading.Event) -> None:
        """Loop over batches until ``stop`` is set; then finish, flush, commit, close the source."""
        self._stop, self._health.running = stop, True
        self._health.set_ready(self._health.ping())
        delay = self.config.backoff_initial_s
        try:
            while not stop.is_set():
                self._health.beat()  # a step returned: not stuck on a batch
                try:
                    self.step()
                    delay = self.config.backoff_initial_s
                except Exception as exc:  # poll and the like: nothing is in flight, wait and go on
                    self._health.set_ready(False)
                    self.metrics.inc("retries_total", stage="poll")
                    log.warning("poll failed (retrying in %.2fs): %s", delay, describe(exc))
                    stop.wait(delay)
                    delay = min(delay * 2, self.config.backoff_max_s)
            self.drain()
            if not self._abandoned:
                try:
                    self.sink.flush()
                    self._commits.commit(None)
                except Exception as exc:  # every batch was flushed already; this is a formality
                    log.warning("final flush failed: %s", describe(exc))
        finally:
            self._health.running = False
            self.close()
            self.source.close()

    @property
    def depth(self) -> int:
        """How many batches may stay in flight while the next one is polled: 1 or 0."""
        return 1 if self.config.pipeline else 0

    def step(self) -> int:
        """One turn of the loop; return the number of messages consumed.

        Polls and prepares batch N+1 (from the states of batch N when N is in flight) and starts
        its scoring; then publishes, flushes, saves and commits N (its own offsets, not N+1's).
        At depth 0, or when the batch is small (under a quarter of ``max_batch``: the worker has
        caught up, and latency matters more than overlap), the new batch is finished at once. While
        a batch is in flight the poll does not wait: with nothing new there, it is finished at once
        too. Any failure redoes the batches in flight, in order, from the store (``_redo``).
        """
        if self._abandoned:
            return 0
        if self._reload.is_set():
            self.drain()
            self._maybe_reload()
        try:
            messages = self._poll(0 if self._pending else self.config.max_wait_ms)
        except Exception:
            self.drain()
            raise
        pending = self._pending  # read after the poll: its revoke callback may have finished it
        if not messages:
            self.drain()
            return 0
        batch = Batch(self._parse(messages), offsets_after(messages))
        try:
            batch.prepare(self._prepare(batch.parsed, pending.prepared.carry() if pending else None))
            scored = self._scorer.result(pending) if pending else None
            batch.start(self._scorer.submit(batch.prepared))
        except Exception as exc:  # any failure: redo what is in flight and this batch, in order
            self._pending = None
            self._redo([b for b in (pending, batch) if b is not None], _as_stage(exc))
            return len(messages)
        self._pending = batch
        if pending is not None:
            try:
                outcome, lost = self._finish(pending, scored)
                follow_versions(pending.prepared, batch.prepared, lost)
            except Exception as exc:  # the new batch stands on the failed one: redo both
                self._pending = None
                self._redo([pending, batch], _as_stage(exc))
                return len(messages)
            self._done(pending, outcome, lost)
        if self.depth == 0 or len(messages) < max(1, self.config.max_batch // 4):
            self.drain()
        return len(messages)

    def drain(self) -> None:
        """Finish the batch still in flight: publish, flush, save, commit."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            outcome, lost = self._finish(pending, self._scorer.result(pending))
        except Exception as exc:
            self._redo([pending], _as_stage(exc))
            return
        self._done(pending, outcome, lost)

    def on_revoked(self, partitions: list[tuple[str, int]]) -> None:
        """The consumer's revoke callback (it runs inside ``poll``, before the partitions go):
        finish the batch in flight and wait for its commit, or drop it if it fails (the next
        owner replays it); from then on nothing is committed for these partitions."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                outcome, lost = self._finish(pending, self._scorer.result(pending))
            except Exception as exc:
                if pending.phase is Phase.SCORING:
                    pending.move(Phase.DROPPED)
                log.warning("partitions revoked; dropped the batch in flight, uncommitted (the "
                            "next owner replays it): %s", describe(exc))
            else:
                self._done(pending, outcome, lost)
        self._commits.settle()  # an asynchronous commit still in flight
        self._commits.revoke(partitions)

    def on_assigned(self, partitions: list[tuple[str, int]]) -> None:
        """The consumer's assign callback: these partitions may be committed again, from
        wherever the group has them (another owner may have moved them on)."""
        self._commits.assign(partitions)

    def close(self) -> None:
        """Stop the scoring thread (idempotent); ``run`` calls it on the way out."""
        self._scorer.close()

    def _poll(self, timeout_ms: int) -> list[Message]:
        messages = self.source.poll(self.config.max_batch, timeout_ms)
        self._health.report_lag()
        if not messages:
            if self._pending is None:  # idle: the store ping keeps readiness honest
                self._health.set_ready(self._health.ping() and self._health.reachable())
                self._health.beat()  # idle is alive
            return messages
        self.metrics.observe("batch_size", len(messages))
        self.metrics.inc("readings_total", len(messages))
        return messages

    def _parse(self, messages: list[Message]) -> list[ParsedReading | Rejection]:
        parsed = self._decoder.decode(messages)
        if self.config.max_future_s:
            reject_future(parsed, int(self.clock() * 1000), int(self.config.max_future_s * 1000))
        return parsed

    def _prepare(self, parsed: list[ParsedReading | Rejection],
                 carried: dict[str, EntityState] | None = None) -> Prepared:
        return prepare(parsed, self.store, self.detector, self.threshold, self.config.stream,
                       self.config.missing_channel == CARRY, carried)

    def _finish(self, batch: Batch, scored: Scored) -> tuple[Outcome, list[str]]:
        """Publish, flush and save a scoring batch (``finished``)."""
        batch.expect(Phase.SCORING)
        outcome, lost = self._finish_prepared(batch.prepared, scored)
        batch.move(Phase.FINISHED)
        return outcome, lost

    def _finish_prepared(self, prepared: Prepared, scored: Scored) -> tuple[Outcome, list[str]]:
        outcome, lost = finish(prepared, scored, self.sink, self.store, self._routing, self.clock,
                               self.metrics)
        self._known.add(state.entity for state in prepared.changed)
        return outcome, lost

    def _attempt(self, parsed: list[ParsedReading | Rejection]) -> tuple[Outcome, list[str]]:
        """One try of a whole batch from the store: prepare, score, finish."""
        prepared = self._prepare(parsed)
        return self._finish_prepared(prepared, self._scorer.now(prepared))

    def _process(self, batch: Batch, failed: StageFailed | None) -> bool:
        """Redo a failed batch from the store until it goes through, with backoff; False if
        abandoned on stop.

        Outages are retried while they last; other failures ``max_retries`` times per stage,
        after which the batch is isolated (``detector/isolate.py``)."""
        batch.move(Phase.REDOING)
        parsed = batch.parsed
        delay = self.config.backoff_initial_s
        tries: Counter[str] = Counter()
        while True:
            if failed is None:
                try:
                    if tries and max(tries.values()) > self.config.max_retries:
                        outcome, lost = isolate(parsed, self._attempt, self.sink, self._routing,
                                                int(self.clock() * 1000))
                    else:
                        outcome, lost = self._attempt(parsed)
                    break
                except Exception as exc:
                    failed = _as_stage(exc)
            self._health.set_ready(False)
            self.metrics.inc("retries_total", stage=failed.stage)
            if not is_outage(failed.cause):
                tries[failed.stage] += 1
            if failed.stage == "dead-letter":  # nothing else can move this batch on
                log.error("cannot send %d messages' dead letters to %r, keeping their offsets "
                          "uncommitted (retrying in %.2fs): %s", len(parsed),
                          self.config.dead_letter_topic, delay, describe(failed.cause))
            else:
                log.warning("batch of %d failed at %s, retrying whole batch in %.2fs: %s",
                            len(parsed), failed.stage, delay, describe(failed.cause))
            failed = None
            if self._stop.wait(delay):
                self._abandoned = True
                batch.move(Phase.ABANDONED)
                log.warning("stop requested; leaving %d messages uncommitted", len(parsed))
                return False
            delay = min(delay * 2, self.config.backoff_max_s)
        batch.move(Phase.FINISHED)
        self._done(batch, outcome, lost)
        return True

    def _redo(self, batches: list[Batch], failed: StageFailed) -> None:
        """After a failure: each batch in flight, in order, from the store (a later one with a
        fresh first try: it only stood on the failed one's states)."""
        for batch in batches:
            if batch.future is not None:
                if wait([batch.future], timeout=self.config.score_timeout_s).not_done:
                    log.warning("a scoring call is still running; redoing its batch anyway")
            if not self._process(batch, failed):
                return
            failed = None

    def _done(self, batch: Batch, outcome: Outcome, lost: list[str]) -> None:
        batch.expect(Phase.FINISHED)
        offsets, parsed = batch.offsets, batch.parsed
        self._health.set_ready(True)
        self._health.beat()  # a batch finished: alive
        for (name, labels), n in outcome.items():
            if n:
                self.metrics.inc(name, n, **dict(labels))
        if lost:
            log.warning("state of %d entities moved on in another worker, not saved; reading "
                        "their partitions again: %s", len(lost), ", ".join(lost[:10]))
            pending, self._pending = self._pending, None  # it stands on the refused states
            offsets, rewind, refused = reread(set(lost), offsets or {}, parsed,
                                              pending.parsed if pending else None,
                                              self._commits.revoked)
            if pending is not None:
                wait([pending.future], timeout=2 * self.config.score_timeout_s)
                pending.move(Phase.DROPPED)
            if rewind:
                self.source.seek(rewind)
            self.metrics.inc("rereads_total", len(refused))
        self._commits.commit(offsets)
        batch.move(Phase.COMMITTED)

    def _maybe_reload(self) -> None:
        if not self._reload.is_set():
            return
        self._reload.clear()
        swapped = swap_model(self._loader, self.detector, self.config.stream.window, self.metrics)
        if swapped is not None:
            self.detector, self.threshold = swapped
