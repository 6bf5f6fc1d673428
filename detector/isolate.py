"""Poison isolation: what the worker does with a batch that keeps failing, but not for an outage.

A batch whose stage failed ``max_retries`` times for a reason other than an outage
(``detector.protocol.is_outage``: an unreachable server is waited for, never blamed on records)
is finished entity by entity: each entity's readings go through load, window, score, judge, send,
flush and save on their own. An entity that fails is set aside: each of its readings becomes a
dead letter with reason ``failed_<stage>`` and the cause in ``detail``, carrying its source topic,
partition and offset like any dead letter. The other entities go on, and the batch commits once
every dead letter (these and the batch's parse rejections) is flushed.

Examples: a foreign value under one entity's Redis key (``failed_load``), Redis refusing writes at
its memory limit (``failed_save``, every entity), a model that raises on one entity's windows
(``failed_score``). An entity that failed at ``save`` may have had its alerts published already;
at-least-once allows that, and the readings are still in the dead-letter topic.

Dead letters that cannot be sent at all fail the stage ``dead-letter``: the worker turns not
ready, keeps the batch's offsets uncommitted and logs why; nothing is dropped.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from detector.batch import Outcome, Routing, StageFailed, send_dead_letters
from detector.message import MAX_DETAIL, ParsedReading, Rejection
from detector.protocol import Sink, is_outage

Attempt = Callable[[list[ParsedReading]], tuple[Outcome, list[str]]]


def isolate(parsed: Sequence[ParsedReading | Rejection], attempt: Attempt, sink: Sink,
            routing: Routing, now_ms: int) -> tuple[Outcome, list[str]]:
    """Finish ``parsed`` entity by entity with ``attempt``; set aside the entities that fail.

    Raises ``StageFailed`` when an entity fails for an outage (the whole batch is retried later;
    the entities finished so far are duplicates by then) or the dead letters cannot be sent.
    """
    out: Outcome = Counter()
    lost: list[str] = []
    dead: list[Rejection] = []
    by_entity: dict[str, list[ParsedReading]] = {}
    for p in parsed:
        if type(p) is ParsedReading:
            by_entity.setdefault(p.entity, []).append(p)
        else:
            dead.append(p)
    for entity, readings in by_entity.items():
        try:
            done, conflicts = attempt(readings)
        except StageFailed as exc:
            if is_outage(exc.cause):
                raise
            why = f"{type(exc.cause).__name__}: {exc.cause}"[:MAX_DETAIL]
            dead.extend(Rejection(f"failed_{exc.stage}", why, r.message) for r in readings)
            out["set_aside_total", (("stage", exc.stage),)] += len(readings)
            out["entities_set_aside_total", ()] += 1
            continue
        out.update(done)
        lost.extend(conflicts)
    try:
        send_dead_letters(dead, sink, routing, now_ms, out)
        sink.flush()
    except Exception as exc:
        raise StageFailed("dead-letter", exc) from exc
    return out, lost
