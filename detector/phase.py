"""A batch's life in the worker loop: an explicit state with guarded transitions.

::

    polled -> prepared -> scoring -> finished -> committed
       |          |          |           |
       +----------+----------+-----------+--> redoing -> finished     any failure: redone from
                                                 |                    the store (detector/worker.py)
                                                 +--> abandoned       stop asked during the retries
                             scoring --> dropped                      revoked, or standing on a
                                                                      save another worker refused

``finished`` means published, flushed and saved; ``committed`` that its offsets went to the
source. A move the diagram does not show raises ``IllegalTransition``: the worker treats it like
any other failure of the batch (``internal``) and redoes the work from the store, so a bug in the
loop cannot publish, save or commit a batch twice or out of order.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum

from detector.message import ParsedReading, Rejection


class Phase(str, Enum):
    POLLED = "polled"
    PREPARED = "prepared"
    SCORING = "scoring"
    FINISHED = "finished"
    COMMITTED = "committed"
    REDOING = "redoing"
    ABANDONED = "abandoned"
    DROPPED = "dropped"


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.POLLED: frozenset({Phase.PREPARED, Phase.REDOING}),
    Phase.PREPARED: frozenset({Phase.SCORING, Phase.REDOING}),
    Phase.SCORING: frozenset({Phase.FINISHED, Phase.REDOING, Phase.DROPPED}),
    Phase.FINISHED: frozenset({Phase.COMMITTED, Phase.REDOING}),
    Phase.REDOING: frozenset({Phase.FINISHED, Phase.ABANDONED}),
    Phase.COMMITTED: frozenset(),
    Phase.ABANDONED: frozenset(),
    Phase.DROPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A batch was asked to move where its phase does not lead: a bug in the loop."""


@dataclass(eq=False)
class Batch:
    """One poll's messages on their way through the loop."""

    parsed: list[ParsedReading | Rejection]
    offsets: dict  # detector.batch.Offsets: where to commit once it is through
    phase: Phase = Phase.POLLED
    prepared: object | None = None  # detector.batch.Prepared, once prepared
    future: Future | None = None  # its scores, once scoring

    def move(self, to: Phase) -> None:
        if to not in NEXT[self.phase]:
            raise IllegalTransition(f"a {self.phase.value} batch cannot become {to.value}")
        self.phase = to

    def expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise IllegalTransition(f"batch is {self.phase.value}, not {phase.value}")

    def prepare(self, prepared: object) -> None:
        self.move(Phase.PREPARED)
        self.prepared = prepared

    def start(self, future: Future) -> None:
        self.move(Phase.SCORING)
        self.future = future
