"""One poll batch through the worker's three stages: prepare, score, finish.

- ``prepare``: group by entity (arrival order kept) -> ``store.load`` -> fill missing channels ->
  ``advance`` each entity -> stack the windows (centred by a fleet model's baselines). Stages
  ``load`` and ``window``.
- ``score_batch``: score ALL the batch's windows (stacked by ``prepare``) in one
  ``detector.score`` call, chunked at ``max_batch``. Stage ``score``. It touches nothing but the
  stacked windows, so the worker may run it on a background thread while it polls and prepares
  the next batch.
- ``finish``: judge against the threshold -> alerts / score records / dead letters ->
  ``sink.send`` -> ``sink.flush`` -> ``store.save`` (compare-and-set). Stages ``send``,
  ``flush`` and ``save``.

A failing stage raises ``StageFailed`` naming it; the worker retries the whole batch from the load.
``prepare`` can take its states from the previous, still unfinished batch (``carried``): it copies
them, so the previous batch still saves exactly the windows it scored, while the copies share the
episode dict, which only ``finish`` changes and always in batch order.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from detector.alert import (
    AlertContext, encode, make_alerts, score_record, score_stacked, stack, stack_ts, verdicts,
)
from detector.baseline import centre_windows
from detector.message import (
    MAX_DEAD_LETTER_BYTES, ParsedReading, Rejection, dead_letter_record, fill_missing,
)
from detector.metric import Metrics
from detector.protocol import Message, Sink, StateStore
from detector.score import Detector, Threshold, needs_time
from detector.stream import EntityState, StreamConfig, WindowRef, advance

# What one successful attempt did, as (metric, labels) -> amount; reported once the batch succeeds
# so retries don't inflate the counters.
Outcome = Counter[tuple[str, tuple[tuple[str, str], ...]]]
Offsets = dict[tuple[str, int], int]


class StageFailed(Exception):
    """A batch stage raised; ``stage`` names it for the retry metric and the log."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(stage)
        self.stage, self.cause = stage, cause


@dataclass(frozen=True)
class Routing:
    """Where ``finish`` sends things and how it makes alerts."""

    alerts_topic: str
    dead_letter_topic: str
    scores_topic: str | None
    alert_mode: str
    episode_end_windows: int
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES


@dataclass
class Prepared:
    """A batch whose windows are advanced and ready to score; nothing is written anywhere yet."""

    detector: Detector
    threshold: Threshold
    states: dict[str, EntityState]
    changed: list[EntityState]  # states with accepted readings: the ones to save
    windows: list[WindowRef]
    stacked: np.ndarray  # the windows' values, (n, window, channels): what the scorer gets
    rejects: list[Rejection]
    outcome: Outcome
    carried: set[str] = field(default_factory=set)  # taken over from the previous batch
    stacked_ts: np.ndarray | None = None  # (n, window) reading times, if the detector needs_time
    stale: set[str] = field(default_factory=set)  # another worker saved them: load, don't carry

    def carry(self) -> dict[str, EntityState]:
        """The states the next batch may take over instead of loading them."""
        return {e: s for e, s in self.states.items() if e not in self.stale}


def offsets_after(messages: Sequence[Message]) -> Offsets:
    """The offset to commit per (topic, partition): one past the last message of the batch."""
    # a poll returns each partition's records in offset order (``Source.poll``): the last wins
    return {(m.topic, m.partition): m.offset + 1 for m in messages}


def prepare(
    parsed: Sequence[ParsedReading | Rejection], store: StateStore, detector: Detector,
    threshold: Threshold, stream: StreamConfig, carry_missing: bool,
    carried: Mapping[str, EntityState] | None = None,
) -> Prepared:
    """Load (or take over from ``carried``) each entity's state and advance its windows."""
    outcome: Outcome = Counter()
    rejects: list[Rejection] = []
    by_entity: dict[str, list[ParsedReading]] = {}
    for p in parsed:
        if type(p) is ParsedReading:
            group = by_entity.get(p.entity)
            if group is None:
                by_entity[p.entity] = [p]
            else:
                group.append(p)
        else:
            rejects.append(p)
    stage = "load"
    try:
        carried = carried or {}
        to_load = [e for e in by_entity if e not in carried]
        states = store.load(to_load) if to_load else {}
        for entity in by_entity:
            if entity in carried:  # the previous batch still saves its own object
                states[entity] = dataclasses.replace(carried[entity])
        stage = "window"
        windows: list[WindowRef] = []
        changed: list[EntityState] = []
        for entity, readings in by_entity.items():
            state = states[entity]
            kept, dropped = fill_missing(readings, state, carry_missing, detector.channels)
            rejects.extend(dropped)
            if not kept:
                continue
            ts = np.array([r.ts_ms for r in kept], dtype=np.int64)
            rows = np.array([r.values for r in kept], dtype=np.float64)  # tuples or arrays
            refs, stats = advance(state, ts, rows, stream)
            outcome["duplicates_total", ()] += stats.duplicates
            outcome["gaps_total", ()] += stats.gaps
            windows.extend(refs)
            if stats.accepted:
                changed.append(state)
        stacked = stack(windows) if windows else np.empty((0, 0, 0))  # here: overlapped when pipelined
        # a fleet model judges each entity against its own operating point (detector.baseline)
        stacked = centre_windows(detector, stacked, [w.entity for w in windows])
        stacked_ts = stack_ts(windows) if windows and needs_time(detector) else None
    except Exception as exc:
        raise StageFailed(stage, exc) from exc
    return Prepared(detector, threshold, states, changed, windows, stacked, rejects, outcome,
                    carried={e for e in by_entity if e in carried}, stacked_ts=stacked_ts)


