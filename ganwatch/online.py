"""``OnlineScorer``: the worker's stream rules and alerts, one reading at a time, without Kafka.

Each ``update`` is one batch of one reading through the worker's own stages
(``detector.batch``: ``prepare`` -> ``score_batch`` -> ``finish``) on an in-memory state store and
sink, after the input contract's own parser (``detector.message.parse_reading``). So duplicates,
gaps, stride, the missing-channel policy, episodes and alert ids are exactly ``ganwatch serve``'s,
and the returned dicts are the alert contract's. Embed it in quix-streams, Bytewax, Faust or a
plain loop; one instance is not thread-safe.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from connectors.file import DataError
from detector.alert import DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS
from detector.batch import Routing, finish, prepare, score_batch
from detector.config import CARRY, DEAD_LETTER
from detector.memory import InMemorySink, InMemoryStateStore
from detector.message import EPOCH, ParsedReading, parse_reading
from detector.metric import NullMetrics
from detector.protocol import Message
from detector.stream import EntityState, StreamConfig
from ganwatch.api import Model
from ganwatch.option import check_score_options

__all__ = ["OnlineScorer"]

ALERTS = "alerts"  # the in-memory sink's topics; nothing leaves the process
DEAD_LETTERS = "dead-letter"


def ts_value(ts: Any) -> int | float | str:
    """``ts`` as the input contract takes it: epoch ms or ISO-8601 text; a datetime (naive means
    UTC, as in the contract) becomes epoch ms."""
    if isinstance(ts, datetime):
        aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        return (aware - EPOCH) // timedelta(milliseconds=1)
    if isinstance(ts, np.datetime64):
        return int(ts.astype("datetime64[ms]").astype(np.int64))
    if isinstance(ts, np.generic):
        return ts.item()
    return ts


class OnlineScorer:
    """Score a stream of readings, per entity, as ``ganwatch serve`` would; ``update`` returns
    the alerts (alert-contract dicts) each reading causes."""

    def __init__(
        self, model: Model, *, stride: int = 1, max_gap_s: float | None = None,
        alert_mode: str = DEFAULT_ALERT_MODE, episode_end_windows: int = DEFAULT_END_WINDOWS,
        missing_channel: str = CARRY, clock: Callable[[], float] = time.time,
    ) -> None:
        check_score_options(stride, max_gap_s, alert_mode, episode_end_windows)
        if missing_channel not in (CARRY, DEAD_LETTER):
            raise DataError(f"--missing-channel must be {CARRY} or {DEAD_LETTER}, got "
                            f"{missing_channel!r}")
        self.model = model
        self.channels = model.channels
        self.stream = StreamConfig(model.window, stride, model.artifact.max_gap_ms(max_gap_s))
        self.carry = missing_channel == CARRY
        self.clock = clock
        self.store = InMemoryStateStore(len(self.channels))
        self._sink = InMemorySink()
        self._routing = Routing(ALERTS, DEAD_LETTERS, None, alert_mode, episode_end_windows)
        self._metrics = NullMetrics()
        self._offset = 0

    def update(self, entity: str, ts: Any, values: Mapping[str, Any] | Sequence[Any]
               ) -> list[dict[str, Any]]:
        """Take one reading of ``entity`` at ``ts`` (epoch ms, ISO-8601 text or a datetime);
        ``values`` map channel -> number (None or absent: the missing-channel policy) or list
        them in the model's channel order. Raises ``DataError`` for a reading serve would
        dead-letter, naming the reason; the entity's state is then unchanged."""
        parsed = parse_reading(self._message(entity, ts, values), self.channels)
        if type(parsed) is not ParsedReading:
            raise DataError(f"reading rejected ({parsed.reason}): {parsed.detail}")
        prepared = prepare([parsed], self.store, self.model.artifact.detector,
                           self.model.artifact.threshold, self.stream, self.carry)
        if prepared.rejects:
            rejected = prepared.rejects[0]
            raise DataError(f"reading rejected ({rejected.reason}): {rejected.detail}")
        scored = score_batch(prepared, max(len(prepared.windows), 1), self._metrics)
        finish(prepared, scored, self._sink, self.store, self._routing, self.clock, self._metrics)
        alerts = [json.loads(value) for _, value in self._sink.records.pop(ALERTS, [])]
        self._sink.records.clear()
        return alerts

    def state(self, entity: str) -> EntityState:
        """A copy of ``entity``'s stored state: its last readings and episode."""
        return self.store.load([entity])[entity]

    def _message(self, entity: str, ts: Any, values: Mapping[str, Any] | Sequence[Any]) -> Message:
        if isinstance(values, Mapping):
            doc = {str(k): _plain(v) for k, v in values.items()}
        else:
            row = list(values)
            if len(row) != len(self.channels):
                raise DataError(f"{len(row)} values for the model's {len(self.channels)} channels "
                                f"{', '.join(self.channels)}")
            doc = {name: _plain(v) for name, v in zip(self.channels, row)}
        record = {"entity": entity, "ts": ts_value(ts), "values": doc}
        try:
            value = json.dumps(record, allow_nan=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise DataError(f"reading of {entity!r} cannot be encoded: {exc}") from None
        self._offset += 1
        return Message("online", 0, self._offset, None, value, int(self.clock() * 1000))


def _plain(v: Any) -> Any:
    """numpy scalars as Python numbers, so the reading encodes as the JSON a producer sends."""
    return v.item() if isinstance(v, np.generic) else v
