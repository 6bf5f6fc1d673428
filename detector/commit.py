"""What the worker may commit: never a partition it lost, never backwards, never past a refused
save (the partitions of a save another worker refused are read again instead)."""

from __future__ import annotations

import logging
from typing import Sequence

from detector.batch import Offsets
from detector.config import describe
from detector.message import ParsedReading, Rejection
from detector.metric import Metrics
from detector.protocol import Source

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class Commits:
    """Commits through ``source``, remembering what this worker committed and what it lost."""

    def __init__(self, source: Source, metrics: Metrics) -> None:
        self.source, self.metrics = source, metrics
        self.revoked: set[Partition] = set()  # lost in a rebalance: never committed
        self.committed: Offsets = {}  # the last offsets committed, per partition

    def commit(self, offsets: Offsets | None) -> None:
        """Commit ``offsets`` (None: everything polled) less the partitions lost and the offsets
        not past the last commit; a failure is counted and logged (the next owner replays)."""
        if offsets is not None:
            offsets = {tp: o for tp, o in offsets.items()
                       if tp not in self.revoked and o > self.committed.get(tp, -1)}
            if not offsets:
                return
        try:
            if offsets is None:
                self.source.commit()
            else:
                self.source.commit(offsets)
                self.committed.update(offsets)
        except Exception as exc:
            self.failed(exc)

    def settle(self) -> None:
        """Wait for an asynchronous commit still in flight, if the source has them."""
        settle = getattr(self.source, "settle", None)
        if settle is not None:
            try:
                settle()
            except Exception as exc:
                self.failed(exc)

    def failed(self, exc: Exception) -> None:
        self.metrics.inc("commit_failures_total")
        log.warning("offset commit failed (the next owner replays the batch): %s", describe(exc))

    def revoke(self, partitions: Sequence[Partition]) -> None:
        self.revoked.update(partitions)
        for tp in partitions:
            self.committed.pop(tp, None)

    def assign(self, partitions: Sequence[Partition]) -> None:
        """Committable again, from wherever the group has them (another owner moved them on)."""
        self.revoked.difference_update(partitions)
        for tp in partitions:
            self.committed.pop(tp, None)


def reread(lost: set[str], offsets: Offsets, parsed: Sequence[ParsedReading | Rejection],
           following: Sequence[ParsedReading | Rejection] | None,
           revoked: set[Partition]) -> tuple[Offsets, Offsets, set[Partition]]:
    """After saves another worker refused (``lost`` entities): (the offsets that may still be
    committed, where to seek back to, the refused partitions).

    The partitions the refused entities' readings came from go back to this batch's start and
    are left out of the commit; a ``following`` batch (in flight on the refused states, to be
    dropped) has its other partitions go back to where it started."""
    refused = {(p.message.topic, p.message.partition) for p in parsed
               if type(p) is ParsedReading and p.entity in lost}
    ours, theirs = _starts(parsed), _starts(following or ())
    rewind = {tp: ours[tp] for tp in refused}
    for tp, o in theirs.items():
        rewind.setdefault(tp, o)
    rewind = {tp: o for tp, o in rewind.items() if tp not in revoked}
    return {tp: o for tp, o in offsets.items() if tp not in refused}, rewind, refused


def _starts(batch: Sequence[ParsedReading | Rejection]) -> Offsets:
    """The first offset of each partition in ``batch``."""
    out: Offsets = {}
    for p in batch:
        tp = (p.message.topic, p.message.partition)
        out[tp] = min(out.get(tp, p.message.offset), p.message.offset)
    return out
