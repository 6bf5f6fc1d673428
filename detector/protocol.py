"""Small types and protocols shared by the worker loop and the connectors that implement them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from detector.stream import EntityState


class Unavailable(Exception):
    """A server could not be reached or did not answer in time: nothing is wrong with the batch.

    Connectors raise subclasses of it for outages; the worker retries such a failure for as long
    as it lasts and never sets records aside because of it. Any other exception a stage raises is
    retried a bounded number of times, then the records or entities it fails on are set aside.
    """


def is_outage(exc: BaseException) -> bool:
    """An outage (retried while it lasts) rather than a problem with particular records."""
    return isinstance(exc, (Unavailable, ConnectionError, TimeoutError))


@dataclass(slots=True)  # not frozen: building a frozen one costs 0.35 us more per record
class Message:
    """One consumed record, as a Source hands it to the worker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class Source(Protocol):
    """Where readings come from (Kafka in production)."""

    def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        """Return up to ``max_records`` messages, waiting at most ``timeout_ms`` for the first;
        each partition's messages in offset order, as Kafka delivers them."""

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        """Commit ``offsets`` ((topic, partition) -> next offset to read) or, without them, the
        position after every message returned by ``poll`` so far."""

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Read each (topic, partition) again from the given offset on the next ``poll``."""

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions, if known."""

    # Optional: ``reachable() -> bool``, False while the source cannot reach its broker; the
    # worker's readiness asks it from the health server's thread, so it must be a cheap read.

    def close(self) -> None:
        """Leave the group and release resources."""


class Sink(Protocol):
    """Where alerts, scores and dead letters go (Kafka topics in production)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record; delivery is only guaranteed after ``flush``."""

    def flush(self) -> None:
        """Block until every queued record is acknowledged; raise if any failed."""

    def close(self) -> None:
        """Flush and release resources."""


class StateStore(Protocol):
    """Per-entity stream state (sliding window + episode), durable across worker restarts.

    ``save`` is compare-and-set on ``EntityState.version``: a state is written only if the stored
    version still equals the version it was loaded with (0 when it did not exist); the stored
    version becomes ``version + 1``. This keeps two workers that briefly share an entity during a
    rebalance from overwriting each other's windows.
    """

    def load(self, entities: Sequence[str]) -> dict[str, EntityState]:
        """Return the state of every entity; a fresh ``EntityState`` for unknown ones."""

    def save(self, states: Sequence[EntityState]) -> list[bool]:
        """Write states (compare-and-set); one flag per state, False where the version moved on."""

    def ping(self) -> bool:
        """True when the store is reachable."""