Scored = tuple[np.ndarray, np.ndarray]  # scores (n,), contributions (n, channels)


def score_batch(prepared: Prepared, max_batch: int, metrics: Metrics) -> Scored:
    """Score every window of the batch; safe to run on another thread. Only the scoring happens
    here: the pipelined worker's next batch waits for it to return."""
    try:
        return score_stacked(prepared.detector, prepared.stacked, max_batch, metrics,
                             prepared.stacked_ts)
    except Exception as exc:
        raise StageFailed("score", exc) from exc


def finish(
    prepared: Prepared, scored: Scored, sink: Sink, store: StateStore,
    routing: Routing, now: Callable[[], float], metrics: Metrics,
) -> tuple[Outcome, list[str]]:
    """Judge, publish, flush, then save (compare-and-set); return what the batch did and the
    entities whose state had moved on in another worker (not saved)."""
    out = Counter(prepared.outcome)
    detector = prepared.detector
    stage = "judge"
    try:
        judged = verdicts(prepared.windows, prepared.threshold, *scored)
        out["windows_scored_total", ()] = len(judged)
        ctx = AlertContext(detector.channels, prepared.threshold.value, detector.version,
                           int(now() * 1000))
        stage = "send"
        send_dead_letters(prepared.rejects, sink, routing, ctx.now_ms, out)
        alert_ts: list[int] = []
        for v in judged:
            key = v.entity.encode("utf-8")
            for alert in make_alerts(v, prepared.states[v.entity].episode, routing.alert_mode,
                                     routing.episode_end_windows, ctx):
                sink.send(routing.alerts_topic, key, encode(alert))
                out["alerts_total", (("type", alert["type"]),)] += 1
                alert_ts.append(v.ts_ms)
            if routing.scores_topic:
                sink.send(routing.scores_topic, key, encode(score_record(v, ctx)))
        stage = "flush"
        sink.flush()
        flushed = now()
        for ts_ms in alert_ts:
            metrics.observe("event_to_alert_seconds", flushed - ts_ms / 1000)
        stage = "save"
        saved = store.save(prepared.changed) if prepared.changed else []
    except Exception as exc:
        raise StageFailed(stage, exc) from exc
    lost = [s.entity for s, ok in zip(prepared.changed, saved) if not ok]
    if lost:
        out["store_conflicts_total", ()] = len(lost)
    new = sum(1 for s, ok in zip(prepared.changed, saved) if ok and s.version == 1)  # first save
    if new:
        out["entities_new_total", ()] = new
    return out, lost


def send_dead_letters(rejects: Sequence[Rejection], sink: Sink, routing: Routing, now_ms: int,
                      out: Outcome) -> None:
    """Queue one dead letter per rejection (cut to ``routing.max_dead_letter_bytes``), counted."""
    for rejection in rejects:
        key, value, cut = dead_letter_record(rejection, now_ms, routing.max_dead_letter_bytes)
        sink.send(routing.dead_letter_topic, key, value)
        out["dead_letters_total", (("reason", rejection.reason),)] += 1
        if cut:
            out["dead_letters_truncated_total", ()] += 1


def follow_versions(finished: Prepared, following: Prepared, lost: Sequence[str]) -> None:
    """After ``finished`` saved, its successor's copies of the same entities take the new versions;
    the ``lost`` ones (another worker had saved them) are not carried any further."""
    for entity in following.carried:
        following.states[entity].version = finished.states[entity].version
    following.stale.update(e for e in lost if e in following.carried)
