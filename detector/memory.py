"""In-memory implementations of the protocols, for unit tests and single-process runs."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

from detector.protocol import Message
from detector.stream import EntityState


class InMemoryStateStore:
    """A ``StateStore`` in a dict; same compare-and-set contract as ``RedisStateStore``."""

    def __init__(self, n_channels: int) -> None:
        self.n_channels = n_channels
        self._states: dict[str, EntityState] = {}

    def load(self, entities: Sequence[str]) -> dict[str, EntityState]:
        out = {}
        for entity in dict.fromkeys(entities):
            stored = self._states.get(entity)
            out[entity] = copy.deepcopy(stored) if stored else EntityState(entity, self.n_channels)
        return out

    def save(self, states: Sequence[EntityState]) -> list[bool]:
        done = []
        for state in states:
            stored = self._states.get(state.entity)
            if (stored.version if stored else 0) != state.version:
                done.append(False)
                continue
            saved = copy.deepcopy(state)
            saved.version += 1
            self._states[state.entity] = saved
            state.version += 1
            done.append(True)
        return done

    def ping(self) -> bool:
        return True


class InMemorySink:
    """A ``Sink`` that keeps flushed records per topic; ``fail_next_flush`` simulates an outage."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes | None, bytes]] = []
        self.records: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.fail_next_flush = False

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.pending.append((topic, key, value))

    def flush(self) -> None:
        if self.fail_next_flush:
            self.fail_next_flush = False
            raise ConnectionError("simulated broker outage")
        for topic, key, value in self.pending:
            self.records.setdefault(topic, []).append((key, value))
        self.pending.clear()

    def close(self) -> None:
        self.flush()


class InMemorySource:
    """A ``Source`` over a list of messages; ``commit`` records the committed position."""

    def __init__(self, messages: Sequence[Message] = ()) -> None:
        self.messages = list(messages)
        self.position = 0
        self.committed = 0

    def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        batch = self.messages[self.position : self.position + max_records]
        self.position += len(batch)
        return batch

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        if offsets is None:
            self.committed = self.position
            return
        for i, m in enumerate(self.messages[: self.position]):  # the furthest message covered
            if m.offset < offsets.get((m.topic, m.partition), -1):
                self.committed = max(self.committed, i + 1)

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Back to the first message at or after each offset; one list holds every partition,
        so later messages of other partitions come again too (as duplicates)."""
        for i, m in enumerate(self.messages[: self.position]):
            if m.offset >= offsets.get((m.topic, m.partition), m.offset + 1):
                self.position = i
                return

    def lag(self) -> int | None:
        return len(self.messages) - self.position

    def close(self) -> None:
        pass
